package httpapi

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/shared"
)

// The failed-authentication budget of N ledgers behind one load balancer
// must be one budget, or a guesser spreading its tries gets N of them. Each
// instance keeps its limiter as before (so the success path still reads
// only memory) and a bucket holds every source's GCRA time, the moment its
// budget is full again:
//
//   - a failure is charged to the local limiter at once, as before, and
//     queued; a goroutine adds the queued failures to the bucket's time
//     with a compare-and-set (each failure one interval, uncapped, as
//     locally), so failures on any instance add up;
//   - every instance follows the bucket (shared.Follow) and takes the later
//     of its own time and the bucket's for each source.
//
// What remains is lag, never a lost failure: a failure on A counts on B
// once A has written it and B has read it back, a few milliseconds on a
// healthy cluster. A guesser racing that window gets those tries answered
// 401 instead of 429, and still pays an interval for each (the charge is
// uncapped), so it gains a head start, not a larger budget. While NATS is
// unreachable each instance limits on its own (N budgets) and keeps the
// queued failures to write when NATS is back.

// FailureBucketTTL is how long the shared budget keeps a source after its
// last failure: twice a full burst's worth of intervals, and at least a
// minute. A source whose time lies further ahead (failures sent in
// parallel) is still held by every instance that has read it; only an
// instance started after its entry aged out would forgive it early.
func FailureBucketTTL(burst int, interval time.Duration) time.Duration {
	return max(2*time.Duration(burst)*interval, time.Minute)
}

// FailureBucket opens the bucket of the failed-authentication budget that
// every instance of the stream's ledger shares (tokenledger_auth_failures_
// <stream>), making it the first time: one key per source that failed
// lately (its address, hex), holding when its budget is full again; keys
// go FailureBucketTTL after their last failure, and past 262,144 keys the
// oldest go first.
func FailureBucket(ctx context.Context, js jetstream.JetStream, cfg shared.Config, burst int, interval time.Duration) (jetstream.KeyValue, error) {
	return shared.Open(ctx, js, cfg, shared.Bucket{
		Kind:        shared.KindAuthFailures,
		Description: "TokenLedger: failed-authentication budget per source address, shared by the ledger's instances",
		TTL:         FailureBucketTTL(burst, interval),
		MaxMsgs:     1 << 18,
		MaxValue:    512,
	})
}

// WithSharedFailureLimit makes the failed-authentication budget the one kv
// holds (see FailureBucket), shared with every ledger instance that uses
// the same bucket: failures on any of them count against one budget per
// source. Checking the budget still reads only this instance's memory.
// Stop the background work with Server.Close.
func WithSharedFailureLimit(kv jetstream.KeyValue) ServerOption {
	return func(s *Server) { s.failureKV = kv }
}

// Most sources' failures a queue holds while the bucket cannot be written;
// past it a source's failures are limited by this instance alone.
const maxQueuedSources = 1 << 16

