package app_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/projections"
)

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newLedger(t *testing.T, clk *clock, opts ...app.Option) (*app.Ledger, *eventstore.Store, app.Caller) {
	t.Helper()
	store, _, _ := eventstoretest.MustStore(t)
	view := projections.NewTokens()
	l := app.New(store, view, append([]app.Option{app.WithClock(clk.Now)}, opts...)...)
	t.Cleanup(app.Feed(store, view, nil))
	owner, _, err := l.Bootstrap(context.Background(), "acme", nil)
	if err != nil || owner == nil {
		t.Fatalf("bootstrap: %v", err)
	}
	return l, store, app.Caller{Token: owner, RequestID: "req-1", SourceIP: "127.0.0.1", UserAgent: "test"}
}

func TestATokenExpiresByTheClockWithoutAnEvent(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk)
	ctx := context.Background()
	days := 1
	res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "organization", Name: "short-lived", Role: "ORGANIZATION_OWNER", ExpirationDays: &days}, "")
	if err != nil {
		t.Fatal(err)
	}
	secret := res.Secret.Reveal()
	if _, err := l.Authenticate(secret, app.Source{}); err != nil {
		t.Fatalf("fresh token cannot authenticate: %v", err)
	}
	before, _ := store.LastSequence(ctx)

	clk.Advance(24 * time.Hour)
	if _, err := l.Authenticate(secret, app.Source{}); !errors.Is(err, app.ErrUnauthenticated) {
		t.Fatalf("expired token authenticates: %v", err)
	}
	v, err := l.Verify(ctx, owner, secret)
	if err != nil || v.Outcome != projections.OutcomeExpired {
		t.Fatalf("verify expired = %v, %v", v.Outcome, err)
	}
	tok, _, err := l.GetToken(ctx, owner, res.Token.ID(), 0)
	if err != nil || tok.Status(clk.Now()) != domain.StatusExpired {
		t.Fatalf("status after expiry = %v, %v", tok.Status(clk.Now()), err)
	}
	if after, _ := store.LastSequence(ctx); after != before {
		t.Fatalf("expiry wrote events: sequence %d -> %d", before, after)
	}

	// Rotating renews it for its original number of days from now.
	rot, err := l.RotateToken(ctx, owner, res.Token.ID(), "")
	if err != nil {
		t.Fatal(err)
	}
	if want := clk.Now().Add(24 * time.Hour); !rot.Token.ExpiresAt().Equal(want) {
		t.Fatalf("renewed expiry %v, want %v", rot.Token.ExpiresAt(), want)
	}
	if _, err := l.Authenticate(rot.Secret.Reveal(), app.Source{}); err != nil {
		t.Fatalf("rotated token cannot authenticate: %v", err)
	}
}

func TestEventsRecordWhoActedWhenAndThroughWhichRequest(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk)
	ctx := context.Background()
	res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "w"}, "")
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	if _, err := l.DeleteToken(ctx, owner, res.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}
	hist, err := store.Load(ctx, "acme", res.Token.ID())
	if err != nil || len(hist) != 2 {
		t.Fatalf("history = %d events, %v", len(hist), err)
	}
	for i, rec := range hist {
		e := rec.Event
		if e.Actor.TokenID != owner.Token.ID() || e.Actor.RequestID != "req-1" || e.Actor.SourceIP != "127.0.0.1" || e.Actor.UserAgent != "test" {
			t.Errorf("event %d actor = %+v", i, e.Actor)
		}
	}
	if !hist[1].Event.OccurredAt.Equal(clk.Now()) {
		t.Errorf("delete occurred at %v, want the clock's %v", hist[1].Event.OccurredAt, clk.Now())
	}
	// The bootstrap token's event names the system as its actor.
	boot, _ := store.Load(ctx, "acme", owner.Token.ID())
	if boot[0].Event.Actor.TokenID != domain.SystemActor {
		t.Errorf("bootstrap actor = %q", boot[0].Event.Actor.TokenID)
	}
}

