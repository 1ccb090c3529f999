package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/subscriber"
)

// Cache answers "is this secret an active token, and which?" for the
// service's own API, asking the ledger only on a miss. It keeps the ledger's
// answer under the SHA-256 of the secret, never the secret, and forgets a
// token's answers the moment the ledger's event stream says the token
// changed (Subscribe).
//
// Only active verdicts are kept. A refusal names no token that an event
// could later clear, a refused secret never becomes good again, and keeping
// refusals would let anyone fill the cache with made-up secrets.
type Cache struct {
	ledger *httpapi.Client
	// maxAge bounds how long an answer is kept even if no event comes: a
	// token that expires has no event, and is served at most this long
	// after its expiry.
	maxAge time.Duration
	// fillTimeout bounds a call to the ledger on a miss.
	fillTimeout time.Duration
	log         *slog.Logger
	// OnDrop, if set, is called after each token event the cache acted on,
	// from the subscriber's goroutine: tests and the benchmark wait on it.
	OnDrop func(Dropped)

	mu      sync.Mutex
	entries map[[sha256.Size]byte]entry
	byToken map[string]map[[sha256.Size]byte]struct{}
	// live: the subscription runs, so cached answers are kept current.
	// Without it nothing is served from or put into the cache.
	live bool
	// gen counts drops; a miss notes it before asking the ledger. lastDrop
	// is each token's gen at its last drop, and dropAll the gen of the last
	// clear: an answer the ledger gave before a drop of its token landed
	// is not cached, whichever of the two arrived first.
	gen      uint64
	lastDrop map[string]uint64
	dropAll  uint64
	inflight int

	// seen is the highest stream sequence of the events received. A miss
	// asks the ledger for an answer that takes it into account: a ledger
	// whose view lags (it may, by seconds) would otherwise still call a
	// secret active after the cache has dropped it for a rotation, and the
	// cache would keep that answer.
	seen atomic.Uint64

	hits, misses, dropped, events atomic.Uint64
}

type entry struct {
	v       httpapi.Verification
	expires time.Time
}

// Dropped is one token event the cache acted on.
type Dropped struct {
	TokenID   string
	EventType domain.EventType
	Sequence  uint64 // the event's stream sequence
	Entries   int    // cached answers forgotten (0: none was cached)
	At        time.Time
}

// Stats are the cache's counters since it started.
type Stats struct {
	Entries int    `json:"entries"`
	Hits    uint64 `json:"hits"`
	Misses  uint64 `json:"misses"`
	Dropped uint64 `json:"dropped"` // answers forgotten because of an event
	Events  uint64 `json:"events"`  // token events received
	Live    bool   `json:"live"`
}

// NewCache returns a cache asking ledger (with the service's own token) on a
// miss. It serves nothing from memory until SetLive(true).
func NewCache(ledger *httpapi.Client, maxAge time.Duration, log *slog.Logger) *Cache {
	return &Cache{
		ledger:      ledger,
		maxAge:      maxAge,
		fillTimeout: 10 * time.Second,
		log:         log,
		entries:     map[[sha256.Size]byte]entry{},
		byToken:     map[string]map[[sha256.Size]byte]struct{}{},
		lastDrop:    map[string]uint64{},
	}
}

// Verify answers for secret from the cache, or from the ledger on a miss.
// An error means the ledger could not be asked.
func (c *Cache) Verify(ctx context.Context, secret string) (httpapi.Verification, error) {
	key := sha256.Sum256([]byte(secret))
	now := time.Now()
	c.mu.Lock()
	if e, ok := c.entries[key]; ok {
		if c.live && now.Before(e.expires) {
			c.mu.Unlock()
			c.hits.Add(1)
			return e.v, nil
		}
		c.forget(key, e.v.ID)
	}
	started := c.gen
	c.inflight++
	c.mu.Unlock()
	c.misses.Add(1)

	ctx, cancel := context.WithTimeout(ctx, c.fillTimeout)
	v, err := c.ledger.VerifyAfter(ctx, secret, c.seen.Load())
	cancel()

	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight--
	if err == nil && v.Valid && c.live && c.lastDrop[v.ID] <= started && c.dropAll <= started {
		c.put(key, v, now)
	}
	if c.inflight == 0 {
		// Drop marks only matter to misses that were asking the ledger
		// when the drop came.
		clear(c.lastDrop)
	}
	return v, err
}

func (c *Cache) put(key [sha256.Size]byte, v httpapi.Verification, asked time.Time) {
	c.entries[key] = entry{v: v, expires: asked.Add(c.maxAge)}
	keys := c.byToken[v.ID]
	if keys == nil {
		keys = map[[sha256.Size]byte]struct{}{}
		c.byToken[v.ID] = keys
	}
	keys[key] = struct{}{}
}

