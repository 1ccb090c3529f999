package app_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/projections"
)

// ledgers starts n ledgers on one stream, each with its own connection and
// its own view fed from the stream, as n `ledger serve` processes are; the
// first bootstraps organization acme, and its owner token's secret is
// returned.
func ledgers(t *testing.T, n int, opts ...app.Option) ([]*app.Ledger, string) {
	t.Helper()
	ctx := context.Background()
	ns := eventstoretest.MustServer(t)
	out := make([]*app.Ledger, n)
	for i := range out {
		_, js := eventstoretest.MustConnect(t, ns)
		store, err := eventstore.Open(ctx, js, eventstore.DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		view := projections.NewTokens()
		l := app.New(store, view, opts...)
		stop := app.Feed(store, view, nil)
		t.Cleanup(func() { _ = l.Close(); stop() })
		out[i] = l
	}
	_, secret, err := out[0].Bootstrap(ctx, "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	return out, secret.Reveal()
}

// as is the caller holding secret, authenticated by l, as a request that
// reaches l is.
func as(t *testing.T, l *app.Ledger, secret string) app.Caller {
	t.Helper()
	tok, err := l.Authenticate(secret, app.Source{})
	if err != nil {
		t.Fatal(err)
	}
	return app.Caller{Token: tok}
}

// Two owners delete each other at the same moment, each through another
// ledger. Before, each ledger judged "another lasting owner remains" under
// a lock only it held, and both deletes could pass: the organization was
// left with no owner. Now the stream refuses the second append (the
// organization moved since it was judged), the second is judged again and
// refused. Raced many times, with the bootstrap owner out of the way.
func TestTwoOwnersDeletingEachOtherThroughTwoLedgersLeaveAnOwner(t *testing.T) {
	ls, bootSecret := ledgers(t, 2)
	ctx := context.Background()
	boot := as(t, ls[0], bootSecret)
	for round := range 25 {
		var owners [2]app.Caller
		for i := range owners {
			res, err := ls[0].CreateToken(ctx, boot, domain.CreateToken{Scope: "organization", Name: "owner", Role: string(domain.RoleOrganizationOwner)}, "")
			if err != nil {
				t.Fatal(err)
			}
			owners[i] = as(t, ls[i], res.Secret.Reveal()) // owner i acts through ledger i
		}
		if round == 0 {
			// From here on the two are the only lasting owners.
			if _, err := ls[0].DeleteToken(ctx, owners[0], boot.Token.ID(), ""); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Go(func() {
				_, errs[i] = ls[i].DeleteToken(ctx, owners[i], owners[1-i].Token.ID(), "")
			})
		}
		wg.Wait()
		succeeded := 0
		for _, err := range errs {
			var state *domain.StateError
			switch {
			case err == nil:
				succeeded++
			case errors.As(err, &state), errors.Is(err, app.ErrUnauthenticated):
				// The last owner kept, or its deleter deleted first.
			default:
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if succeeded != 1 {
			t.Fatalf("round %d: %d of the two deletes succeeded (%v), want exactly one", round, succeeded, errs)
		}
		survivor := owners[0]
		if errs[1] == nil {
			survivor = owners[1]
		}
		survivor = app.Caller{Token: survivor.Token}
		for _, l := range ls {
			if err := l.CatchUp(ctx); err != nil {
				t.Fatal(err)
			}
			if got, _, err := l.GetToken(ctx, survivor, survivor.Token.ID(), 0); err != nil || got.Deleted() {
				t.Fatalf("round %d: the surviving owner: %v", round, err)
			}
		}
		// It creates the next round's owners, through ledger 0.
		boot = app.Caller{Token: survivor.Token}
	}
}

// Two deployment tokens for one new deployment, in two workspaces, at the
// same moment, through two ledgers: at most one is created, and the
// deployment's tokens are in one workspace.
func TestADeploymentGetsOneWorkspaceThroughTwoLedgers(t *testing.T) {
	ls, bootSecret := ledgers(t, 2)
	ctx := context.Background()
	// An owner: the one caller that may also move a deployment (once it
	// has no active token left), so each race is judged on the binding.
	callers := []app.Caller{as(t, ls[0], bootSecret), as(t, ls[1], bootSecret)}
	for round := range 25 {
		dep := "dep" + string(rune('a'+round))
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Go(func() {
				ws := []string{"ws1", "ws2"}[i]
				_, errs[i] = ls[i].CreateToken(ctx, callers[i], domain.CreateToken{Scope: "deployment", WorkspaceID: ws, DeploymentID: dep, Name: "d", Role: string(domain.RoleDeploymentAdmin)}, "")
			})
		}
		wg.Wait()
		created := 0
		for _, err := range errs {
			var state *domain.StateError
			switch {
			case err == nil:
				created++
			case errors.As(err, &state):
			default:
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if created != 1 {
			t.Fatalf("round %d: %d deployment tokens created in two workspaces (%v), want one", round, created, errs)
		}
	}
}

// A token created through one ledger works on another at once: the other
// does not refuse the secret (nor charge a failure for it) because its view
// has not applied the creation yet, and reads it without a min_sequence.
func TestATokenCreatedThroughOneLedgerWorksOnAnotherAtOnce(t *testing.T) {
	ls, bootSecret := ledgers(t, 2)
	ctx := context.Background()
	boot := as(t, ls[0], bootSecret)
	for i := range 30 {
		res, err := ls[0].CreateToken(ctx, boot, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "w", Role: string(domain.RoleWorkspaceMember)}, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ls[1].Authenticate(res.Secret.Reveal(), app.Source{}); err != nil {
			t.Fatalf("try %d: a secret created through A, on B: %v", i, err)
		}
		res2, err := ls[0].RotateToken(ctx, boot, res.Token.ID(), "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ls[1].Authenticate(res2.Secret.Reveal(), app.Source{}); err != nil {
			t.Fatalf("try %d: a secret rotated in through A, on B: %v", i, err)
		}
		name := "renamed"
		if _, err := ls[0].UpdateToken(ctx, boot, res.Token.ID(), domain.UpdateToken{Name: &name}, ""); err != nil {
			t.Fatal(err)
		}
		got, _, err := ls[1].GetToken(ctx, boot, res.Token.ID(), 0)
		if err != nil {
			t.Fatalf("try %d: read on B right after the update on A: %v", i, err)
		}
		if got.Name() != name {
			t.Fatalf("try %d: read on B right after the update on A: name %q, want %q", i, got.Name(), name)
		}
	}
}

// A ledger whose view stopped following the stream stops authenticating
// within its staleness bound: it answers ErrStale (503) rather than let a
// secret rotated away through another ledger work; once it follows again
// it answers again, with the rotation applied.
func TestALedgerBehindTheStreamStopsAuthenticatingWithinItsBound(t *testing.T) {
	const bound = 500 * time.Millisecond
	ctx := context.Background()
	ns := eventstoretest.MustServer(t)
	open := func() (*eventstore.Store, *projections.Tokens) {
		_, js := eventstoretest.MustConnect(t, ns)
		store, err := eventstore.Open(ctx, js, eventstore.DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		return store, projections.NewTokens()
	}
	storeA, viewA := open()
	a := app.New(storeA, viewA, app.WithMaxStaleness(bound))
	t.Cleanup(app.Feed(storeA, viewA, nil))
	t.Cleanup(func() { _ = a.Close() })
	storeB, viewB := open()
	b := app.New(storeB, viewB, app.WithMaxStaleness(bound))
	t.Cleanup(func() { _ = b.Close() })
	stopB := app.Feed(storeB, viewB, nil)

	bootTok, _, err := a.Bootstrap(ctx, "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	boot := app.Caller{Token: bootTok}
	res, err := a.CreateToken(ctx, boot, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "w", Role: string(domain.RoleWorkspaceMember)}, "")
	if err != nil {
		t.Fatal(err)
	}
	old := res.Secret.Reveal()
	if _, err := b.Authenticate(old, app.Source{}); err != nil {
		t.Fatal(err)
	}

	stopB() // B's view stops here, as if its feed were cut
	rotated, err := a.RotateToken(ctx, boot, res.Token.ID(), "")
	if err != nil {
		t.Fatal(err)
	}
	acked := time.Now()
	for {
		_, err := b.Authenticate(old, app.Source{})
		if errors.Is(err, app.ErrStale) {
			break
		}
		if err != nil {
			t.Fatalf("B, behind the stream: %v, want the old secret's old answer until the bound, then ErrStale", err)
		}
		if since := time.Since(acked); since > bound+bound/2 {
			t.Fatalf("B still accepted the rotated-away secret %s after the rotation was acknowledged (bound %s)", since, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("B refused to answer %s after the rotation was acknowledged (bound %s)", time.Since(acked).Round(time.Millisecond), bound)
	if _, err := b.Authenticate(rotated.Secret.Reveal(), app.Source{}); !errors.Is(err, app.ErrStale) {
		t.Fatalf("the new secret on a stale B: %v, want ErrStale", err)
	}

	t.Cleanup(app.Feed(storeB, viewB, nil)) // B follows again
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := b.Authenticate(rotated.Secret.Reveal(), app.Source{})
		if err == nil {
			break
		}
		if !errors.Is(err, app.ErrStale) || time.Now().After(deadline) {
			t.Fatalf("B following again: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := b.Authenticate(old, app.Source{}); !errors.Is(err, app.ErrUnauthenticated) {
		t.Fatalf("the rotated-away secret on B once current: %v", err)
	}
}
