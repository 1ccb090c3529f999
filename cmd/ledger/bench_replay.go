package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/projections"
)

// bulk is the stream of --events events that rebuild and export read, made
// once, by whichever of them runs first.
type bulk struct {
	store *eventstore.Store
	last  uint64
}

func (r *benchRig) bulkStream(ctx context.Context, p benchParams) (*bulk, error) {
	if r.bulk != nil {
		return r.bulk, nil
	}
	cfg := eventstore.DefaultConfig()
	cfg.Stream, cfg.SubjectPrefix = bulkStream, bulkPrefix
	store, err := eventstore.Open(ctx, r.js, cfg)
	if err != nil {
		return nil, err
	}
	p.say("filling stream %s with %d events", bulkStream, p.events)
	start := time.Now()
	if err := fill(ctx, r.js, store, p.events); err != nil {
		return nil, fmt.Errorf("fill: %w", err)
	}
	last, err := store.LastSequence(ctx)
	if err != nil {
		return nil, err
	}
	if last != uint64(p.events) {
		return nil, fmt.Errorf("fill: the stream holds %d events, not %d", last, p.events)
	}
	p.say("filled in %.1fs", time.Since(start).Seconds())
	r.bulk = &bulk{store: store, last: last}
	return r.bulk, nil
}

// fill publishes n events of one organization, asynchronously and in order,
// as the ledger would have stored them: each token created, assigned to a
// workspace, renamed, rotated and assigned to a second workspace (the lives
// of app's BenchmarkRestartAndRebuild and BenchmarkExport, so the figures
// compare), each event its own message (Store.Message) with its msg id. One
// organization, so the export reads every event.
func fill(ctx context.Context, js jetstream.JetStream, store *eventstore.Store, n int) error {
	envAt := func(i int) domain.Env {
		return domain.Env{Now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond), Rand: rand.Reader,
			Actor: domain.Actor{TokenID: "tok_bench", RequestID: "req", SourceIP: "127.0.0.1", UserAgent: "bench"}}
	}
	publish := func(e domain.Event) error {
		msg, err := store.Message(e)
		if err != nil {
			return err
		}
		msg.Header.Set(jetstream.MsgIDHeader, e.ID)
		// Beyond 4,000 unacknowledged messages a publish waits for room; the
		// default wait (200 ms) is too short for a server writing a million
		// messages to disk on two busy cores.
		_, err = js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute))
		return err
	}
	i := 0
	for tok := 0; i < n; tok++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		t, e, _, err := domain.Create(domain.CreateToken{OrganizationID: benchOrg, Scope: "organization", Name: fmt.Sprintf("token %d", tok)}, envAt(i))
		if err != nil {
			return err
		}
		if err := publish(e); err != nil {
			return err
		}
		i++
		for step := 0; step < 4 && i < n; step++ {
			var e domain.Event
			switch step {
			case 0:
				e, _, err = t.Assign(fmt.Sprintf("w%d", tok%1000), "WORKSPACE_OPERATOR", envAt(i))
			case 1:
				name := fmt.Sprintf("token %d renamed", tok)
				e, _, err = t.Update(domain.UpdateToken{Name: &name}, envAt(i))
			case 2:
				e, _, err = t.Rotate(envAt(i))
			case 3:
				e, _, err = t.Assign(fmt.Sprintf("w%d", (tok+1)%1000), "WORKSPACE_MEMBER", envAt(i))
			}
			if err != nil {
				return err
			}
			if err := publish(e); err != nil {
				return err
			}
			i++
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("publishing did not complete within 5 minutes")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rawReplay reads the whole stream with an ordered consumer, as the feed
// does (the iterator, 1024 messages a pull), decoding nothing, and returns
// messages per second: the floor under any projection.
func rawReplay(ctx context.Context, js jetstream.JetStream, stream string, last uint64) (float64, error) {
	start := time.Now()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return 0, err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return 0, err
	}
	defer it.Stop()
	for n := uint64(0); n < last; n++ {
		if _, err := it.Next(); err != nil {
			return 0, fmt.Errorf("raw replay at message %d: %w", n+1, err)
		}
	}
	return float64(last) / time.Since(start).Seconds(), nil
}

// benchRebuild: the token view built from the first event of --events
// events, as `ledger serve --rebuild` does (app.Feed), against the raw
// replay; each in a collected heap, the rebuilt view dropped before the
// next round.
func (r *benchRig) benchRebuild(ctx context.Context, p benchParams) ([]benchRow, error) {
	b, err := r.bulkStream(ctx, p)
	if err != nil {
		return nil, err
	}
	// Warm-up: every block of the stream read once, so neither side is the
	// first to read it from disk.
	if _, err := rawReplay(ctx, r.js, bulkStream, b.last); err != nil {
		return nil, err
	}
	var raws, rebuilds []float64
	for range rounds {
		runtime.GC()
		raw, err := rawReplay(ctx, r.js, bulkStream, b.last)
		if err != nil {
			return nil, err
		}
		raws = append(raws, raw)
		rate, err := rebuild(ctx, b, r.report("rebuilt view"))
		if err != nil {
			return nil, err
		}
		rebuilds = append(rebuilds, rate)
	}
	return []benchRow{row("rebuild", "token view from the first event", "events/s", median(rebuilds), median(raws), ptr(ratioAtLeast(0.7)))}, nil
}

