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
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/projections"
)

// BenchmarkExport fills a file-backed stream with -events events of one
// organization, then measures, in one run, alternating over three rounds:
//   - raw: the stream replayed by a plain ordered consumer, nothing decoded;
//   - the audit export of the whole organization as Parquet and as JSONL
//     (stream read, rows encoded, file hashed, manifest signed), written to
//     io.Discard: the network and disk are not the export's to measure;
//   - the export's peak memory: the most the process's heap grew above
//     where it stood before the export, sampled every 5 ms.
//
// Run: go test -run '^$' -bench Export -benchtime 1x -timeout 30m ./app -events 1000000
func BenchmarkExport(b *testing.B) {
	ctx := context.Background()
	store, js, _ := eventstoretest.MustStore(b)
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

	export := func(f exporters.Format) (rate, peakMiB float64) {
		runtime.GC()
		stop := watchHeap()
		start := time.Now()
		manifest, err := ledger.Export(ctx, caller, app.ExportQuery{Format: f}, io.Discard, nil)
		if err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		peak := stop()
		m, err := exporters.OpenManifest(manifest, key.Public().(ed25519.PublicKey))
		if err != nil || m.Rows != int64(last) {
			b.Fatalf("%s export: %d rows of %d (%v)", f, m.Rows, last, err)
		}
		return float64(last) / elapsed.Seconds(), peak / (1 << 20)
	}
	for b.Loop() {
		var raws, parquets, jsonls, parquetPeaks, jsonlPeaks []float64
		for range 3 {
			runtime.GC()
			raws = append(raws, rawReplay(b, js, last))
			r, p := export(exporters.FormatParquet)
			parquets, parquetPeaks = append(parquets, r), append(parquetPeaks, p)
			r, p = export(exporters.FormatJSONL)
			jsonls, jsonlPeaks = append(jsonls, r), append(jsonlPeaks, p)
		}
		raw := median(raws)
		b.ReportMetric(float64(last), "events")
		b.ReportMetric(raw, "raw-events/s")
		b.ReportMetric(median(parquets), "parquet-events/s")
		b.ReportMetric(median(parquets)/raw, "parquet/raw")
		b.ReportMetric(median(jsonls), "jsonl-events/s")
		b.ReportMetric(median(jsonls)/raw, "jsonl/raw")
		b.ReportMetric(maxOf(parquetPeaks), "parquet-peak-heap-MiB")
		b.ReportMetric(maxOf(jsonlPeaks), "jsonl-peak-heap-MiB")
	}
}

// watchHeap samples the heap until the returned stop is called, which
// reports how far it grew above where it started.
func watchHeap() (stop func() float64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() float64 {
		metrics.Read(sample)
		return float64(sample[0].Value.Uint64())
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
				peak = max(peak, v)
				mu.Unlock()
			}
		}
	}()
	return func() float64 {
		close(done)
		wg.Wait()
		return peak - base
	}
}

func maxOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