type sharedFailures struct {
	kv       jetstream.KeyValue
	limiter  *failureLimiter
	interval int64
	now      func() time.Time
	log      *slog.Logger
	follow   *shared.Follower

	mu     sync.Mutex
	queued map[netip.Addr]queuedFailures
	// idle is closed while nothing is queued or being written, and
	// replaced by an open one when a failure is queued.
	idle    chan struct{}
	kick    chan struct{}
	failing bool // the last write failed (logged once per streak)

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// queuedFailures are a source's failures not yet in the bucket.
type queuedFailures struct {
	count int64
	first int64 // unix nanoseconds of the earliest
}

func startSharedFailures(kv jetstream.KeyValue, l *failureLimiter, now func() time.Time, log *slog.Logger) *sharedFailures {
	sf := &sharedFailures{kv: kv, limiter: l, interval: l.interval, now: now, log: log,
		queued: make(map[netip.Addr]queuedFailures), idle: make(chan struct{}), kick: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	close(sf.idle)
	sf.follow = shared.Follow(kv, sf.apply, log)
	go sf.run()
	return sf
}

// failureKey is a source's key in the bucket: its 16-byte form in hex (an
// IPv6 address's ':' may not be in a key), or "none" for the one budget of
// callers whose address could not be read.
func failureKey(src netip.Addr) string {
	if !src.IsValid() {
		return "none"
	}
	b := src.As16()
	return hex.EncodeToString(b[:])
}

func sourceOfKey(k string) (netip.Addr, bool) {
	if k == "none" {
		return netip.Addr{}, true
	}
	b, err := hex.DecodeString(k)
	if err != nil || len(b) != 16 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom16([16]byte(b)).Unmap(), true
}

// apply takes in another instance's (or this one's) write.
func (sf *sharedFailures) apply(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	src, ok := sourceOfKey(e.Key())
	full, err := strconv.ParseInt(string(e.Value()), 10, 64)
	if !ok || err != nil {
		return
	}
	sf.limiter.merge(src, full, sf.now())
}

// charge queues one failure of src, made at now, for the bucket. It never
// waits on the network.
func (sf *sharedFailures) charge(src netip.Addr, now time.Time) {
	t := now.UnixNano()
	sf.mu.Lock()
	q, ok := sf.queued[src]
	if ok || len(sf.queued) < maxQueuedSources {
		if !ok || t < q.first {
			q.first = t
		}
		q.count++
		sf.queued[src] = q
		sf.busyLocked()
	}
	sf.mu.Unlock()
	select {
	case sf.kick <- struct{}{}:
	default:
	}
}

// busyLocked notes that something is unwritten. Under sf.mu.
func (sf *sharedFailures) busyLocked() {
	select {
	case <-sf.idle:
		sf.idle = make(chan struct{})
	default:
	}
}

func (sf *sharedFailures) run() {
	defer close(sf.done)
	for {
		select {
		case <-sf.stop:
			// A last try, bounded: failures queued at shutdown should still
			// count on the other instances.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			sf.flush(ctx)
			cancel()
			return
		case <-sf.kick:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ok := sf.flush(ctx)
		cancel()
		if !ok {
			// NATS is away: try again in a second, or at the next failure.
			select {
			case <-sf.stop:
			case <-time.After(time.Second):
			}
			select {
			case sf.kick <- struct{}{}:
			default:
			}
		}
	}
}

// flush writes everything queued; what it could not write is queued again.
func (sf *sharedFailures) flush(ctx context.Context) bool {
	sf.mu.Lock()
	batch := sf.queued
	sf.queued = make(map[netip.Addr]queuedFailures)
	sf.mu.Unlock()
	var failed error
	for src, q := range batch {
		if failed != nil {
			sf.requeue(src, q)
			continue
		}
		if err := sf.write(ctx, src, q); err != nil {
			failed = err
			sf.requeue(src, q)
		}
	}
	sf.mu.Lock()
	defer sf.mu.Unlock()
	switch {
	case failed != nil && !sf.failing:
		sf.failing = true
		sf.log.Warn("shared failed-authentication budget: cannot write; this instance limits on its own until NATS answers", "bucket", sf.kv.Bucket(), "error", failed)
	case failed == nil && sf.failing:
		sf.failing = false
		sf.log.Info("shared failed-authentication budget: writing again", "bucket", sf.kv.Bucket())
	}
	if len(sf.queued) == 0 {
		select {
		case <-sf.idle:
		default:
			close(sf.idle)
		}
	}
	return failed == nil
}

func (sf *sharedFailures) requeue(src netip.Addr, q queuedFailures) {
	sf.mu.Lock()
	defer sf.mu.Unlock()
	if have, ok := sf.queued[src]; ok {
		q.count += have.count
		q.first = min(q.first, have.first)
	}
	sf.queued[src] = q
}

// write adds q's failures to src's time in the bucket: each one interval
// after the later of the bucket's time and the first failure, as the local
// limiter charges them.
func (sf *sharedFailures) write(ctx context.Context, src netip.Addr, q queuedFailures) error {
	key := failureKey(src)
	for {
		var (
			full int64
			rev  uint64
		)
		e, err := sf.kv.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			full, _ = strconv.ParseInt(string(e.Value()), 10, 64)
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return err
		}
		val := []byte(strconv.FormatInt(max(full, q.first)+q.count*sf.interval, 10))
		if rev == 0 {
			_, err = sf.kv.Create(ctx, key, val)
		} else {
			_, err = sf.kv.Update(ctx, key, val, rev)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return err
		}
		// Another instance wrote first: add ours to what it wrote.
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// written returns once everything queued when it was called is in the
// bucket (the queue has been idle since), or after wait.
func (sf *sharedFailures) written(ctx context.Context, wait time.Duration) {
	sf.mu.Lock()
	idle := sf.idle
	sf.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	case <-ctx.Done():
	}
}

// synced returns once this instance's queued failures are in the bucket
// and every failure the bucket held then is in this instance's limiter.
func (sf *sharedFailures) synced(ctx context.Context) error {
	sf.mu.Lock()
	idle := sf.idle
	sf.mu.Unlock()
	select {
	case <-idle:
	case <-ctx.Done():
		return ctx.Err()
	}
	return sf.follow.Synced(ctx)
}

func (sf *sharedFailures) close() {
	sf.stopOnce.Do(func() { close(sf.stop) })
	<-sf.done
	sf.follow.Stop()
}

// SyncFailureLimit returns once the failures this instance has counted are
// in the shared budget's bucket and every failure the bucket held then,
// from any instance, counts here; at once without WithSharedFailureLimit.
// Tests and operators use it to take the lag between instances out of a
// measurement.
func (s *Server) SyncFailureLimit(ctx context.Context) error {
	if s.shared == nil {
		return nil
	}
	return s.shared.synced(ctx)
}

// Close stops the server's background work: with WithSharedFailureLimit,
// it writes the failures still queued (for at most 2 seconds) and stops
// following the bucket. The server answers on with its own budget; call it
// once the HTTP server has stopped.
func (s *Server) Close() error {
	if s.shared != nil {
		s.shared.close()
	}
	return nil
}
