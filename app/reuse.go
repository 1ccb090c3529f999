package app

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// Source is where a request came from. Authenticate records it in the
// TokenReuseDetected event of a rotated-away secret.
type Source struct {
	RequestID string
	SourceIP  string
	UserAgent string
}

// DefaultReuseQueue is how many reuse reports may wait to be written before
// more are dropped (and counted).
const DefaultReuseQueue = 1024

// WithReuseQueue sets how many reuse reports may wait to be written.
func WithReuseQueue(n int) Option { return func(l *Ledger) { l.reuse.size = n } }

// WithReuseLog makes the ledger log each reuse it records, and each one it
// could not record. Without it, ReuseStats is the only trace of a failure.
func WithReuseLog(log *slog.Logger) Option { return func(l *Ledger) { l.reuse.log = log } }

// ReuseStats counts what became of the rotated-away secrets presented to
// Authenticate.
type ReuseStats struct {
	// Queued: reports taken for writing.
	Queued uint64
	// Recorded: TokenReuseDetected events stored, one per queued report
	// that did not fail.
	Recorded uint64
	// Dropped: reports refused because the queue was full or the ledger
	// was closed; no event records them.
	Dropped uint64
	// Failed: queued reports whose event could not be stored (the stream
	// unreachable through every retry, or the ledger closed first).
	Failed uint64
	// Retries: appends tried again, after a conflict (the token moved on)
	// or a failure to reach the stream.
	Retries uint64
}

// ReuseStats says how many reuse reports were queued, recorded, dropped and
// failed since the ledger started.
func (l *Ledger) ReuseStats() ReuseStats {
	w := &l.reuse
	return ReuseStats{Queued: w.queued.Load(), Recorded: w.recorded.Load(), Dropped: w.dropped.Load(), Failed: w.failed.Load(), Retries: w.retries.Load()}
}

// Close stops the ledger's background work. What is queued is still
// written, for at most reuseCloseWait; commands and queries go on working,
// but reuse is no longer recorded. Call it before the store's connection
// closes and while the view is still fed (a conflict waits for the view).
func (l *Ledger) Close() error {
	w := &l.reuse
	w.once.Do(func() { // never started: nothing to stop
		w.done = make(chan struct{})
		close(w.done)
	})
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		<-w.done
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	if w.queue != nil {
		close(w.queue) // no sender is left: they check closed under mu
	}
	select {
	case <-w.done:
	case <-time.After(reuseCloseWait):
		w.cancel() // give up on the stream; the rest count as failed
		<-w.done
	}
	return nil
}

// reuseCloseWait bounds how long Close spends writing what is queued.
const reuseCloseWait = 5 * time.Second

// reuseWriter appends TokenReuseDetected events off the request path: a
// request with a rotated-away secret only hands over a report, so it is
// answered as fast as any other refused secret, and a slow or unreachable
// stream slows no request. Its zero value is ready; it starts on the first
// report.
type reuseWriter struct {
	size int
	log  *slog.Logger

	once   sync.Once
	done   chan struct{} // closed when the writer has stopped
	mu     sync.RWMutex  // senders hold it to read closed; Close to set it
	closed bool
	queue  chan reuseReport
	ctx    context.Context
	cancel context.CancelFunc

	queued, recorded, dropped, failed, retries atomic.Uint64
}

// reuseReport is one presentation of a rotated-away secret. It carries the
// secret so that the writer, not the request, pays for its fingerprint; it
// is dropped once the fingerprint is taken.
type reuseReport struct {
	org, tokenID string
	secret       string
	from         Source
}

// reportReuse queues a report without waiting: when the queue is full the
// report is dropped and counted.
func (l *Ledger) reportReuse(org, id, secret string, from Source) {
	w := &l.reuse
	w.once.Do(func() { w.start(l) })
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		w.dropped.Add(1)
		return
	}
	select {
	case w.queue <- reuseReport{org: org, tokenID: id, secret: secret, from: from}:
		w.queued.Add(1)
	default:
		w.dropped.Add(1)
	}
}

func (w *reuseWriter) start(l *Ledger) {
	size := w.size
	if size <= 0 {
		size = DefaultReuseQueue
	}
	w.done = make(chan struct{})
	w.queue = make(chan reuseReport, size)
	w.ctx, w.cancel = context.WithCancel(context.Background())
	go func() {
		defer close(w.done)
		defer w.cancel()
		for r := range w.queue {
			w.write(l, r)
		}
	}()
}

// Retries of one report: a conflict means the token moved on (a command,
// another report) and costs one catch-up; a failure to reach the stream is
// retried with growing pauses for up to reuseRetryFor.
const (
	reuseMaxConflicts = 20
	reuseRetryFor     = time.Minute
)

// write appends one report's event. Every attempt carries the same event id,
// so JetStream's duplicate window stores it once even when an attempt whose
// answer was lost did store it: one report, exactly one event.
func (w *reuseWriter) write(l *Ledger, r reuseReport) {
	fp := domain.Fingerprint(r.secret)
	r.secret = ""
	env := domain.Env{Rand: l.rand, Actor: domain.Actor{
		TokenID: domain.SystemActor, RequestID: r.from.RequestID, SourceIP: r.from.SourceIP, UserAgent: r.from.UserAgent,
	}}
	fail := func(err error) {
		w.failed.Add(1)
		if w.log != nil {
			w.log.Error("reuse of a rotated-away secret not recorded", "organization_id", r.org, "token_id", r.tokenID,
				"source_ip", r.from.SourceIP, "request_id", r.from.RequestID, "error", err)
		}
	}
	conflicts, pause, giveUp := 0, 100*time.Millisecond, time.Now().Add(reuseRetryFor)
	for {
		tok, last, ok := l.view.Get(r.org, r.tokenID)
		if !ok {
			fail(errors.New("token not in the view")) // the view found it a moment ago
			return
		}
		// Decided afresh on each attempt, on the token's head then: like a
		// command's, its time is when the ledger decided it, so a token's
		// events keep their order in time.
		env.Now = l.now()
		e, err := tok.RecordReuse(fp, env)
		if err != nil {
			fail(err)
			return
		}
		env.EventID = e.ID
		ap, err := l.store.Append(w.ctx, e, last)
		switch {
		case err == nil:
			w.recorded.Add(1)
			if w.log != nil {
				w.log.Warn("rotated-away secret presented again: recorded TokenReuseDetected", "organization_id", r.org, "token_id", r.tokenID,
					"fingerprint", fp, "source_ip", r.from.SourceIP, "request_id", r.from.RequestID, "sequence", ap.Sequence, "duplicate", ap.Duplicate)
			}
			return
		case w.ctx.Err() != nil:
			fail(err)
			return
		case errors.Is(err, domain.ErrConflict):
			if conflicts++; conflicts > reuseMaxConflicts {
				fail(err)
				return
			}
			w.retries.Add(1)
			if err := l.catchUp(w.ctx); err != nil && w.ctx.Err() != nil {
				fail(err)
				return
			}
		default:
			if time.Now().After(giveUp) {
				fail(err)
				return
			}
			select {
			case <-w.ctx.Done():
				fail(err)
				return
			case <-time.After(pause):
			}
			w.retries.Add(1)
			pause = min(2*pause, 5*time.Second)
		}
	}
}
