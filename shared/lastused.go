package shared

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/projections"
)

// A token's last use is no event (uses are far too many to record): each
// view keeps it in memory, moved at most every projections.LastUsedEvery.
// Behind a load balancer each instance would see only the uses it served.
// LastUsed passes each stamp a view moves to the bucket (so at most one
// write per token and instance every LastUsedEvery, off the request's
// path), and takes every stamp in the bucket into the view, the later one
// winning. Every instance then shows the same last use, to the second,
// at most LastUsedEvery behind the true last use (as one instance always
// was) plus the time a write takes to reach the others (milliseconds).

// LastUsedBucket opens the bucket of the stream's tokens' last uses
// (tokenledger_last_used_<stream>), making it the first time: one key per
// token ever used, holding the Unix second of its last use, kept for good
// (a token's last use outlives any instance's snapshot).
func LastUsedBucket(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.KeyValue, error) {
	return Open(ctx, js, cfg, Bucket{
		Kind:        KindLastUsed,
		Description: "TokenLedger: each token's last use (Unix seconds), shared by the ledger's instances",
		MaxValue:    1 << 10,
	})
}

// Most stamps waiting to be written, and most stamps of tokens a view does
// not hold yet, that LastUsed keeps; past them, a stamp waits for the
// token's next use.
const (
	maxQueuedUses = 1 << 16
	maxEarlyUses  = 1 << 16
	// earlyFor is how long a stamp for a token the view does not know is
	// kept: its creation reaches the view within milliseconds, or the
	// token is of no stream this view follows.
	earlyFor = 5 * time.Minute
)

type useKey struct{ org, id string }