func (c *Cache) forget(key [sha256.Size]byte, id string) {
	delete(c.entries, key)
	if keys := c.byToken[id]; keys != nil {
		delete(keys, key)
		if len(keys) == 0 {
			delete(c.byToken, id)
		}
	}
}

// Drop forgets every answer about token id.
func (c *Cache) Drop(id string, typ domain.EventType, seq uint64) {
	c.mu.Lock()
	keys := c.byToken[id]
	for k := range keys {
		delete(c.entries, k)
	}
	delete(c.byToken, id)
	c.gen++
	if c.inflight > 0 {
		c.lastDrop[id] = c.gen
	}
	c.mu.Unlock()

	d := Dropped{TokenID: id, EventType: typ, Sequence: seq, Entries: len(keys), At: time.Now()}
	c.events.Add(1)
	c.dropped.Add(uint64(d.Entries))
	if d.Entries > 0 {
		c.log.Info("dropped cached token", "token_id", id, "event", typ, "sequence", seq, "entries", d.Entries)
	}
	if c.OnDrop != nil {
		c.OnDrop(d)
	}
}

// SetLive says whether the subscription is running. Going down forgets
// everything: events missed meanwhile would leave answers stale.
func (c *Cache) SetLive(live bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live == live {
		return
	}
	c.live = live
	if !live {
		clear(c.entries)
		clear(c.byToken)
		c.gen++
		c.dropAll = c.gen
	}
	c.log.Info("token cache", "live", live)
}

// Stats reads the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	n, live := len(c.entries), c.live
	c.mu.Unlock()
	return Stats{Entries: n, Hits: c.hits.Load(), Misses: c.misses.Load(), Dropped: c.dropped.Load(), Events: c.events.Load(), Live: live}
}

// Subscribe has s drop a token's answers on every event that changes what a
// verify would say about it: a rotation or deletion ends the old secret, a
// reuse may mean it leaked, and an update, assignment or unassignment
// changes the role or workspace roles the service authorizes by. Only
// TokenCreated is left out: a new token has nothing cached.
func (c *Cache) Subscribe(s *subscriber.Subscriber) {
	subscriber.On(s, func(_ context.Context, e subscriber.Event, _ domain.RotatedData) error { return c.dropFor(e) })
	subscriber.On(s, func(_ context.Context, e subscriber.Event, _ domain.DeletedData) error { return c.dropFor(e) })
	subscriber.On(s, func(_ context.Context, e subscriber.Event, _ domain.ReuseDetectedData) error { return c.dropFor(e) })
	subscriber.On(s, func(_ context.Context, e subscriber.Event, _ domain.UpdatedData) error { return c.dropFor(e) })
	subscriber.On(s, func(_ context.Context, e subscriber.Event, _ domain.AssignedData) error { return c.dropFor(e) })
	subscriber.On(s, func(_ context.Context, e subscriber.Event, _ domain.UnassignedData) error { return c.dropFor(e) })
}

func (c *Cache) dropFor(e subscriber.Event) error {
	for {
		if old := c.seen.Load(); e.Sequence <= old || c.seen.CompareAndSwap(old, e.Sequence) {
			break
		}
	}
	c.Drop(e.TokenID, e.Type, e.Sequence)
	return nil
}

type verifiedKey struct{}

// Verified is the ledger's answer for the request's token, set by Require.
func Verified(ctx context.Context) (httpapi.Verification, bool) {
	v, ok := ctx.Value(verifiedKey{}).(httpapi.Verification)
	return v, ok
}

// Require lets through only requests with `Authorization: Bearer <secret>`
// of an active token, with the ledger's answer in the context (Verified).
func (c *Cache) Require(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secret, ok := bearer(r.Header.Get("Authorization"))
		if !ok {
			refuse(w, "missing bearer token")
			return
		}
		v, err := c.Verify(r.Context(), secret)
		var prob *httpapi.Problem
		switch {
		case errors.As(err, &prob) && prob.Status == http.StatusUnauthorized:
			// The ledger refused the service's own token: a setup
			// problem, not the caller's.
			c.log.Error("the ledger refuses this service's LEDGER_API_TOKEN", "error", err)
			http.Error(w, "token check unavailable", http.StatusServiceUnavailable)
		case err != nil:
			c.log.Warn("ledger verify failed", "error", err)
			http.Error(w, "token check unavailable", http.StatusServiceUnavailable)
		case !v.Valid:
			refuse(w, "token not active")
		default:
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), verifiedKey{}, v)))
		}
	})
}

func bearer(h string) (string, bool) {
	scheme, secret, ok := strings.Cut(h, " ")
	secret = strings.TrimSpace(secret)
	if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" || len(secret) > 1024 {
		return "", false
	}
	return secret, true
}

func refuse(w http.ResponseWriter, why string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="tokencache"`)
	http.Error(w, why, http.StatusUnauthorized)
}
