package app_test

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/projections"
)

var (
	benchEvents  = flag.Int("events", 1_000_000, "events in the benchmarks (5 per token)")
	benchNATSURL = flag.String("nats-url", "", "run the benchmarks against this NATS server (2.11+, JetStream on) instead of one embedded in the test process; they use their own stream, "+benchStream+", deleted at the end")
)

// benchStream is the stream the benchmarks fill.
const benchStream = "LEDGER_BENCH"

// benchStore opens a fresh stream: on a server embedded in this process (as
// `ledger serve` runs by default), or with -nats-url on one outside it (as a
// ledger on a NATS cluster runs), where the server's own memory is not in
// the heap this process's garbage collector walks.
func benchStore(b *testing.B) (*eventstore.Store, jetstream.JetStream) {
	b.Helper()
	var js jetstream.JetStream
	if *benchNATSURL == "" {
		ns := eventstoretest.MustServer(b)
		_, js = eventstoretest.MustConnect(b, ns)
	} else {
		nc, err := nats.Connect(*benchNATSURL)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		if js, err = jetstream.New(nc); err != nil {
			b.Fatal(err)
		}
		_ = js.DeleteStream(context.Background(), benchStream) // a leftover of an interrupted run
		b.Cleanup(func() { _ = js.DeleteStream(context.Background(), benchStream) })
	}
	cfg := eventstore.DefaultConfig()
	cfg.Stream, cfg.SubjectPrefix = benchStream, "ledger.bench.tokens"
	store, err := eventstore.Open(context.Background(), js, cfg)
	if err != nil {
		b.Fatal(err)
	}
	return store, js
}

// BenchmarkRestartAndRebuild fills a file-backed stream with -events events
// (a create and four more commands per token), then measures, in one run:
//   - raw: replaying the stream with a plain ordered consumer, no decoding;
//   - rebuild: building the token view from the first event, as
//     `ledger serve --rebuild` does, and its ratio to raw (medians of three
//     alternating rounds of each);
//   - restart: from a saved snapshot to a view ready to serve;
//   - the process's peak resident memory (the embedded NATS server included).
//
// Run: go test -run '^$' -bench RestartAndRebuild -benchtime 1x ./app -events 1000000
// (add -nats-url nats://HOST:4222 to use a NATS server outside the process)
func BenchmarkRestartAndRebuild(b *testing.B) {
	ctx := context.Background()
	store, js := benchStore(b)
	fill(b, js, store, *benchEvents, 50)
	id, err := store.Identity(ctx)
	if err != nil {
		b.Fatal(err)
	}
	last := id.LastSequence

	for b.Loop() {
		// Raw and rebuild alternate over a few rounds and their medians are
		// compared, so a noisy moment on the machine does not land on one side
		// only.
		const rounds = 3
		var raws, rebuilds, rawCPU, rebuildCPU []float64
		var view *projections.Tokens
		for range rounds {
			view = nil // a rebuild starts in a fresh process: nothing else in memory
			runtime.GC()
			cpu0 := cpuTime()
			raws = append(raws, rawReplay(b, js, last))
			cpu1 := cpuTime()
			view = projections.NewTokens()
			if p := os.Getenv("BENCH_PROFILE_REBUILD"); p != "" {
				f, _ := os.Create(p)
				pprof.StartCPUProfile(f)
			}
			start := time.Now()
			stop := app.Feed(store, view, nil)
			if err := view.WaitFor(ctx, last); err != nil {
				b.Fatal(err)
			}
			rebuilds = append(rebuilds, float64(last)/time.Since(start).Seconds())
			cpu2 := cpuTime()
			pprof.StopCPUProfile()
			stop()
			rawCPU = append(rawCPU, float64((cpu1-cpu0).Microseconds())/float64(last))
			rebuildCPU = append(rebuildCPU, float64((cpu2-cpu1).Microseconds())/float64(last))
		}
		rawRate, rebuildRate := median(raws), median(rebuilds)

		path := filepath.Join(b.TempDir(), "TOKENS.snap")
		start := time.Now()
		if _, err := view.SaveSnapshot(path, benchStream, id.Created); err != nil {
			b.Fatal(err)
		}
		saveTime := time.Since(start)
		info, _ := os.Stat(path)
		want := view.Digest()

		// A restart starts with nothing else in memory: drop the rebuilt
		// view first, so the measure is not burdened by collecting it.
		view = nil
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start = time.Now()
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		restarted, err := app.OpenView(ctx, store, path, false, quiet)
		if err != nil {
			b.Fatal(err)
		}
		stop := app.Feed(store, restarted, nil)
		if err := restarted.WaitFor(ctx, last); err != nil {
			b.Fatal(err)
		}
		restart := time.Since(start)
		stop()
		runtime.GC()
		runtime.ReadMemStats(&after)
		viewHeap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
		if restarted.Digest() != want {
			b.Fatal("the view restarted from its snapshot differs from the rebuilt one")
		}

		b.ReportMetric(float64(last), "events")
		b.ReportMetric(rawRate, "raw-events/s")
		b.ReportMetric(rebuildRate, "rebuild-events/s")
		b.ReportMetric(rebuildRate/rawRate, "rebuild/raw")
		b.ReportMetric(median(rawCPU), "raw-CPU-µs/event")
		b.ReportMetric(median(rebuildCPU), "rebuild-CPU-µs/event")
		b.ReportMetric(float64(restart.Milliseconds()), "restart-ms")
		b.ReportMetric(float64(saveTime.Milliseconds()), "snapshot-save-ms")
		b.ReportMetric(float64(info.Size())/(1<<20), "snapshot-MiB")
		b.ReportMetric(viewHeap/(1<<20), "view-heap-MiB")
		b.ReportMetric(peakRSSMiB(), "peak-RSS-MiB")
	}
}