func rebuild(ctx context.Context, b *bulk, report func(error)) (float64, error) {
	runtime.GC()
	view := projections.NewTokens()
	start := time.Now()
	stop := app.Feed(b.store, view, report)
	defer stop()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := view.WaitFor(wctx, b.last); err != nil {
		return 0, fmt.Errorf("rebuild: %w", err)
	}
	rate := float64(b.last) / time.Since(start).Seconds()
	if view.Rejected() != 0 {
		return 0, fmt.Errorf("rebuild: %w: the view refused %d events", errBench, view.Rejected())
	}
	return rate, nil
}

// heapPeakMiB is the most the export may hold, 150 MB, in MiB.
const heapPeakMiB = 150e6 / (1 << 20)

// benchExport: the organization's whole audit log exported as Parquet and
// as JSONL (everything GET /v1/audit/export does but the network: stream
// read, rows built and encoded, file hashed, manifest signed, the bytes
// written to io.Discard), against the raw replay, alternating over the
// rounds as app's BenchmarkExport does. Memory: the live heap's peak growth
// during each export, against the same during the raw replay (reading the
// stream makes the embedded server cache its blocks in this process,
// whoever reads).
func (r *benchRig) benchExport(ctx context.Context, p benchParams) ([]benchRow, error) {
	b, err := r.bulkStream(ctx, p)
	if err != nil {
		return nil, err
	}
	ledger := app.New(b.store, projections.NewTokens(), app.WithAuditKey(r.auditKey))
	defer ledger.Close()
	// The owner of the bulk stream's organization. Only its role matters for
	// an export, so it need not be in the stream.
	owner, _, _, err := domain.Create(domain.CreateToken{OrganizationID: benchOrg, Scope: "organization", Name: "auditor", Role: string(domain.RoleOrganizationOwner)},
		domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		return nil, err
	}
	caller := app.Caller{Token: owner}
	export := func(f exporters.Format, after uint64) (rate, heldMiB float64, err error) {
		runtime.GC()
		stop := watchHeap()
		start := time.Now()
		var manifest countingWriter
		m, err := ledger.Export(ctx, caller, app.ExportQuery{Format: f, AfterSequence: after}, app.ExportOutput{File: io.Discard, Manifest: &manifest})
		elapsed := time.Since(start)
		held := stop()
		if err != nil {
			return 0, 0, fmt.Errorf("%s export: %w", f, err)
		}
		want := int64(b.last - after)
		if m.Rows != want {
			return 0, 0, fmt.Errorf("%s export: %w: %d rows of %d", f, errBench, m.Rows, want)
		}
		return float64(want) / elapsed.Seconds(), held / (1 << 20), nil
	}
	// Warm-up: the last few thousand events in each format.
	for _, f := range []exporters.Format{exporters.FormatParquet, exporters.FormatJSONL} {
		if _, _, err := export(f, b.last-min(b.last, 2000)); err != nil {
			return nil, err
		}
	}
	var raws, parquets, jsonls, held, rawHeld []float64
	for range rounds {
		runtime.GC()
		stop := watchHeap()
		raw, err := rawReplay(ctx, r.js, bulkStream, b.last)
		h := stop()
		if err != nil {
			return nil, err
		}
		raws, rawHeld = append(raws, raw), append(rawHeld, h/(1<<20))
		for _, f := range []exporters.Format{exporters.FormatParquet, exporters.FormatJSONL} {
			rate, h, err := export(f, 0)
			if err != nil {
				return nil, err
			}
			held = append(held, h)
			if f == exporters.FormatParquet {
				parquets = append(parquets, rate)
			} else {
				jsonls = append(jsonls, rate)
			}
		}
	}
	raw := median(raws)
	return []benchRow{
		row("export", "Parquet, whole organization", "events/s", median(parquets), raw, ptr(ratioAtLeast(0.5))),
		row("export", "JSONL, whole organization", "events/s", median(jsonls), raw, ptr(ratioAtLeast(0.5))),
		row("export", "peak live heap growth", "MiB", maxOf(held), maxOf(rawHeld), ptr(valueBelow(heapPeakMiB, "< 150 MB"))),
	}, nil
}

func maxOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// countingWriter counts what is written to it, and keeps none of it.
type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

// watchHeap samples the heap every 5 ms until the returned stop is called,
// which reports how far the live heap (as of the latest collection) grew
// above where it started, as app's BenchmarkExport measures it. The live
// heap is only known after a collection: where none ended while watching,
// or none saw it above its start (a small stream), the growth of all heap
// objects, garbage included, stands in for it; it can only be larger.
func watchHeap() (stop func() (held float64)) {
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	read := func() [3]float64 {
		metrics.Read(samples)
		return [3]float64{float64(samples[0].Value.Uint64()), float64(samples[1].Value.Uint64()), float64(samples[2].Value.Uint64())}
	}
	base := read()
	var (
		mu   sync.Mutex
		peak = base
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	sample := func() {
		v := read()
		mu.Lock()
		peak = [3]float64{max(peak[0], v[0]), max(peak[1], v[1]), max(peak[2], v[2])}
		mu.Unlock()
	}
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				sample()
			}
		}
	})
	return func() float64 {
		close(done)
		wg.Wait()
		sample()
		if peak[2] == base[2] || peak[0] <= base[0] {
			return peak[1] - base[1]
		}
		return peak[0] - base[0]
	}
}
