package exporters

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/tokenledger/tokenledger/domain"
)

func TestRoundTrip(t *testing.T) {
	rows := makeHistory(t, 30, 500, 1).rows()
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			path, _ := writeFile(t, t.TempDir(), f, rows)
			got := readAll(t, f, mustRead(t, path))
			if len(got) != len(rows) {
				t.Fatalf("read %d rows, wrote %d", len(got), len(rows))
			}
			for i := range rows {
				if !reflect.DeepEqual(got[i], rows[i]) {
					t.Fatalf("row %d reads back as\n%+v\nwrote\n%+v", i+1, got[i], rows[i])
				}
				if h := got[i].Record().ChainHash(); h != got[i].Hash {
					t.Fatalf("row %d: Record().ChainHash() = %s, hash column %s", i+1, h, got[i].Hash)
				}
			}
		})
	}
}

func TestRowOfIsRecordInverse(t *testing.T) {
	for _, e := range makeHistory(t, 12, 200, 3).events {
		r := RowOf(7, e)
		if !reflect.DeepEqual(r.Record(), e.Record()) {
			t.Fatalf("Row.Record() differs from Event.Record():\n%+v\n%+v", r.Record(), e.Record())
		}
		if r.Hash != e.Hash.String() || r.Sequence != 7 {
			t.Fatalf("row %+v: hash or sequence not carried", r)
		}
	}
}

func TestEmptyExport(t *testing.T) {
	for _, f := range Formats {
		path, m := writeFile(t, t.TempDir(), f, nil)
		if got := readAll(t, f, mustRead(t, path)); len(got) != 0 {
			t.Errorf("%s: read %d rows from an empty export", f, len(got))
		}
		if m.Rows != 0 || m.FirstSequence != 0 || m.LastSequence != 0 || len(m.Chains) != 0 {
			t.Errorf("%s: manifest of an empty export: %+v", f, m)
		}
	}
	if b := mustRead(t, must(writeFile(t, t.TempDir(), FormatJSON, nil))); string(b) != "[]\n" {
		t.Errorf("empty json export is %q, want \"[]\\n\"", b)
	}
}

func must[T, U any](v T, _ U) T { return v }

// TestJSONLShape checks the text itself: key order, nulls, the time layout,
// one object per line, and that encoding/json reads every line.
func TestJSONLShape(t *testing.T) {
	rows := makeHistory(t, 20, 200, 2).rows()
	b := mustRead(t, must(writeFile(t, t.TempDir(), FormatJSONL, rows)))
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != len(rows) {
		t.Fatalf("%d lines for %d rows", len(lines), len(rows))
	}
	for i, line := range lines {
		keys, values := objectKeys(t, line)
		if !reflect.DeepEqual(keys, Columns) {
			t.Fatalf("line %d keys %v, want %v", i+1, keys, Columns)
		}
		r := rows[i]
		if want := r.OccurredAt.Format(domain.AuditTimeLayout); values["occurred_at"] != want {
			t.Fatalf("line %d occurred_at %v, want %s", i+1, values["occurred_at"], want)
		}
		for col, v := range map[string]string{"workspace_id": r.WorkspaceID, "role": string(r.Role), "prev_hash": r.PrevHash, "source_ip": r.SourceIP} {
			if (v == "") != (values[col] == nil) {
				t.Fatalf("line %d: %s is %#v for %q: an empty optional column must be null, and only then", i+1, col, values[col], v)
			}
		}
	}
	// The JSON array holds the same objects.
	var arr []map[string]any
	if err := json.Unmarshal(mustRead(t, must(writeFile(t, t.TempDir(), FormatJSON, rows))), &arr); err != nil {
		t.Fatal(err)
	}
	for i, line := range lines {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(obj, arr[i]) {
			t.Fatalf("json element %d differs from jsonl line %d", i, i+1)
		}
	}
}