// fill publishes n events over orgs organizations, asynchronously and in
// order, as the ledger would have stored them: same subjects, same JSON, a
// msg id each.
func fill(b *testing.B, js jetstream.JetStream, store *eventstore.Store, n, orgs int) {
	b.Helper()
	envAt := func(i int) domain.Env {
		return domain.Env{Now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond), Rand: rand.Reader,
			Actor: domain.Actor{TokenID: "tok_bench", RequestID: "req", SourceIP: "127.0.0.1", UserAgent: "bench"}}
	}
	publish := func(e domain.Event) {
		msg, err := store.Message(e) // as Append stores it: CloudEvents headers and all
		if err != nil {
			b.Fatal(err)
		}
		msg.Header.Set(jetstream.MsgIDHeader, e.ID)
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
	}
	i := 0
	for tok := 0; i < n; tok++ {
		org := fmt.Sprintf("org%d", tok%orgs)
		t, e, _, err := domain.Create(domain.CreateToken{OrganizationID: org, Scope: "organization", Name: fmt.Sprintf("token %d", tok)}, envAt(i))
		if err != nil {
			b.Fatal(err)
		}
		publish(e)
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
				b.Fatal(err)
			}
			publish(e)
			i++
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.Fatal("publishing did not complete")
	}
}

// rawReplay reads the whole stream with an ordered consumer and returns
// messages per second: the floor under any projection.
func rawReplay(b *testing.B, js jetstream.JetStream, last uint64) float64 {
	b.Helper()
	ctx := context.Background()
	start := time.Now()
	cons, err := js.OrderedConsumer(ctx, benchStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		b.Fatal(err)
	}
	defer it.Stop()
	for n := uint64(0); n < last; n++ {
		if _, err := it.Next(); err != nil {
			b.Fatal(err)
		}
	}
	return float64(last) / time.Since(start).Seconds()
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakRSSMiB reads the process's peak resident set (VmHWM) from /proc.
func peakRSSMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(v), "%f", &kb)
			return kb / 1024
		}
	}
	return 0
}
