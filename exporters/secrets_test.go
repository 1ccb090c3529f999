package exporters

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/domain"
)

// TestExportsHoldNoSecrets searches every export file, in every format, and
// its manifest for every secret the history issued and for its stored hash,
// as hex in either case, base64, and raw bytes (a Parquet column could hold
// them as binary).
func TestExportsHoldNoSecrets(t *testing.T) {
	h := makeHistory(t, 40, 600, 23)
	if len(h.secrets) < 40 {
		t.Fatalf("fixture issued only %d secrets", len(h.secrets))
	}
	key := newKey(t)
	dir := t.TempDir()
	for _, f := range Formats {
		sub := filepath.Join(dir, string(f))
		if err := os.Mkdir(sub, 0o700); err != nil {
			t.Fatal(err)
		}
		exportSigned(t, sub, f, h.rows(), key)
	}
	var files [][]byte
	var names []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files = append(files, mustRead(t, path))
		names = append(names, path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2*len(Formats) {
		t.Fatalf("found %d files, want %d", len(files), 2*len(Formats))
	}
	lower := make([][]byte, len(files))
	for i, b := range files {
		lower[i] = bytes.ToLower(b)
	}
	for _, s := range h.secrets {
		for i := range files {
			for _, what := range leaks(files[i], lower[i], s) {
				t.Errorf("%s holds a %s", names[i], what)
			}
		}
	}
	// The search itself must work: plant a stored hash, in upper case.
	planted := append(bytes.Clone(files[0]), strings.ToUpper(domain.Hash(h.secrets[0].Reveal()).String())...)
	if len(leaks(planted, bytes.ToLower(planted), h.secrets[0])) == 0 {
		t.Error("the search does not find a planted secret hash")
	}
}

// leaks names each form of secret s found in file b (lower is b in lower
// case, for the case-insensitive hex search).
func leaks(b, lower []byte, s domain.Secret) []string {
	secret := s.Reveal()
	hash := domain.Hash(secret)
	var found []string
	for what, needle := range map[string][]byte{
		"secret":           []byte(secret),
		"hash (base64)":    []byte(base64.StdEncoding.EncodeToString(hash[:])),
		"hash (raw bytes)": hash[:],
	} {
		if bytes.Contains(b, needle) {
			found = append(found, what)
		}
	}
	for what, needle := range map[string]string{
		"hash (hex, any case)":        hash.String(),
		"hash prefix (hex, any case)": hash.String()[:16],
	} {
		if bytes.Contains(lower, []byte(needle)) {
			found = append(found, what)
		}
	}
	return found
}
