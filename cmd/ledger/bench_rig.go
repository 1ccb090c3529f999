package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/node"
	"github.com/tokenledger/tokenledger/projections"
)

// benchOrg is the organization the benchmark's ledger works in.
const benchOrg = "bench"

// benchRig is a ledger as `ledger serve` runs it by default (node.Start): an
// embedded, locked-down NATS server on file storage (the ledger writes as
// its own user over an in-process connection; services log in with a token
// on a loopback port and read the services' mirror), the token view fed
// from the stream, and the HTTP API on a loopback listener. Beside the ledger's own
// stream it holds a baseline stream, which the raw publishes write to: same
// configuration, never read by the ledger.
type benchRig struct {
	ns          *server.Server
	natsURL     string // for services: log in with a token
	js          jetstream.JetStream
	store       *eventstore.Store
	view        *projections.Tokens
	ledger      *app.Ledger
	owner       app.Caller
	ownerSecret string
	apiURL      string
	baseline    *eventstore.Store
	auditKey    ed25519.PrivateKey
	quiet       *slog.Logger
	progress    io.Writer
	bulk        *bulk // made by the first of rebuild and export
	closers     []func()
}

// Streams beside the ledger's own. The baseline's subject prefix is as long
// as the ledger's ("ledger.tokens"), so its messages are the same size.
const (
	baselineStream = "BASELINE"
	baselinePrefix = "baseline.toks"
	bulkStream     = "BULK"
	bulkPrefix     = "bulk.tokens"
)

func startBenchRig(ctx context.Context, dir string, progress io.Writer) (r *benchRig, err error) {
	r = &benchRig{progress: progress}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	// The API formats its log line for every request, as `ledger serve`
	// does; the bench does not print them.
	r.quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
	// The view starts empty at each run and is not saved: a snapshot would
	// only cost the bench's runs time they do not measure.
	cfg := node.DefaultConfig()
	cfg.DataDir, cfg.NATSListen, cfg.HTTPAddr = dir, "127.0.0.1:0", "127.0.0.1:0"
	cfg.Org, cfg.Snapshot = benchOrg, false
	n, err := node.Start(ctx, cfg, r.quiet)
	if err != nil {
		return nil, err
	}
	r.closers = append(r.closers, func() { _ = n.Close() })
	r.ns, r.natsURL, r.js = n.NATSServer(), n.NATSClientURL(), n.JetStream()
	r.store, r.view, r.ledger, r.auditKey = n.Store(), n.View(), n.Ledger(), n.AuditKey()
	r.apiURL = "http://" + n.HTTPAddr()
	cfgB := eventstore.DefaultConfig()
	cfgB.Stream, cfgB.SubjectPrefix = baselineStream, baselinePrefix
	if r.baseline, err = eventstore.Open(ctx, r.js, cfgB); err != nil {
		return nil, err
	}
	secret, err := os.ReadFile(n.BootstrapPath())
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	r.ownerSecret = strings.TrimSpace(string(secret))
	owner, err := r.ledger.Authenticate(r.ownerSecret, app.Source{})
	if err != nil {
		return nil, fmt.Errorf("bootstrap token: %w", err)
	}
	r.owner = app.Caller{Token: owner, RequestID: "bench-request", SourceIP: "127.0.0.1", UserAgent: "ledger-bench"}
	return r, nil
}

// close undoes the start, last step first.
func (r *benchRig) close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		r.closers[i]()
	}
	r.closers = nil
}

// report prints what a view's feed refused: the figures of a view that
// skipped events would be wrong, and the user should know.
func (r *benchRig) report(what string) func(error) {
	return func(err error) { fmt.Fprintf(r.progress, "bench: %s: %v\n", what, err) }
}

// phase is one measured run of a workload: operations done, the wall time
// they took, and each one's latency.
type phase struct {
	ops     int
	elapsed time.Duration
	lat     []time.Duration
}

func (p phase) rate() float64 { return float64(p.ops) / p.elapsed.Seconds() }

// ms is latency quantile q (0.5, 0.99) in milliseconds: the smallest
// latency that q of the operations did not exceed.
func (p phase) ms(q float64) float64 {
	if len(p.lat) == 0 {
		return 0
	}
	i := max(int(math.Ceil(q*float64(len(p.lat))))-1, 0)
	return float64(p.lat[i]) / float64(time.Millisecond)
}

// share is worker w's part of n operations split over c workers.
func share(n, c, w int) int {
	s := n / c
	if w < n%c {
		s++
	}
	return s
}

// drive runs op on c workers at once, each worker calling it one operation
// after another: with n > 0, n operations in all (each worker its share);
// with n == 0, until d has passed. The first error stops every worker.
func drive(ctx context.Context, c, n int, d time.Duration, op func(ctx context.Context, w int) error) (phase, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lats := make([][]time.Duration, c)
	errs := make([]error, c)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range c {
		mine := share(n, c, w)
		wg.Go(func() {
			for i := 0; n > 0 && i < mine || n == 0 && time.Now().Before(deadline); i++ {
				t := time.Now()
				if err := op(ctx, w); err != nil {
					errs[w] = err
					cancel()
					return
				}
				lats[w] = append(lats[w], time.Since(t))
			}
		})
	}
	wg.Wait()
	p := phase{elapsed: time.Since(start), lat: slices.Concat(lats...)}
	// The first worker to fail cancelled the others: report its error, not
	// theirs.
	var firstErr error
	for _, err := range errs {
		if err != nil && (firstErr == nil || errors.Is(firstErr, context.Canceled) && !errors.Is(err, context.Canceled)) {
			firstErr = err
		}
	}
	if firstErr != nil {
		return p, firstErr
	}
	p.ops = len(p.lat)
	slices.Sort(p.lat)
	if p.ops == 0 {
		return p, errors.New("no operation completed")
	}
	return p, nil
}

// phases collects the rounds of one side and gives their medians.
type phases []phase

func (ps phases) rate() float64 {
	return median(mapTo(ps, phase.rate))
}

func (ps phases) ms(q float64) float64 {
	return median(mapTo(ps, func(p phase) float64 { return p.ms(q) }))
}

func mapTo[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}
