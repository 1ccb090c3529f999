package subscriber_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/projections"
	"github.com/tokenledger/tokenledger/subscriber"
)

// wait bounds every wait on a channel in these tests.
const wait = 30 * time.Second

const ledgerPassword = "s3cret-for-test"

// harness is a ledger as `ledger serve` runs it: an embedded server locked
// down with a ledger password, the ledger writing as user "ledger", and
// services (the subscribers) connecting anonymously as the read-only
// "service" user.
type harness struct {
	ns      *server.Server
	url     string
	store   *eventstore.Store
	ledger  *app.Ledger
	owner   app.Caller
	ledgerJ jetstream.JetStream // the ledger's own connection, for raw writes
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	ns, err := eventstore.StartEmbedded(eventstore.EmbeddedConfig{StoreDir: t.TempDir(), Listen: "127.0.0.1:0", LedgerPassword: ledgerPassword})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(eventstore.LedgerUser, ledgerPassword), nats.CustomInboxPrefix(eventstore.LedgerInboxPrefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	store, err := eventstore.Open(ctx, js, eventstore.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	view := projections.NewTokens()
	l := app.New(store, view)
	t.Cleanup(app.Feed(store, view, nil))
	owner, _, err := l.Bootstrap(ctx, "acme", nil) // stream sequence 1
	if err != nil || owner == nil {
		t.Fatalf("bootstrap: %v", err)
	}
	return &harness{ns: ns, url: ns.ClientURL(), store: store, ledger: l, ledgerJ: js,
		owner: app.Caller{Token: owner, RequestID: "req-1", SourceIP: "127.0.0.1", UserAgent: "subscriber-test"}}
}

// lifecycle runs a token through the ledger: created, renamed, rotated
// twice, deleted (versions 1-5). It returns the token id.
func (h *harness) lifecycle(name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	res, err := h.ledger.CreateToken(ctx, h.owner, domain.CreateToken{Scope: "organization", Name: name, Role: string(domain.RoleOrganizationMember)}, "")
	if err != nil {
		return "", fmt.Errorf("create %s: %w", name, err)
	}
	id := res.Token.ID()
	renamed := name + "-renamed"
	if _, err := h.ledger.UpdateToken(ctx, h.owner, id, domain.UpdateToken{Name: &renamed}, ""); err != nil {
		return id, fmt.Errorf("update %s: %w", name, err)
	}
	for range 2 {
		if _, err := h.ledger.RotateToken(ctx, h.owner, id, ""); err != nil {
			return id, fmt.Errorf("rotate %s: %w", name, err)
		}
	}
	if _, err := h.ledger.DeleteToken(ctx, h.owner, id, ""); err != nil {
		return id, fmt.Errorf("delete %s: %w", name, err)
	}
	return id, nil
}

const eventsPerLifecycle = 5

// lifecycles runs n token lifecycles, `parallel` at a time, so that the
// tokens' events interleave in the stream.
func (h *harness) lifecycles(t testing.TB, prefix string, n, parallel int) []string {
	t.Helper()
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ids[i], errs[i] = h.lifecycle(fmt.Sprintf("%s-%d", prefix, i))
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// appendCreated writes a TokenCreated for another organization straight
// through the event store, as the ledger of that organization would.
func (h *harness) appendCreated(t testing.TB, org string) (domain.Event, uint64) {
	t.Helper()
	_, e, _, err := domain.Create(domain.CreateToken{OrganizationID: org, Scope: "organization", Name: "ci", Role: string(domain.RoleOrganizationMember)},
		domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	a, err := h.store.Append(ctx, e, 0)
	if err != nil {
		t.Fatal(err)
	}
	return e, a.Sequence
}

func (h *harness) last(t testing.TB) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	n, err := h.store.LastSequence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// consumerInfo reads a durable's state as a service would.
func (h *harness) consumerInfo(t testing.TB, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	nc, err := nats.Connect(h.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := js.Consumer(ctx, "TOKENS", durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// running is a subscriber whose Run was started.
type running struct {
	*subscriber.Subscriber
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// start creates a subscriber on the harness's server (as the anonymous
// service user), lets register add handlers, runs it and waits until it
// consumes. It is stopped when the test ends, if not before.
func (h *harness) start(t testing.TB, cfg subscriber.Config, register func(*subscriber.Subscriber)) *running {
	t.Helper()
	cfg.URL = h.url
	s, err := subscriber.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	register(s)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Subscriber: s, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	select {
	case <-s.Running():
	case err := <-r.done:
		t.Fatalf("subscriber %s did not start: %v", cfg.Durable, err)
	case <-time.After(wait):
		t.Fatalf("subscriber %s did not start within %v", cfg.Durable, wait)
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("subscriber %s: Run: %v", cfg.Durable, err)
		}
	})
	return r
}

// stop cancels Run's context and returns what Run returned.
func (r *running) stop() error {
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.done:
		case <-time.After(wait):
			r.err = fmt.Errorf("Run did not return within %v of its context ending", wait)
		}
	})
	return r.err
}

// collector records the events a handler gets.
type collector struct {
	mu     sync.Mutex
	events []subscriber.Event
	notify chan struct{}
}

func newCollector() *collector { return &collector{notify: make(chan struct{}, 1)} }

func (c *collector) add(e subscriber.Event) {
	c.mu.Lock()
	c.events = append(c.events, e)
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *collector) handle(_ context.Context, e subscriber.Event) error {
	c.add(e)
	return nil
}

func (c *collector) snapshot() []subscriber.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]subscriber.Event(nil), c.events...)
}

// waitFor waits until an event at stream sequence seq or later has come,
// and returns everything so far.
func (c *collector) waitFor(t testing.TB, seq uint64) []subscriber.Event {
	t.Helper()
	deadline := time.After(wait)
	for {
		n, last := c.tail()
		if n > 0 && last >= seq {
			return c.snapshot()
		}
		select {
		case <-c.notify:
		case <-deadline:
			t.Fatalf("waited %v for sequence %d; got %d events, the last at %d", wait, seq, n, last)
		}
	}
}

// tail is how many events came and the sequence of the last.
func (c *collector) tail() (int, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events) == 0 {
		return 0, 0
	}
	return len(c.events), c.events[len(c.events)-1].Sequence
}

func sequences(es []subscriber.Event) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Sequence
	}
	return out
}

// checkContiguous checks that es are exactly the stream sequences from..to,
// in order, each once.
func checkContiguous(t testing.TB, who string, es []subscriber.Event, from, to uint64) {
	t.Helper()
	if uint64(len(es)) != to-from+1 {
		t.Fatalf("%s: %d events, want %d (sequences %d..%d); got %v", who, len(es), to-from+1, from, to, sequences(es))
	}
	for i, e := range es {
		if want := from + uint64(i); e.Sequence != want {
			t.Fatalf("%s: event %d has sequence %d, want %d; got %v", who, i, e.Sequence, want, sequences(es))
		}
	}
}

// checkOrderPerToken checks that each token's events come with versions 1,
// 2, 3, ... and returns how many tokens there were.
func checkOrderPerToken(t testing.TB, who string, es []subscriber.Event) int {
	t.Helper()
	next := map[string]uint64{}
	for _, e := range es {
		want := next[e.TokenID] + 1
		if e.Version != want {
			t.Fatalf("%s: token %s: got version %d (%s at sequence %d), want %d", who, e.TokenID, e.Version, e.Type, e.Sequence, want)
		}
		next[e.TokenID] = want
	}
	return len(next)
}