func TestBootstrapHappensOnceEvenWhenLedgersStartTogether(t *testing.T) {
	store, _, _ := eventstoretest.MustStore(t)
	const n = 5
	var wg sync.WaitGroup
	var mu sync.Mutex
	made, saved := 0, 0
	start := make(chan struct{})
	for range n {
		view := projections.NewTokens()
		l := app.New(store, view)
		t.Cleanup(app.Feed(store, view, nil))
		wg.Go(func() {
			<-start
			tok, secret, err := l.Bootstrap(context.Background(), "acme", func(domain.Secret) error {
				mu.Lock()
				saved++
				mu.Unlock()
				return nil
			})
			if err != nil {
				t.Errorf("bootstrap: %v", err)
			}
			if tok != nil {
				mu.Lock()
				made++
				mu.Unlock()
				if secret.IsZero() {
					t.Error("bootstrap made a token but returned no secret")
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if last, _ := store.LastSequence(context.Background()); made != 1 || last != 1 {
		t.Fatalf("%d ledgers made a bootstrap token, stream holds %d events; want 1 and 1", made, last)
	}
	if saved < 1 {
		t.Fatal("the secret was not saved before the token was appended")
	}
}

func TestBootstrapWritesNothingWhenItsSecretCannotBeSaved(t *testing.T) {
	store, _, _ := eventstoretest.MustStore(t)
	l := app.New(store, projections.NewTokens())
	_, _, err := l.Bootstrap(context.Background(), "acme", func(domain.Secret) error { return errors.New("disk full") })
	if err == nil {
		t.Fatal("bootstrap succeeded without saving its secret")
	}
	if last, _ := store.LastSequence(context.Background()); last != 0 {
		t.Fatalf("a bootstrap token whose secret was lost was written (sequence %d)", last)
	}
}

func TestAViewRebuiltFromTheStreamEqualsTheLiveOne(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk)
	ctx := context.Background()
	must := func(_ app.Result, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	days := 30
	for i := range 5 {
		res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "organization", Name: "t", ExpirationDays: &days}, "")
		if err != nil {
			t.Fatal(err)
		}
		id := res.Token.ID()
		clk.Advance(time.Minute)
		must(l.AssignToken(ctx, owner, id, "ws1", "WORKSPACE_OWNER", ""))
		must(l.UpdateToken(ctx, owner, id, domain.UpdateToken{Name: ptr("renamed"), Role: ptr("ORGANIZATION_BILLING_ADMIN")}, ""))
		if i%2 == 0 {
			clk.Advance(time.Minute)
			must(l.RotateToken(ctx, owner, id, ""))
		}
		if i == 3 {
			must(l.DeleteToken(ctx, owner, id, ""))
		}
	}
	live, _, err := l.ListTokens(ctx, owner, 0)
	if err != nil {
		t.Fatal(err)
	}

	rebuilt := projections.NewTokens()
	t.Cleanup(app.Feed(store, rebuilt, nil))
	last, _ := store.LastSequence(ctx)
	if err := rebuilt.WaitFor(ctx, last); err != nil {
		t.Fatal(err)
	}
	again := rebuilt.List("acme")
	if len(again) != len(live) || len(live) != 6 {
		t.Fatalf("rebuilt %d tokens, live %d, want 6", len(again), len(live))
	}
	for i := range live {
		if a, b := state(live[i]), state(again[i]); a != b {
			t.Fatalf("token differs after rebuild:\nlive    %s\nrebuilt %s", a, b)
		}
	}
}

// state renders everything the view knows about a token.
func state(l projections.Listed) string {
	t := l.Token
	return fmt.Sprintf("%d %s %s %s %s %s %q %q %s %v %d %v %v %v %v %v %d %s %s",
		l.Sequence, t.ID(), t.OrganizationID(), t.Scope(), t.WorkspaceID(), t.DeploymentID(), t.Name(), t.Description(), t.Role(),
		t.WorkspaceRoles(), t.ExpirationDays(), t.ExpiresAt(), t.CreatedAt(), t.UpdatedAt(), t.RotatedAt(), t.DeletedAt(),
		t.Version(), t.SecretHash(), t.Fingerprint())
}

func ptr(s string) *string { return &s }

func TestAMessageThatIsNotAnEventIsSkippedAndItsTokenStaysManageable(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	store, js, _ := eventstoretest.MustStore(t)
	view := projections.NewTokens()
	l := app.New(store, view, app.WithClock(clk.Now))
	var reports []error
	var mu sync.Mutex
	t.Cleanup(app.Feed(store, view, func(err error) { mu.Lock(); reports = append(reports, err); mu.Unlock() }))
	owner, _, err := l.Bootstrap(context.Background(), "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := app.Caller{Token: owner}
	res, err := l.CreateToken(context.Background(), c, domain.CreateToken{Scope: "organization", Name: "victim"}, "")
	if err != nil {
		t.Fatal(err)
	}
	// Someone with write access to NATS, bypassing the ledger, stores garbage
	// and a forged event on the token's subjects.
	if _, err := js.Publish(context.Background(), "ledger.tokens.acme."+res.Token.ID()+".TokenDeleted", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	other, _ := l.CreateToken(context.Background(), c, domain.CreateToken{Scope: "organization", Name: "other"}, "")
	forged, _ := other.Token.Delete(domain.Env{Now: clk.Now(), Rand: rand.Reader})
	body, _ := json.Marshal(forged)
	if _, err := js.Publish(context.Background(), "ledger.tokens.acme."+res.Token.ID()+".TokenDeleted", body); err != nil {
		t.Fatal(err)
	}
	if err := l.CatchUp(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The view moves past a refused message before Run reports it.
	n := 0
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n = len(reports)
		mu.Unlock()
		if n >= 2 {
			break
		}
	}
	if n != 2 || view.Rejected() != 2 {
		t.Fatalf("%d reports, %d rejected; want 2 and 2", n, view.Rejected())
	}
	// The view kept following, the token does not verify, and it can still be
	// rotated or deleted by its owner.
	if v, _ := l.Verify(context.Background(), c, res.Secret.Reveal()); v.Outcome != projections.OutcomeQuarantined {
		t.Fatalf("verify victim = %s, want quarantined", v.Outcome)
	}
	if _, err := l.DeleteToken(context.Background(), c, res.Token.ID(), ""); err != nil {
		t.Fatalf("delete after garbage on the token's subject: %v", err)
	}
	if v, _ := l.Verify(context.Background(), c, other.Secret.Reveal()); v.Outcome != projections.OutcomeActive {
		t.Fatalf("the forged delete (filed under another token) deleted %s: %s", other.Token.ID(), v.Outcome)
	}
}

func TestATamperedConsumerIsNoticedAndADeleteStillTakesEffect(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	store, js, _ := eventstoretest.MustStore(t)
	view := projections.NewTokens()
	l := app.New(store, view, app.WithClock(clk.Now))
	t.Cleanup(app.Feed(store, view, nil))
	owner, _, err := l.Bootstrap(context.Background(), "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := app.Caller{Token: owner}
	ctx := context.Background()
	victim, err := l.CreateToken(ctx, c, domain.CreateToken{Scope: "organization", Name: "victim"}, "")
	if err != nil {
		t.Fatal(err)
	}

	// Someone who learned the feed's consumer name narrows it to creations
	// only, so the view would never see a delete.
	stream, err := js.Stream(ctx, "TOKENS")
	if err != nil {
		t.Fatal(err)
	}
	lister := stream.ListConsumers(ctx)
	tampered := 0
	for info := range lister.Info() {
		cfg := info.Config
		cfg.FilterSubject, cfg.FilterSubjects = "ledger.tokens.*.*.TokenCreated", nil
		if _, err := js.UpdateConsumer(ctx, "TOKENS", cfg); err != nil {
			t.Fatalf("tamper with %s: %v", info.Name, err)
		}
		tampered++
	}
	if tampered == 0 {
		t.Fatal("found no consumer to tamper with")
	}

	if _, err := l.DeleteToken(ctx, c, victim.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}
	// No event follows the delete, so no gap shows: the stall watchdog must
	// replace the consumer on its own.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := l.CatchUp(wctx); err != nil {
		t.Fatalf("the view never caught up with the delete: %v", err)
	}
	if _, err := l.Authenticate(victim.Secret.Reveal(), app.Source{}); !errors.Is(err, app.ErrUnauthenticated) {
		t.Fatal("a deleted token still authenticates after its feed was tampered with")
	}
}

func TestTwoOwnersRemovingEachOtherLeaveOne(t *testing.T) {
	clk := &clock{now: time.Now()}
	l, _, boot := newLedger(t, clk)
	ctx := context.Background()
	second, err := l.CreateToken(ctx, boot, domain.CreateToken{Scope: "organization", Name: "owner 2", Role: "ORGANIZATION_OWNER"}, "")
	if err != nil {
		t.Fatal(err)
	}
	// Each owner deletes the other, at the same time.
	a := app.Caller{Token: boot.Token}
	b := app.Caller{Token: second.Token}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Go(func() { _, errs[0] = l.DeleteToken(ctx, a, second.Token.ID(), "") })
	wg.Go(func() { _, errs[1] = l.DeleteToken(ctx, b, boot.Token.ID(), "") })
	wg.Wait()
	ok := 0
	for _, err := range errs {
		var se *domain.StateError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &se) && se.Field == "token_id":
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d deletes succeeded, want exactly 1: %v", ok, errs)
	}
	owners := 0
	list, _, _ := l.ListTokens(ctx, a, 0)
	for _, tk := range list {
		if tk.Token.Role() == domain.RoleOrganizationOwner && !tk.Token.Deleted() {
			owners++
		}
	}
	if owners != 1 {
		t.Fatalf("%d owners left, want 1", owners)
	}
}

func TestAnOwnerChangeOnAStalledViewIsRefusedNotGuessed(t *testing.T) {
	store, _, _ := eventstoretest.MustStore(t)
	view := projections.NewTokens()
	l := app.New(store, view, app.WithReadWait(300*time.Millisecond))
	stop := app.Feed(store, view, nil)
	boot, _, err := l.Bootstrap(context.Background(), "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := app.Caller{Token: boot}
	second, err := l.CreateToken(ctx, c, domain.CreateToken{Scope: "organization", Name: "owner 2", Role: "ORGANIZATION_OWNER"}, "")
	if err != nil {
		t.Fatal(err)
	}
	stop() // the view stops following the stream

	// Deleting owner 2 needs a caught-up view: the view is, so it passes; the
	// view then lags behind that delete.
	if _, err := l.DeleteToken(ctx, c, second.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}
	before, _ := store.LastSequence(ctx)
	// The stale view still shows owner 2; deleting the bootstrap owner must
	// not be judged on it.
	_, err = l.DeleteToken(ctx, c, boot.ID(), "")
	if !errors.Is(err, app.ErrUnavailable) {
		t.Fatalf("delete of the last owner on a stalled view: %v, want ErrUnavailable", err)
	}
	if after, _ := store.LastSequence(ctx); after != before {
		t.Fatal("the refused delete was written")
	}
}
