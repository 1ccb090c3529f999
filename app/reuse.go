package app

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
)

// Source is where a request came from. Authenticate records it in the
// TokenReuseDetected event of a rotated-away secret.
type Source struct {
	RequestID string
	SourceIP  string
	UserAgent string
}

// DefaultReuseInterval is how often, at most, the ledger writes a
// TokenReuseDetected for one token and source.
const DefaultReuseInterval = time.Minute

// DefaultReuseSlots is how many token-and-source pairs the ledger counts
// reuse for at once; a try from a new pair while they are all taken is
// dropped (and counted).
const DefaultReuseSlots = 65536

// maxReuseSources is how many sources (with the old secret each presented)
// of one token get events of their own in an interval; the tries of any
// further source are counted together, in one event without a source
// address, so that an attacker with many addresses cannot write more than
// maxReuseSources+1 events per token and interval.
const maxReuseSources = 16

// WithReuseInterval sets how often, at most, a TokenReuseDetected is written
// for one token and source (DefaultReuseInterval).
func WithReuseInterval(d time.Duration) Option { return func(l *Ledger) { l.reuse.interval = d } }

// WithReuseSlots sets how many token-and-source pairs reuse is counted for
// at once (DefaultReuseSlots).
func WithReuseSlots(n int) Option { return func(l *Ledger) { l.reuse.slots = n } }

// WithReuseLog makes the ledger log each reuse event it writes, and each one
// it could not write. Without it, ReuseStats is the only trace of a failure.
func WithReuseLog(log *slog.Logger) Option { return func(l *Ledger) { l.reuse.log = log } }

// ReuseStats counts what became of the rotated-away secrets presented to
// Authenticate. Tries = RecordedTries + FailedTries + Dropped + Pending.
type ReuseStats struct {
	// Tries: rotated-away secrets presented.
	Tries uint64
	// Pending: tries counted and not yet in a stored event (they will be
	// in the next event of their token and source).
	Pending uint64
	// Recorded: TokenReuseDetected events stored; RecordedTries: the tries
	// they stand for (the sum of their counts).
	Recorded, RecordedTries uint64
	// Dropped: tries not counted because every slot was taken or the ledger
	// was closed; no event records them.
	Dropped uint64
	// Failed: events that could not be stored (the stream unreachable
	// through every retry, or the ledger closed first); FailedTries: the
	// tries they stood for.
	Failed, FailedTries uint64
	// Retries: appends tried again, after a conflict (the token moved on)
	// or a failure to reach the stream.
	Retries uint64
}

// ReuseStats says what became of the rotated-away secrets presented since
// the ledger started.
func (l *Ledger) ReuseStats() ReuseStats {
	w := &l.reuse
	return ReuseStats{
		Tries: w.tries.Load(), Pending: w.pending.Load(),
		Recorded: w.recorded.Load(), RecordedTries: w.recordedTries.Load(),
		Dropped: w.dropped.Load(), Failed: w.failed.Load(), FailedTries: w.failedTries.Load(),
		Retries: w.retries.Load(),
	}
}

// Close stops the ledger's background work. The tries still counted are
// written, one event per token and source, for at most reuseCloseWait;
// commands and queries go on working, but reuse is no longer recorded.
// Call it before the store's connection closes and while the view is still
// fed (a conflict waits for the view).
func (l *Ledger) Close() error {
	l.stopFreshness()
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
	if w.stop != nil {
		close(w.stop)
	}
	select {
	case <-w.done:
	case <-time.After(reuseCloseWait):
		w.cancel() // give up on the stream; the rest count as failed
		<-w.done
	}
	return nil
}

// reuseCloseWait bounds how long Close spends writing what is counted.
const reuseCloseWait = 5 * time.Second

