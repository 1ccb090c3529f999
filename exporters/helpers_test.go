package exporters

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeFile writes rows as an export file of format f in dir and returns its
// path and the export's (unsigned) manifest.
func writeFile(tb testing.TB, dir string, f Format, rows []Row) (string, Manifest) {
	tb.Helper()
	return writeFileWith(tb, dir, f, rows, Filters{Since: "2025-01-01T00:00:00Z"})
}

// writeFileWith is writeFile with the manifest's filters given: the filters
// the rows were selected by (a history starts on 2025-01-02).
func writeFileWith(tb testing.TB, dir string, f Format, rows []Row, filters Filters) (string, Manifest) {
	tb.Helper()
	var buf bytes.Buffer
	ex, err := NewExport(f, &buf)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range rows {
		if err := ex.Write(r); err != nil {
			tb.Fatalf("write row %d: %v", r.Sequence, err)
		}
	}
	if err := ex.Close(); err != nil {
		tb.Fatal(err)
	}
	var cut uint64 = 3 // the stream went on after the last row
	if len(rows) > 0 {
		cut += uint64(rows[len(rows)-1].Sequence)
	}
	m, err := ex.Manifest(Manifest{
		OrganizationID: "org-main",
		Filters:        filters,
		StreamSequence: cut,
		CreatedAt:      time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC),
	})
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, "export"+f.Ext())
	mustWrite(tb, path, buf.Bytes())
	return path, m
}

// exportSigned writes rows as a signed export in dir: the file and its
// manifest file's bytes.
func exportSigned(tb testing.TB, dir string, f Format, rows []Row, key ed25519.PrivateKey) (string, []byte) {
	tb.Helper()
	return exportSignedWith(tb, dir, f, rows, Filters{Since: "2025-01-01T00:00:00Z"}, key)
}

// exportSignedWith is exportSigned with the manifest's filters given.
func exportSignedWith(tb testing.TB, dir string, f Format, rows []Row, filters Filters, key ed25519.PrivateKey) (string, []byte) {
	tb.Helper()
	path, m := writeFileWith(tb, dir, f, rows, filters)
	m.KeyID = KeyID(key.Public().(ed25519.PublicKey))
	signed, err := SignManifest(m, key)
	if err != nil {
		tb.Fatal(err)
	}
	mustWrite(tb, path+".manifest.json", signed)
	return path, signed
}

func mustWrite(tb testing.TB, path string, b []byte) {
	tb.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		tb.Fatal(err)
	}
}

func mustRead(tb testing.TB, path string) []byte {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func newKey(tb testing.TB) ed25519.PrivateKey {
	tb.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// readAll reads every row of an export file.
func readAll(tb testing.TB, f Format, b []byte) []Row {
	tb.Helper()
	var rows []Row
	if err := ReadRows(f, bytes.NewReader(b), int64(len(b)), func(r Row) error {
		rows = append(rows, r)
		return nil
	}); err != nil {
		tb.Fatalf("read %s: %v", f, err)
	}
	return rows
}

// verifyBytes runs Verify on a file's bytes.
func verifyBytes(file, manifest []byte, trusted ed25519.PublicKey) Report {
	return Verify(bytes.NewReader(file), int64(len(file)), manifest, trusted)
}
