package subscriber_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/natsaccess/natsaccesstest"
	"github.com/tokenledger/tokenledger/subscriber"
)

// wait bounds every wait on a channel in these tests.
const wait = 30 * time.Second

// harness is a ledger as `ledger serve` runs it (natsaccesstest): an
// embedded server with the ledger's accounts, the ledger writing as itself,
// and services (the subscribers) logging in with their TokenLedger tokens to
// read the services' mirror of the stream.
type harness struct {
	l       *natsaccesstest.Ledger
	url     string
	store   *eventstore.Store
	ledger  *app.Ledger
	owner   app.Caller
	ledgerJ jetstream.JetStream // the ledger's own connection, for raw writes
	// secret is an ORGANIZATION_MEMBER token of acme (stream sequence 2):
	// the token subscribers use unless a test gives another.
	secret  string
	tokenID string
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	l := natsaccesstest.Start(t, natsaccesstest.Options{})
	tok, secret := l.Token(t, domain.CreateToken{Scope: "organization", Name: "service", Role: string(domain.RoleOrganizationMember)})
	return &harness{l: l, url: l.URL, store: l.Store, ledger: l.App, owner: l.Owner, ledgerJ: l.LedgerJS, secret: secret, tokenID: tok.ID()}
}

// token makes a token of acme for a service and returns its id and secret.
func (h *harness) token(t testing.TB, cmd domain.CreateToken) (string, string) {
	t.Helper()
	tok, secret := h.l.Token(t, cmd)
	return tok.ID(), secret
}

// otherOrgToken writes an ORGANIZATION_MEMBER token of another organization
// straight through the event store (the ledger makes a second organization
// no other way) and returns its secret once the view has it, so that the
// ledger lets it in.
func (h *harness) otherOrgToken(t testing.TB, org string) string {
	t.Helper()
	_, e, secret, err := domain.Create(domain.CreateToken{OrganizationID: org, Scope: "organization", Name: "service", Role: string(domain.RoleOrganizationMember)},
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
	if err := h.l.View.WaitFor(ctx, a.Sequence); err != nil {
		t.Fatal(err)
	}
	return secret.Reveal()
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

// base is how many events the stream holds when a test begins: the
// bootstrap owner's creation and the harness token's.
const base = 2

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

// consumerInfo reads the state of a durable of the harness's token, as the
// service would.
func (h *harness) consumerInfo(t testing.TB, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	return h.consumerOf(t, h.secret, durable)
}

// consumerOf finds, among the consumer names of the token whose secret this
// is, the one that holds durable, and reads its state over a connection of
// that token.
func (h *harness) consumerOf(t testing.TB, secret, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	nc, err := h.l.Service(t, secret)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	info, err := findDurable(ctx, nc, durable)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func findDurable(ctx context.Context, nc *nats.Conn, durable string) (*jetstream.ConsumerInfo, error) {
	id, err := natsaccess.WhoAmI(ctx, nc)
	if err != nil {
		return nil, err
	}
	js, _ := natsaccess.JetStream(nc)
	for _, name := range id.Consumers {
		c, err := js.Consumer(ctx, "TOKENS", name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if c.CachedInfo().Config.Metadata[natsaccess.MetadataDurable] == durable {
			return c.Info(ctx)
		}
	}
	return nil, fmt.Errorf("no consumer of token %s holds durable %s", id.TokenID, durable)
}

// waitAcked waits until the durable has acked every event up to seq.
func (h *harness) waitAcked(t testing.TB, secret, durable string, seq uint64) {
	t.Helper()
	nc, err := h.l.Service(t, secret)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		info, err := findDurable(ctx, nc, durable)
		if err != nil {
			t.Fatal(err)
		}
		if info.AckFloor.Stream >= seq && info.NumAckPending == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("durable %s: ack floor %d, %d pending acks after %v; want everything up to %d acked", durable, info.AckFloor.Stream, info.NumAckPending, wait, seq)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// watched is a service's connection whose refusals a test can wait for: the
// server answers a forbidden request with an asynchronous permissions
// violation, and the request itself with silence.
type watched struct {
	js   jetstream.JetStream
	errs chan error
}

func connectWatched(t testing.TB, url, secret string) *watched {
	t.Helper()
	w := &watched{errs: make(chan error, 64)}
	nc, err := nats.Connect(url, append(natsaccess.Options(secret), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case w.errs <- err:
		default:
		}
	}))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	w.js, _ = natsaccess.JetStream(nc)
	return w
}

// refused runs do, which must be refused by the server's permissions for
// subject, and fails the test unless that violation arrives and do fails.
func (w *watched) refused(t testing.TB, subject string, do func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- do(ctx) }()
	var result error
	finished := false
	for {
		select {
		case err := <-w.errs:
			if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), subject) {
				continue
			}
			cancel() // the request itself would wait for its timeout
			if !finished {
				result = <-done
			}
			if result == nil {
				t.Fatalf("%s: the server refused it, yet it succeeded", subject)
			}
			return
		case err := <-done:
			if err == nil {
				t.Fatalf("%s: allowed", subject)
			}
			// The violation may still be on its way.
			result, finished, done = err, true, nil
		case <-ctx.Done():
			t.Fatalf("%s: no permissions violation within %v", subject, wait)
		}
	}
}

// mirrored waits until the services' mirror holds stream sequence seq:
// what "new" means to a durable created now is new to the mirror, which
// follows the ledger's stream within milliseconds.
func (h *harness) mirrored(t testing.TB, seq uint64) {
	t.Helper()
	js, err := jetstream.NewWithAPIPrefix(h.l.Conns.Ledger, natsaccess.ServicesAPIPrefix)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		s, err := js.Stream(ctx, "TOKENS")
		if err != nil {
			t.Fatalf("the services' mirror: %v", err)
		}
		if s.CachedInfo().State.LastSeq >= seq {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the services' mirror did not reach sequence %d within %v", seq, wait)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// running is a subscriber whose Run was started.
type running struct {
	*subscriber.Subscriber
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// start creates a subscriber on the harness's server (with the harness's
// token unless cfg has one), lets register add handlers, runs it and waits
// until it consumes. A new durable starting at new events starts after
// everything stored so far. It is stopped when the test ends, if not before.
func (h *harness) start(t testing.TB, cfg subscriber.Config, register func(*subscriber.Subscriber)) *running {
	t.Helper()
	cfg.URL = h.url
	if cfg.Token == "" {
		cfg.Token = h.secret
	}
	h.mirrored(t, h.last(t))
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