// reuseWriter records rotated-away secrets in bounded form, off the request
// path. A try is counted in memory, under one short lock: the first try of
// a token and source is written at once (the writer is woken), the tries
// after it, for one interval, only counted, and written as one event with
// their count when the interval is over. So whoever holds an old secret
// adds at most one event per interval and source to the token's history,
// and a try costs the request, and the process, no more than counting it:
// writing an event per try ran the append, the NATS server's work and the
// view's on the next requests' time, which made a rotated-away secret
// measurably slower to answer than an unknown one. Its zero value is
// ready; it starts on the first try.
//
// The bound holds per ledger process: several ledgers on one stream each
// count their own tries.
type reuseWriter struct {
	interval time.Duration
	slots    int
	log      *slog.Logger

	once   sync.Once
	done   chan struct{} // closed when the writer has stopped
	stop   chan struct{} // closed by Close: write everything, then stop
	wake   chan struct{} // a source's first try is waiting
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex // guards closed, tokens and used
	closed bool
	tokens map[reuseKey]*reuseToken
	used   int // slots taken: sources in tokens

	tries, pending, recorded, recordedTries, dropped, failed, failedTries, retries atomic.Uint64
}

type reuseKey struct{ org, id string }

// reuseToken is the sources a token's old secrets came from lately.
type reuseToken struct {
	sources []*reuseSource
}

// reuseSource counts one source's tries of one old secret on one token. It
// lives from its first try until an interval passes with none.
type reuseSource struct {
	ip string
	// presented is the old secret this slot counts (a token may have had
	// several), so that each gets events naming its own fingerprint.
	presented string
	// others: the slot of every source (and old secret) past the token's
	// first maxReuseSources, written without a source address, naming the
	// first of its pending tries' secret.
	others bool
	// secret is the first of the pending tries', fingerprinted when its
	// event is written; from is the last pending try's request.
	secret  string
	pending uint64
	from    Source
	// next is when the next event may be written; zero until the first.
	next time.Time
}

// reuseBatch is one event to write: tries from one source on one token.
type reuseBatch struct {
	key    reuseKey
	secret string
	tries  uint64
	from   Source
}

// reportReuse counts a try with a rotated-away secret, without waiting on
// anything but the counter's lock.
func (l *Ledger) reportReuse(org, id, secret string, from Source) {
	w := &l.reuse
	w.once.Do(func() { w.start(l) })
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.dropped.Add(1)
		w.tries.Add(1)
		return
	}
	src := w.source(reuseKey{org, id}, from.SourceIP, secret)
	if src == nil {
		w.mu.Unlock()
		w.dropped.Add(1)
		w.tries.Add(1)
		return
	}
	if src.pending == 0 {
		src.secret = secret
	}
	src.pending++
	if src.others {
		from.SourceIP = ""
	}
	src.from = from
	first := src.next.IsZero()
	w.pending.Add(1) // under mu: flush takes them from here
	w.tries.Add(1)
	w.mu.Unlock()
	if first {
		select {
		case w.wake <- struct{}{}:
		default: // already woken
		}
	}
}

// source finds or makes the slot of a token's source and presented secret;
// nil when every slot is taken. Called with mu held.
func (w *reuseWriter) source(key reuseKey, ip, secret string) *reuseSource {
	tok := w.tokens[key]
	if tok == nil {
		if w.used >= w.slots {
			return nil
		}
		tok = &reuseToken{}
		w.tokens[key] = tok
	}
	var others *reuseSource
	for _, s := range tok.sources {
		if s.others {
			others = s
		} else if s.ip == ip && s.presented == secret {
			return s
		}
	}
	if others != nil {
		return others
	}
	if w.used >= w.slots {
		if len(tok.sources) == 0 {
			delete(w.tokens, key)
		}
		return nil
	}
	s := &reuseSource{ip: ip, presented: secret, others: len(tok.sources) >= maxReuseSources}
	tok.sources = append(tok.sources, s)
	w.used++
	return s
}

func (w *reuseWriter) start(l *Ledger) {
	if w.interval <= 0 {
		w.interval = DefaultReuseInterval
	}
	if w.slots <= 0 {
		w.slots = DefaultReuseSlots
	}
	w.tokens = make(map[reuseKey]*reuseToken)
	w.done = make(chan struct{})
	w.stop = make(chan struct{})
	w.wake = make(chan struct{}, 1)
	w.ctx, w.cancel = context.WithCancel(context.Background())
	// The clock may be a test's: intervals are judged by it, and checked
	// this often in real time.
	tick := max(min(w.interval/4, time.Second), time.Millisecond)
	go func() {
		defer close(w.done)
		defer w.cancel()
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				w.flush(l, true)
				return
			case <-w.wake:
			case <-t.C:
			}
			w.flush(l, false)
		}
	}()
}

