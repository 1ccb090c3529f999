package app_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/projections"
)

// BenchmarkExport fills a file-backed stream with -events events of one
// organization, then measures, in one run, alternating over three rounds:
//   - raw: the stream replayed by a plain ordered consumer, nothing decoded;
//   - the audit export of the whole organization as Parquet and as JSONL
//     (stream read, rows encoded, file hashed, manifest signed), written to
//     io.Discard: the network and disk are not the export's to measure;
//   - the export's peak memory, sampled every 5 ms from where the heap stood
//     before it: "held" is the growth of the live heap (what the export
//     keeps: its buffers, a row group, one chain entry per token; the
//     manifest goes to a counter as it is written, as it goes to the
//     client), "heap" the growth of all heap objects, garbage not yet
//     collected included. The second depends on the collector's pacing
//     against the whole process's live heap (here the embedded NATS server
//     and its million messages too), not on the export. The raw replay's
//     own "held" is reported beside it: what reading the stream costs the
//     server (its block caches) whoever reads.
//
// Run: go test -run '^$' -bench Export -benchtime 1x -timeout 30m ./app -events 1000000
func BenchmarkExport(b *testing.B) {
	ctx := context.Background()
	store, js := benchStore(b)
	fill(b, js, store, *benchEvents, 1)
	last, err := store.LastSequence(ctx)
	if err != nil {
		b.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	ledger := app.New(store, projections.NewTokens(), app.WithAuditKey(key))
	owner, _, _, err := domain.Create(domain.CreateToken{OrganizationID: "org0", Scope: "organization", Name: "auditor", Role: "ORGANIZATION_OWNER"},
		domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		b.Fatal(err)
	}
	caller := app.Caller{Token: owner}

	var manifestBytes int
	export := func(f exporters.Format) (rate, heldMiB, heapMiB float64) {
		runtime.GC()
		stop := watchHeap()
		start := time.Now()
		var manifest countingWriter
		m, err := ledger.Export(ctx, caller, app.ExportQuery{Format: f}, app.ExportOutput{File: io.Discard, Manifest: &manifest})
		if err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		held, heap := stop()
		if m.Rows != int64(last) {
			b.Fatalf("%s export: %d rows of %d", f, m.Rows, last)
		}
		manifestBytes = int(manifest)
		return float64(last) / elapsed.Seconds(), held / (1 << 20), heap / (1 << 20)
	}
	for b.Loop() {
		var raws, parquets, jsonls, held, heap, rawHeld []float64
		for range 3 {
			runtime.GC()
			stop := watchHeap()
			raws = append(raws, rawReplay(b, js, last))
			h, _ := stop()
			rawHeld = append(rawHeld, h/(1<<20))
			r, h, hp := export(exporters.FormatParquet)
			parquets, held, heap = append(parquets, r), append(held, h), append(heap, hp)
			r, h, hp = export(exporters.FormatJSONL)
			jsonls, held, heap = append(jsonls, r), append(held, h), append(heap, hp)
		}
		raw := median(raws)
		b.ReportMetric(float64(last), "events")
		b.ReportMetric(raw, "raw-events/s")
		b.ReportMetric(median(parquets), "parquet-events/s")
		b.ReportMetric(median(parquets)/raw, "parquet/raw")
		b.ReportMetric(median(jsonls), "jsonl-events/s")
		b.ReportMetric(median(jsonls)/raw, "jsonl/raw")
		b.ReportMetric(maxOf(held), "export-peak-held-MiB")
		b.ReportMetric(maxOf(rawHeld), "raw-peak-held-MiB")
		b.ReportMetric(maxOf(heap), "export-peak-heap-MiB")
		b.ReportMetric(float64(manifestBytes)/(1<<20), "manifest-MiB")
	}
}

// countingWriter counts what is written to it, and keeps none of it.
type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

// watchHeap samples the heap until the returned stop is called, which
// reports how far the live heap (as of the latest collection) and all heap
// objects grew above where they started.
func watchHeap() (stop func() (held, heap float64)) {
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	read := func() [2]float64 {
		metrics.Read(samples)
		return [2]float64{float64(samples[0].Value.Uint64()), float64(samples[1].Value.Uint64())}
	}
	base := read()
	var (
		mu   sync.Mutex
		peak = base
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				v := read()
				mu.Lock()
				peak = [2]float64{max(peak[0], v[0]), max(peak[1], v[1])}
				mu.Unlock()
			}
		}
	}()
	return func() (float64, float64) {
		close(done)
		wg.Wait()
		return peak[0] - base[0], peak[1] - base[1]
	}
}

func maxOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