// LastUsed keeps a view's last uses in step with a bucket's (see
// ShareLastUsed).
type LastUsed struct {
	kv     jetstream.KeyValue
	view   *projections.Tokens
	log    *slog.Logger
	follow *Follower

	mu      sync.Mutex
	queued  map[useKey]int64    // stamps to write, Unix seconds
	early   map[useKey]earlyUse // stamps read for tokens the view does not hold yet
	idle    chan struct{}       // closed while nothing is queued or being written
	kick    chan struct{}
	failing bool

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

type earlyUse struct {
	at   int64
	seen time.Time
}

// ShareLastUsed makes view's last uses the ones of every instance whose
// view shares kv (see LastUsedBucket): from now on each stamp view moves is
// written to kv, and each stamp in kv is taken into view. Start it once the
// view has caught up with the stream; Close stops it.
func ShareLastUsed(kv jetstream.KeyValue, view *projections.Tokens, log *slog.Logger) *LastUsed {
	u := &LastUsed{kv: kv, view: view, log: log,
		queued: make(map[useKey]int64), early: make(map[useKey]earlyUse),
		idle: make(chan struct{}), kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	close(u.idle)
	view.OnUse(u.used)
	u.follow = Follow(kv, u.apply, log)
	go u.run()
	return u
}

// useKeyOf is a token's key in the bucket: its organization and id, each
// base64url (a key takes only letters, digits and "-/_=.").
func useKeyOf(k useKey) string {
	return base64.RawURLEncoding.EncodeToString([]byte(k.org)) + "." + base64.RawURLEncoding.EncodeToString([]byte(k.id))
}

func parseUseKey(s string) (useKey, bool) {
	o, i, ok := strings.Cut(s, ".")
	if !ok {
		return useKey{}, false
	}
	org, err1 := base64.RawURLEncoding.DecodeString(o)
	id, err2 := base64.RawURLEncoding.DecodeString(i)
	if err1 != nil || err2 != nil || len(org) == 0 || len(id) == 0 {
		return useKey{}, false
	}
	return useKey{string(org), string(id)}, true
}

// used is the view's OnUse: it queues the stamp and never waits.
func (u *LastUsed) used(org, id string, at time.Time) {
	k, s := useKey{org, id}, at.Unix()
	u.mu.Lock()
	if have, ok := u.queued[k]; ok || len(u.queued) < maxQueuedUses {
		u.queued[k] = max(have, s)
		select {
		case <-u.idle:
			u.idle = make(chan struct{})
		default:
		}
	}
	u.mu.Unlock()
	select {
	case u.kick <- struct{}{}:
	default:
	}
}

// apply takes in a stamp from the bucket.
func (u *LastUsed) apply(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	k, ok := parseUseKey(e.Key())
	at, err := strconv.ParseInt(string(e.Value()), 10, 64)
	if !ok || err != nil || at <= 0 {
		return
	}
	if u.view.MergeLastUsed(k.org, k.id, time.Unix(at, 0)) {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if have, ok := u.early[k]; ok || len(u.early) < maxEarlyUses {
		u.early[k] = earlyUse{at: max(have.at, at), seen: time.Now()}
	}
}

func (u *LastUsed) run() {
	defer close(u.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-u.stop:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			u.flush(ctx)
			cancel()
			return
		case <-tick.C:
			u.retryEarly()
			u.mu.Lock()
			pending := len(u.queued) > 0
			u.mu.Unlock()
			if !pending {
				continue
			}
		case <-u.kick:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		u.flush(ctx)
		cancel()
	}
}

// retryEarly takes in the stamps of tokens the view has come to hold.
func (u *LastUsed) retryEarly() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k, e := range u.early {
		if u.view.MergeLastUsed(k.org, k.id, time.Unix(e.at, 0)) || time.Since(e.seen) > earlyFor {
			delete(u.early, k)
		}
	}
}

// flush writes every queued stamp; what it could not write stays queued
// for the next tick.
func (u *LastUsed) flush(ctx context.Context) {
	u.mu.Lock()
	batch := u.queued
	u.queued = make(map[useKey]int64)
	u.mu.Unlock()
	var failed error
	for k, at := range batch {
		if failed == nil {
			failed = u.write(ctx, k, at)
		}
		if failed != nil {
			u.mu.Lock()
			u.queued[k] = max(u.queued[k], at)
			u.mu.Unlock()
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case failed != nil && !u.failing:
		u.failing = true
		u.log.Warn("shared last use: cannot write; other instances see this one's uses once NATS answers", "bucket", u.kv.Bucket(), "error", failed)
	case failed == nil && u.failing:
		u.failing = false
		u.log.Info("shared last use: writing again", "bucket", u.kv.Bucket())
	}
	if len(u.queued) == 0 {
		select {
		case <-u.idle:
		default:
			close(u.idle)
		}
	}
}

// write makes the bucket's stamp for k at least at, never moving it back
// (two instances' writes may cross).
func (u *LastUsed) write(ctx context.Context, k useKey, at int64) error {
	key := useKeyOf(k)
	val := []byte(strconv.FormatInt(at, 10))
	for {
		e, err := u.kv.Get(ctx, key)
		switch {
		case err == nil:
			if have, _ := strconv.ParseInt(string(e.Value()), 10, 64); have >= at {
				return nil
			}
			_, err = u.kv.Update(ctx, key, val, e.Revision())
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = u.kv.Create(ctx, key, val)
		}
		if err == nil || (!errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch)) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// Synced returns once the stamps this instance has moved are in the bucket
// and every stamp the bucket held then is in this instance's view.
func (u *LastUsed) Synced(ctx context.Context) error {
	u.mu.Lock()
	idle := u.idle
	u.mu.Unlock()
	select {
	case <-idle:
	case <-ctx.Done():
		return ctx.Err()
	}
	return u.follow.Synced(ctx)
}

// Close stops passing stamps on (writing those still queued, for at most
// 2 seconds) and taking them in. The view keeps its last uses and moves
// them on its own again.
func (u *LastUsed) Close() {
	u.view.OnUse(nil)
	u.stopOnce.Do(func() { close(u.stop) })
	<-u.done
	u.follow.Stop()
}
