package exporters

import (
	"io"
	"testing"
)

// BenchmarkWriters writes about 100,000 rows of a realistic history in each
// format and reports rows per second.
func BenchmarkWriters(b *testing.B) {
	rows := makeHistory(b, 2000, 100_000, 99).rows()
	for _, f := range Formats {
		b.Run(string(f), func(b *testing.B) {
			var out countingDiscard
			b.ReportAllocs()
			for b.Loop() {
				out = 0
				w, err := NewWriter(f, &out)
				if err != nil {
					b.Fatal(err)
				}
				for _, r := range rows {
					if err := w.Write(r); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(rows))*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(float64(out)/float64(len(rows)), "bytes/row")
		})
	}
}

// BenchmarkVerify checks a 100,000-row export of each format.
func BenchmarkVerify(b *testing.B) {
	rows := makeHistory(b, 2000, 100_000, 99).rows()
	key := newKey(b)
	for _, f := range Formats {
		b.Run(string(f), func(b *testing.B) {
			path, manifest := exportSigned(b, b.TempDir(), f, rows, key)
			file := mustRead(b, path)
			for b.Loop() {
				if rep := verifyBytes(file, manifest, pub(key)); !rep.OK() {
					b.Fatal(rep.Err())
				}
			}
			b.ReportMetric(float64(len(rows))*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

type countingDiscard int64

func (c *countingDiscard) Write(p []byte) (int, error) {
	*c += countingDiscard(len(p))
	return len(p), nil
}

var _ io.Writer = (*countingDiscard)(nil)