// flush writes an event for every source whose tries are due (all of them
// when closing), and forgets the sources that had none for an interval.
func (w *reuseWriter) flush(l *Ledger, all bool) {
	now := l.now()
	var due []reuseBatch
	w.mu.Lock()
	for key, tok := range w.tokens {
		kept := tok.sources[:0]
		for _, s := range tok.sources {
			switch {
			case s.pending > 0 && (all || !now.Before(s.next)):
				due = append(due, reuseBatch{key: key, secret: s.secret, tries: s.pending, from: s.from})
				s.secret, s.pending, s.from, s.next = "", 0, Source{}, now.Add(w.interval)
				kept = append(kept, s)
			case s.pending == 0 && !now.Before(s.next):
				w.used-- // quiet for an interval: its next try is a first again
			default:
				kept = append(kept, s)
			}
		}
		clear(tok.sources[len(kept):])
		tok.sources = kept
		if len(kept) == 0 {
			delete(w.tokens, key)
		}
	}
	w.mu.Unlock()
	for _, b := range due {
		w.write(l, b)
	}
}

// Retries of one event: a conflict means the token moved on (a command,
// another event) and costs one catch-up; a failure to reach the stream is
// retried with growing pauses for up to reuseRetryFor.
const (
	reuseMaxConflicts = 20
	reuseRetryFor     = time.Minute
)

// write appends one batch's event. Every attempt carries the same event
// id, so JetStream's duplicate window stores it once even when an attempt
// whose answer was lost did store it: one batch, exactly one event.
func (w *reuseWriter) write(l *Ledger, r reuseBatch) {
	fp := domain.Fingerprint(r.secret)
	r.secret = ""
	env := domain.Env{Rand: l.rand, Actor: domain.Actor{
		TokenID: domain.SystemActor, RequestID: r.from.RequestID, SourceIP: r.from.SourceIP, UserAgent: r.from.UserAgent,
	}}
	done := func() { w.pending.Add(^(r.tries - 1)) }
	fail := func(err error) {
		done()
		w.failed.Add(1)
		w.failedTries.Add(r.tries)
		if w.log != nil {
			w.log.Error("reuse of a rotated-away secret not recorded", "organization_id", r.key.org, "token_id", r.key.id,
				"source_ip", r.from.SourceIP, "request_id", r.from.RequestID, "tries", r.tries, "error", err)
		}
	}
	conflicts, pause, giveUp := 0, 100*time.Millisecond, time.Now().Add(reuseRetryFor)
	for {
		tok, last, ok := l.view.Get(r.key.org, r.key.id)
		if !ok {
			fail(errors.New("token not in the view")) // the view found it a moment ago
			return
		}
		// Decided afresh on each attempt, on the token's head then: like a
		// command's, its time is when the ledger decided it, so a token's
		// events keep their order in time.
		env.Now = l.now()
		e, err := tok.RecordReuses(fp, r.tries, env)
		if err != nil {
			fail(err)
			return
		}
		env.EventID = e.ID
		x, err := l.expectationFor(tok, last)
		var ap eventstore.Appended
		if err == nil {
			ap, err = l.appendExpecting(w.ctx, e, x)
		}
		switch {
		case err == nil:
			done()
			w.recorded.Add(1)
			w.recordedTries.Add(r.tries)
			if w.log != nil {
				w.log.Warn("rotated-away secret presented again: recorded TokenReuseDetected", "organization_id", r.key.org, "token_id", r.key.id,
					"fingerprint", fp, "source_ip", r.from.SourceIP, "request_id", r.from.RequestID, "tries", r.tries,
					"sequence", ap.Sequence, "duplicate", ap.Duplicate)
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
