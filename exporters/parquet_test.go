package exporters

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/parquet-go/parquet-go"
)

// TestParquetSchemas checks Row's tags (used to read) give the schema
// parquetRow's tags (used to write) give.
func TestParquetSchemas(t *testing.T) {
	if read := parquet.SchemaOf(Row{}); !parquet.EqualNodes(read, rowSchema) {
		t.Fatalf("Row and parquetRow schemas differ:\n%s\n%s", read, rowSchema)
	}
	var names []string
	for _, f := range rowSchema.Fields() {
		names = append(names, f.Name())
	}
	if fmt.Sprint(names) != fmt.Sprint(Columns) {
		t.Fatalf("parquet columns %v, want %v", names, Columns)
	}
}

// TestParquetNulls reads back the definition levels of every optional
// column and checks each is null exactly where the row's string is empty.
// Reading rows cannot show this: a present empty string and a null both
// read back as "". parquet-go v0.32.0's value-type path got it wrong for
// some patterns of nulls; these patterns are dense and short, which is
// where it failed.
func TestParquetNulls(t *testing.T) {
	base := makeHistory(t, 20, 300, 22).rows()
	rng := rand.New(rand.NewPCG(1, 2))
	for n := 1; n <= 300; n += 1 + n/10 {
		for _, p := range []float64{0.1, 0.5, 0.9} {
			rows := make([]Row, n)
			for i := range rows {
				r := base[i%len(base)]
				for _, s := range []*string{&r.WorkspaceID, &r.DeploymentID, &r.SourceIP, &r.UserAgent, &r.RequestID, &r.Fingerprint, &r.PrevHash} {
					if rng.Float64() < p {
						*s = ""
					} else if *s == "" {
						*s = "x"
					}
				}
				if rng.Float64() < p {
					r.Role = ""
				}
				if rng.Float64() < p {
					r.PreviousRole = ""
				} else if r.PreviousRole == "" {
					r.PreviousRole = "WORKSPACE_MEMBER"
				}
				rows[i] = r
			}
			var buf bytes.Buffer
			w, _ := NewWriter(FormatParquet, &buf)
			for _, r := range rows {
				if err := w.Write(r); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if bad := nullMismatches(t, buf.Bytes(), rows); bad != "" {
				t.Fatalf("%d rows, null rate %.1f: %s", n, p, bad)
			}
		}
	}
	// And a realistic history over two row groups.
	rows := makeHistory(t, 300, RowGroupRows+5000, 8).rows()
	path, _ := writeFile(t, t.TempDir(), FormatParquet, rows)
	if bad := nullMismatches(t, mustRead(t, path), rows); bad != "" {
		t.Fatal(bad)
	}
}

// nullMismatches describes the first optional cells whose definition level
// disagrees with the row, or returns "".
func nullMismatches(t *testing.T, b []byte, rows []Row) string {
	t.Helper()
	f, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	first := 0
	for g, rg := range f.RowGroups() {
		for c, cc := range rg.ColumnChunks() {
			field := rowSchema.Fields()[c]
			if !field.Optional() {
				continue
			}
			pages := cc.Pages()
			k := first
			for {
				p, err := pages.ReadPage()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				for _, level := range p.DefinitionLevels() {
					if isNull, empty := level == 0, fieldOf(rows[k], field.Name()) == ""; isNull != empty && len(bad) < 3 {
						bad = append(bad, fmt.Sprintf("row group %d, row %d, column %s: null %v, value %q", g+1, k+1, field.Name(), isNull, fieldOf(rows[k], field.Name())))
					}
					k++
				}
			}
			if err := pages.Close(); err != nil {
				t.Fatal(err)
			}
		}
		first += int(rg.NumRows())
	}
	if len(bad) > 0 {
		return fmt.Sprint(bad)
	}
	return ""
}

// fieldOf returns a string column of r by its name.
func fieldOf(r Row, name string) string {
	switch name {
	case "event_id":
		return r.EventID
	case "event_type":
		return string(r.EventType)
	case "organization_id":
		return r.OrganizationID
	case "workspace_id":
		return r.WorkspaceID
	case "deployment_id":
		return r.DeploymentID
	case "token_id":
		return r.TokenID
	case "token_name":
		return r.TokenName
	case "scope":
		return string(r.Scope)
	case "role":
		return string(r.Role)
	case "previous_role":
		return string(r.PreviousRole)
	case "actor_token_id":
		return r.ActorTokenID
	case "source_ip":
		return r.SourceIP
	case "user_agent":
		return r.UserAgent
	case "request_id":
		return r.RequestID
	case "fingerprint":
		return r.Fingerprint
	case "prev_hash":
		return r.PrevHash
	case "hash":
		return r.Hash
	case "details":
		return r.Details
	}
	panic(name)
}

// TestParquetDamageIsBounded feeds files whose length fields claim huge
// sizes: reading must fail with an error, without allocating what they claim
// (parquet-go alone would allocate gigabytes, or crash).
func TestParquetDamageIsBounded(t *testing.T) {
	rows := makeHistory(t, 3, 10, 26).rows()[:10]
	good := mustRead(t, must(writeFile(t, t.TempDir(), FormatParquet, rows)))
	frame := func(footer []byte) []byte {
		b := append([]byte("PAR1"), footer...)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(footer)))
		return append(b, "PAR1"...)
	}
	hugeLength := bytes.Clone(good)
	binary.LittleEndian.PutUint32(hugeLength[len(hugeLength)-8:], 0xfffffff0)
	cases := map[string][]byte{
		"footer length of 4 GB": hugeLength,
		// FileMetaData field 4 (row_groups): a list of 2^30 structs.
		"list of 2^30 row groups": frame([]byte{0x49, 0xfc, 0x80, 0x80, 0x80, 0x80, 0x04, 0x00}),
		// A string claiming 2^31 bytes.
		"huge string": frame([]byte{0x18, 0xff, 0xff, 0xff, 0xff, 0x07, 0x00}),
		"nesting":     frame(bytes.Repeat([]byte{0x1c}, 10000)),
		"no footer":   []byte("PAR1PAR1"),
	}
	for name, b := range cases {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := ReadRows(FormatParquet, bytes.NewReader(b), int64(len(b)), func(Row) error { return nil })
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Errorf("%s: read without error", name)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 16<<20 {
			t.Errorf("%s: allocated %d MB", name, n>>20)
		}
	}
}

// TestWalkThrift checks the walker agrees with parquet-go's encoder on real
// structs: it must take the whole footer of a real file, and refuse any
// shorter prefix of it.
func TestWalkThrift(t *testing.T) {
	rows := makeHistory(t, 30, 300, 27).rows()
	b := mustRead(t, must(writeFile(t, t.TempDir(), FormatParquet, rows)))
	n := int(binary.LittleEndian.Uint32(b[len(b)-8:]))
	footer := b[len(b)-8-n : len(b)-8]
	used, err := walkThrift(footer, 1<<30)
	if err != nil || used != n {
		t.Fatalf("walkThrift on a real footer = %d, %v; want %d", used, err, n)
	}
	for cut := 0; cut < n; cut++ {
		if _, err := walkThrift(footer[:cut], 1<<30); err == nil {
			t.Fatalf("walkThrift accepts the footer cut to %d of %d bytes", cut, n)
		}
	}
}