// objectKeys decodes one JSON object with encoding/json, keeping key order.
func objectKeys(t *testing.T, s string) ([]string, map[string]any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %q", s)
	}
	var keys []string
	values := map[string]any{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatalf("%v in %q", err, s)
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%v in %q", err, s)
		}
		keys = append(keys, k.(string))
		values[k.(string)] = v
	}
	return keys, values
}

func TestParseFormat(t *testing.T) {
	for _, f := range Formats {
		if got, err := ParseFormat(string(f)); err != nil || got != f {
			t.Errorf("ParseFormat(%q) = %q, %v", f, got, err)
		}
	}
	_, err := ParseFormat("csv")
	var ve *domain.ValidationError
	if !errors.As(err, &ve) || ve.Problems[0].Field != "format" || !strings.Contains(err.Error(), "parquet, jsonl, json") {
		t.Errorf("ParseFormat(csv) = %v: want a validation error on field format naming the allowed values", err)
	}
	if _, err := NewWriter("csv", io.Discard); err == nil {
		t.Error("NewWriter accepted format csv")
	}
}

// TestParquetRowGroupsStream checks the writer writes each row group as it
// fills, so memory does not grow with the export, and that the file has
// bounded row groups.
func TestParquetRowGroupsStream(t *testing.T) {
	rows := makeHistory(t, 200, 2*RowGroupRows+100, 4).rows()
	var out countingWriter
	w, err := NewWriter(FormatParquet, &out)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rows {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
		if i == RowGroupRows+parquetBatch && out.n < 100_000 {
			t.Fatalf("after %d rows only %d bytes were written: the first row group is still in memory", i+1, out.n)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b := out.Bytes()
	f, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	groups := f.RowGroups()
	if len(groups) != 3 {
		t.Fatalf("%d row groups for %d rows, want 3", len(groups), len(rows))
	}
	for i, g := range groups {
		if g.NumRows() > RowGroupRows {
			t.Errorf("row group %d has %d rows, more than %d", i, g.NumRows(), RowGroupRows)
		}
	}
	if got := readAll(t, FormatParquet, b); !reflect.DeepEqual(got, rows) {
		t.Fatal("rows across row groups do not read back in order")
	}
	if err := w.Write(rows[0]); err == nil {
		t.Error("Write after Close succeeded")
	}
}

type countingWriter struct {
	bytes.Buffer
	n int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += len(p)
	return c.Buffer.Write(p)
}

// TestWriterErrorSticks checks a failed write is not followed by a file
// that looks finished.
func TestWriterErrorSticks(t *testing.T) {
	rows := makeHistory(t, 10, 3000, 5).rows()
	for _, f := range Formats {
		w, _ := NewWriter(f, failingWriter{})
		var err error
		for _, r := range rows {
			if err = w.Write(r); err != nil {
				break
			}
		}
		if err == nil {
			err = w.Close()
		}
		if err == nil {
			t.Errorf("%s: writing to a failing writer reported no error", f)
			continue
		}
		if cerr := w.Close(); cerr == nil {
			t.Errorf("%s: Close after a failed write succeeded", f)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestReadRowsRejectsMalformed(t *testing.T) {
	rows := makeHistory(t, 5, 20, 6).rows()
	jsonl := mustRead(t, must(writeFile(t, t.TempDir(), FormatJSONL, rows)))
	js := mustRead(t, must(writeFile(t, t.TempDir(), FormatJSON, rows)))
	pq := mustRead(t, must(writeFile(t, t.TempDir(), FormatParquet, rows)))
	firstLine := string(jsonl[:bytes.IndexByte(jsonl, '\n')+1])

	// A Parquet file of another schema.
	var other bytes.Buffer
	type notARow struct {
		Sequence int64  `parquet:"sequence"`
		EventID  string `parquet:"event_id"`
	}
	ow := parquet.NewGenericWriter[notARow](&other)
	if _, err := ow.Write([]notARow{{1, "x"}}); err != nil {
		t.Fatal(err)
	}
	if err := ow.Close(); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		f    Format
		b    []byte
		want string
	}{
		{"jsonl cut off", FormatJSONL, jsonl[:len(jsonl)-10], "does not end with a newline"},
		{"jsonl missing key", FormatJSONL, []byte(strings.Replace(firstLine, `"event_id":`, `"eventid":`, 1)), "line 1"},
		{"jsonl null required", FormatJSONL, []byte(strings.Replace(firstLine, `"token_name":"`, `"token_name":null,"x":"`, 1)), "line 1"},
		{"jsonl required null", FormatJSONL, []byte(regexpReplace(firstLine, `"hash":"[0-9a-f]+"`, `"hash":null`)), "missing or null: hash"},
		{"jsonl bad time", FormatJSONL, []byte(regexpReplace(firstLine, `"occurred_at":"[^"]+"`, `"occurred_at":"yesterday"`)), "occurred_at"},
		{"jsonl two values", FormatJSONL, []byte(strings.TrimSuffix(firstLine, "\n") + " {}\n"), "more than one"},
		{"jsonl garbage", FormatJSONL, []byte("PAR1garbage\n"), "line 1"},
		{"jsonl huge line", FormatJSONL, append(bytes.Repeat([]byte("a"), 2<<20), '\n'), "line 1 is longer than"},
		{"json cut off", FormatJSON, js[:len(js)-3], "not closed"},
		{"json not array", FormatJSON, jsonl, "does not start with a JSON array"},
		{"json trailing", FormatJSON, append(append([]byte{}, js...), "[]"...), "after the array"},
		{"parquet cut off", FormatParquet, pq[:len(pq)-100], "parquet"},
		{"parquet garbage", FormatParquet, []byte("PAR1 this is not parquet PAR1"), "parquet"},
		{"parquet of jsonl", FormatParquet, jsonl, "parquet"},
		{"parquet other schema", FormatParquet, other.Bytes(), "not an audit export"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ReadRows(c.f, bytes.NewReader(c.b), int64(len(c.b)), func(Row) error { return nil })
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("ReadRows = %v, want an error containing %q", err, c.want)
			}
		})
	}
	stop := errors.New("stop")
	if err := ReadRows(FormatParquet, bytes.NewReader(pq), int64(len(pq)), func(Row) error { return stop }); err != stop {
		t.Errorf("ReadRows did not return fn's error as is: %v", err)
	}
}

func regexpReplace(s, pattern, repl string) string {
	out := regexp.MustCompile(pattern).ReplaceAllString(s, repl)
	if out == s {
		panic(fmt.Sprintf("pattern %s does not match", pattern))
	}
	return out
}

func TestAppendTime(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	times := []time.Time{
		{}, time.Unix(0, 0), time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 2, 29, 12, 0, 0, 1000, time.FixedZone("x", 5*3600)),
	}
	for range 2000 {
		times = append(times, time.Unix(rng.Int64N(1<<36)-1<<35, rng.Int64N(1e9)))
	}
	for _, tm := range times {
		want := tm.UTC().Format(domain.AuditTimeLayout)
		if got := string(appendTime(nil, tm)); got != want {
			t.Fatalf("appendTime(%v) = %s, want %s", tm, got, want)
		}
	}
}

// TestLongRow reads back a row longer than the readers' buffers.
func TestLongRow(t *testing.T) {
	r := makeHistory(t, 1, 1, 25).rows()[0]
	r.UserAgent = strings.Repeat("ü\"", 50_000) // 150 kB, 250 kB escaped
	r.Hash = r.Record().ChainHash()
	for _, f := range Formats {
		path, _ := writeFile(t, t.TempDir(), f, []Row{r, r})
		got := readAll(t, f, mustRead(t, path))
		if len(got) != 2 || !reflect.DeepEqual(got[1], r) {
			t.Errorf("%s: long row does not read back", f)
		}
	}
}
