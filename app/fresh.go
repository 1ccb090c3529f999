package app

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ErrStale: this ledger cannot show that its view holds everything the
// stream held a staleness bound ago (cut off from NATS, or its feed stuck).
// It authenticates and verifies nothing until it can: an answer from a view
// that may have missed a rotation or a deletion could accept a secret that
// no longer works anywhere else. It is an ErrUnavailable.
var ErrStale = fmt.Errorf("%w: this ledger cannot show that it is within its staleness bound of the stream", ErrUnavailable)

// DefaultMaxStaleness is how far behind the stream's head a ledger may be,
// at most, while it authenticates and verifies.
const DefaultMaxStaleness = 2 * time.Second

// WithMaxStaleness sets the staleness bound (DefaultMaxStaleness by
// default; 0 turns the check off, for tests of a view fed by hand). A
// ledger authenticates and verifies only while it has shown, within the
// last d, that its view had reached the stream's head as the stream stood
// then; so a secret rotated away or deleted through any ledger stops
// working on this one at most d after the command was acknowledged, or
// this one answers ErrStale.
func WithMaxStaleness(d time.Duration) Option { return func(l *Ledger) { l.fresh.bound = d } }

// freshness proves, again and again, that the view is current: it asks the
// stream for its last sequence and waits for the view to reach it. The view
// was current at the moment the question was sent. Questions are shared:
// however many callers need a head at once, at most one question is in
// flight and one waits to follow it.
type freshness struct {
	bound time.Duration
	base  time.Time
	// at is when the view was last shown current, as time since base
	// (monotonic); 0: never.
	at atomic.Int64

	mu   sync.Mutex
	cur  *headCall // in flight
	next *headCall // starts when cur is answered; for callers that came after cur was sent

	once sync.Once
	stop chan struct{}
	done chan struct{}
}

type headCall struct {
	sent time.Time
	last uint64
	err  error
	done chan struct{}
}

// current fails with ErrStale when the view has not been shown current
// within the bound by the background check (running from the first call
// on). Until the check has once succeeded, the caller asks itself.
func (l *Ledger) current() error {
	f := &l.fresh
	if f.bound <= 0 {
		return nil
	}
	f.once.Do(func() { l.startFreshness() })
	if f.shownWithin(f.bound) {
		return nil
	}
	if f.at.Load() == 0 {
		return l.reachHead(f.bound)
	}
	if err := l.reachable(); err != nil {
		return fmt.Errorf("%w: %w", ErrStale, err) // says NATS is unreachable
	}
	return ErrStale
}

func (f *freshness) shownWithin(d time.Duration) bool {
	at := f.at.Load()
	return at != 0 && time.Since(f.base)-time.Duration(at) <= d
}

func (f *freshness) shown(at time.Time) {
	n := int64(at.Sub(f.base))
	for {
		old := f.at.Load()
		if n <= old || f.at.CompareAndSwap(old, n) {
			return
		}
	}
}

// reachHead waits, for at most wait, until the view holds everything the
// stream held when it was called; ErrStale if it cannot show that.
func (l *Ledger) reachHead(wait time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := l.reachable(); err != nil {
		return fmt.Errorf("%w: %w", ErrStale, err)
	}
	last, sent, err := l.headSince(ctx, time.Now())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStale, err)
	}
	if err := l.view.WaitFor(ctx, last); err != nil {
		return fmt.Errorf("%w: the view did not reach sequence %d: %w", ErrStale, last, err)
	}
	l.fresh.shown(sent)
	return nil
}

// headSince is the stream's last sequence, as answered to a question sent
// at or after t, and when that question was sent.
func (l *Ledger) headSince(ctx context.Context, t time.Time) (uint64, time.Time, error) {
	f := &l.fresh
	for {
		f.mu.Lock()
		var c *headCall
		switch {
		case f.cur == nil:
			c = &headCall{sent: time.Now(), done: make(chan struct{})}
			f.cur = c
			go l.askHead(c)
		case !f.cur.sent.Before(t):
			c = f.cur
		default:
			if f.next == nil {
				f.next = &headCall{done: make(chan struct{})}
			}
			c = f.next
		}
		f.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return 0, time.Time{}, ctx.Err()
		}
		if !c.sent.Before(t) {
			return c.last, c.sent, c.err
		}
	}
}

// askHead answers c, then starts the call queued behind it.
func (l *Ledger) askHead(c *headCall) {
	f := &l.fresh
	wait := f.bound
	if wait <= 0 {
		wait = DefaultMaxStaleness
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	c.last, c.err = l.store.Head(ctx)
	cancel()
	f.mu.Lock()
	f.cur, f.next = f.next, nil
	if f.cur != nil {
		f.cur.sent = time.Now()
		go l.askHead(f.cur)
	}
	f.mu.Unlock()
	close(c.done)
}

// startFreshness keeps showing the view current, a quarter of the bound
// apart, until Close: requests then find it shown and ask nothing.
func (l *Ledger) startFreshness() {
	f := &l.fresh
	f.stop, f.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(f.done)
		tick := time.NewTicker(max(f.bound/4, time.Millisecond))
		defer tick.Stop()
		for {
			_ = l.reachHead(f.bound)
			select {
			case <-f.stop:
				return
			case <-tick.C:
			}
		}
	}()
}

// stopFreshness ends the background check, if it started.
func (l *Ledger) stopFreshness() {
	f := &l.fresh
	f.once.Do(func() {}) // never start it after this
	if f.stop != nil {
		select {
		case <-f.stop:
		default:
			close(f.stop)
		}
		<-f.done
	}
}

// Staleness says whether the ledger authenticates now: nil while its view
// has been shown current within the bound (or the bound is off), ErrStale
// otherwise. It asks nothing of NATS, so readiness checks may call it at
// any rate; a ledger that has not authenticated anything yet starts the
// background check.
func (l *Ledger) Staleness() error {
	f := &l.fresh
	if f.bound <= 0 {
		return nil
	}
	f.once.Do(func() { l.startFreshness() })
	if f.shownWithin(f.bound) {
		return nil
	}
	return ErrStale
}
