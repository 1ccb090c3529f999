// This test reads the Parquet export with Apache Arrow's Go implementation,
// independent of the parquet-go writer that made it: a file only our own
// reader could read would not be worth exporting.

package exporters

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	pq "github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/tokenledger/tokenledger/domain"
)

// TestParquetReadByArrow writes the same rows as Parquet and JSONL, reads
// the Parquet with Arrow and the JSONL with encoding/json, and requires
// every row to agree in all 20 columns. It also checks the Arrow types,
// nullability, compression and dictionary encoding a reader will see.
func TestParquetReadByArrow(t *testing.T) {
	// Seed 8 is a history whose nulls parquet-go v0.32.0's value-type path
	// wrote as empty strings (see parquetRow).
	for _, seed := range []uint64{8, 21} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rows := makeHistory(t, 300, RowGroupRows+5000, seed).rows() // two row groups
			readByArrow(t, rows)
		})
	}
}

func readByArrow(t *testing.T, rows []Row) {
	dir := t.TempDir()
	pqPath, _ := writeFile(t, dir, FormatParquet, rows)
	jsonlPath, _ := writeFile(t, dir, FormatJSONL, rows)

	mem := memory.DefaultAllocator
	rdr, err := file.NewParquetReader(bytes.NewReader(mustRead(t, pqPath)), file.WithReadProps(pq.NewReaderProperties(mem)))
	if err != nil {
		t.Fatalf("arrow cannot open the parquet export: %v", err)
	}
	defer rdr.Close()

	// Compression and encodings, per column chunk.
	md := rdr.MetaData()
	if md.NumRowGroups() != 2 {
		t.Errorf("%d row groups, want 2", md.NumRowGroups())
	}
	dictCols := map[string]bool{"event_type": true, "organization_id": true, "workspace_id": true, "deployment_id": true, "scope": true,
		"role": true, "previous_role": true, "actor_token_id": true, "source_ip": true, "user_agent": true}
	for g := range md.NumRowGroups() {
		rg := md.RowGroup(g)
		for c := range rg.NumColumns() {
			cc, err := rg.ColumnChunk(c)
			if err != nil {
				t.Fatal(err)
			}
			name := cc.PathInSchema().String()
			if cc.Compression() != compress.Codecs.Zstd {
				t.Errorf("row group %d column %s: compression %v, want ZSTD", g, name, cc.Compression())
			}
			if dictCols[name] && (!cc.HasDictionaryPage() || !slices.Contains(cc.Encodings(), pq.Encodings.RLEDict)) {
				t.Errorf("row group %d column %s: not dictionary-encoded (encodings %v)", g, name, cc.Encodings())
			}
		}
	}

	fr, err := pqarrow.NewFileReader(rdr, pqarrow.ArrowReadProperties{BatchSize: 4096}, mem)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		t.Fatalf("arrow cannot read the parquet export: %v", err)
	}
	defer tbl.Release()

	// Schema as Arrow sees it.
	sch := tbl.Schema()
	if sch.NumFields() != len(Columns) {
		t.Fatalf("%d columns, want %d", sch.NumFields(), len(Columns))
	}
	required := map[string]bool{"sequence": true, "event_id": true, "event_type": true, "occurred_at": true, "organization_id": true,
		"token_id": true, "token_name": true, "scope": true, "actor_token_id": true, "hash": true, "details": true}
	for i, f := range sch.Fields() {
		if f.Name != Columns[i] {
			t.Errorf("column %d is %s, want %s", i, f.Name, Columns[i])
		}
		if f.Nullable == required[f.Name] {
			t.Errorf("column %s: nullable %v, want %v", f.Name, f.Nullable, !required[f.Name])
		}
		want := "utf8"
		switch f.Name {
		case "sequence":
			want = "int64"
		case "occurred_at":
			want = "timestamp[us, tz=UTC]"
		}
		if f.Type.String() != want {
			t.Errorf("column %s: arrow type %s, want %s", f.Name, f.Type, want)
		}
	}

	// Every row, every column, against encoding/json's reading of the JSONL.
	lines := strings.Split(strings.TrimSuffix(string(mustRead(t, jsonlPath)), "\n"), "\n")
	if tbl.NumRows() != int64(len(lines)) || len(lines) != len(rows) {
		t.Fatalf("arrow reads %d rows, the jsonl has %d lines, %d rows were written", tbl.NumRows(), len(lines), len(rows))
	}
	tr := array.NewTableReader(tbl, 4096)
	defer tr.Release()
	n := 0
	for tr.Next() {
		rec := tr.RecordBatch()
		for i := range int(rec.NumRows()) {
			var want map[string]any
			dec := json.NewDecoder(strings.NewReader(lines[n]))
			dec.UseNumber()
			if err := dec.Decode(&want); err != nil {
				t.Fatalf("jsonl line %d: %v", n+1, err)
			}
			for c, col := range rec.Columns() {
				name := Columns[c]
				got := arrowValue(t, col, i)
				w := want[name]
				if num, ok := w.(json.Number); ok {
					w = num.String()
				}
				if got != w {
					t.Fatalf("row %d column %s: arrow reads %#v, the jsonl has %#v", n+1, name, got, w)
				}
			}
			n++
		}
	}
	if err := tr.Err(); err != nil {
		t.Fatal(err)
	}
	if n != len(rows) {
		t.Fatalf("compared %d rows of %d", n, len(rows))
	}
}

// arrowValue returns a cell as the JSONL holds it: a string, the sequence's
// decimal text, the time in domain.AuditTimeLayout, or nil for null.
func arrowValue(t *testing.T, col arrow.Array, i int) any {
	if col.IsNull(i) {
		return nil
	}
	switch a := col.(type) {
	case *array.String:
		return a.Value(i)
	case *array.Int64:
		return fmt.Sprint(a.Value(i))
	case *array.Timestamp:
		return time.UnixMicro(int64(a.Value(i))).UTC().Format(domain.AuditTimeLayout)
	}
	t.Fatalf("unexpected arrow array %T", col)
	return nil
}
