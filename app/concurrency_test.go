package app_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/projections"
)

// rotation is one goroutine's attempt to rotate the shared token.
type rotation struct {
	from uint64 // the version it read (IfVersion), 0 for a blind rotation
	res  app.Result
	err  error
}

// TestConcurrentRotationsOfTheVersionTheyReadOneWinsPerVersion: 100
// goroutines read the same token, then all rotate the version they read:
// exactly one succeeds and 99 get a conflict. Then they keep reading and
// rotating for a while: for every version exactly one rotation succeeds. The
// stream holds exactly the successful rotations, each once, at consecutive
// versions, and only the last secret verifies.
func TestConcurrentRotationsOfTheVersionTheyReadOneWinsPerVersion(t *testing.T) {
	l, store, owner, id, first := ledgerWithOneToken(t)
	ctx := context.Background()
	const goroutines, rounds = 100, 10

	read := func() uint64 {
		tok, _, err := l.GetToken(ctx, owner, id, 0)
		if err != nil {
			t.Error(err)
			return 0
		}
		return tok.Version()
	}
	var (
		mu       sync.Mutex
		attempts []rotation
		wg       sync.WaitGroup
		ready    sync.WaitGroup
	)
	start := make(chan struct{})
	ready.Add(goroutines)
	for range goroutines {
		wg.Go(func() {
			// The first round: everyone has read the token before anyone
			// rotates it, so all of them hold the same version.
			v := read()
			ready.Done()
			<-start
			for round := range rounds {
				if round > 0 {
					v = read()
				}
				res, err := l.RotateToken(ctx, owner, id, "", app.IfVersion(v))
				mu.Lock()
				attempts = append(attempts, rotation{from: v, res: res, err: err})
				mu.Unlock()
			}
		})
	}
	ready.Wait()
	close(start)
	wg.Wait()

	wins := map[uint64]int{}
	var won []rotation
	for _, a := range attempts {
		switch {
		case a.err == nil:
			wins[a.from]++
			won = append(won, a)
			if a.res.Token.Version() != a.from+1 {
				t.Errorf("rotation of version %d answered version %d", a.from, a.res.Token.Version())
			}
		case !errors.Is(a.err, domain.ErrConflict):
			t.Errorf("rotation of version %d failed with %v, want a conflict", a.from, a.err)
		}
	}
	if wins[1] != 1 {
		t.Fatalf("%d goroutines rotated version 1, the version all of them read; want exactly 1", wins[1])
	}
	last := uint64(1) + uint64(len(won))
	for v := uint64(1); v < last; v++ {
		if wins[v] != 1 {
			t.Errorf("version %d: %d successful rotations, want exactly 1", v, wins[v])
		}
	}
	t.Logf("%d attempts, %d rotations succeeded, %d conflicts", len(attempts), len(won), len(attempts)-len(won))
	checkRotations(t, l, store, owner, id, first, won)
}

// TestConcurrentBlindRotationsAreEachStoredOnceOrRefused: 100 goroutines
// rotate one token at once without naming a version (as `ledger token
// rotate` does). Each either succeeds or gets a conflict; no two succeed on
// the same version; the stream holds every success once and nothing else;
// only the last secret verifies.
func TestConcurrentBlindRotationsAreEachStoredOnceOrRefused(t *testing.T) {
	l, store, owner, id, first := ledgerWithOneToken(t)
	ctx := context.Background()
	const goroutines = 100
	results := make([]rotation, goroutines)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range goroutines {
		wg.Go(func() {
			<-start
			res, err := l.RotateToken(ctx, owner, id, "")
			results[i] = rotation{res: res, err: err}
		})
	}
	close(start)
	wg.Wait()

	var won []rotation
	versions := map[uint64]int{}
	for _, r := range results {
		switch {
		case r.err == nil:
			won = append(won, r)
			versions[r.res.Token.Version()]++
		case !errors.Is(r.err, domain.ErrConflict):
			t.Errorf("rotation failed with %v, want success or a conflict", r.err)
		}
	}
	if len(won) == 0 {
		t.Fatal("no rotation succeeded")
	}
	for v, n := range versions {
		if n != 1 {
			t.Errorf("%d rotations answered version %d", n, v)
		}
	}
	t.Logf("%d rotations succeeded, %d conflicts", len(won), goroutines-len(won))
	checkRotations(t, l, store, owner, id, first, won)
}

// ledgerWithOneToken is a ledger with one workspace token, at version 1, and
// that token's first secret.
func ledgerWithOneToken(t *testing.T) (*app.Ledger, *eventstore.Store, app.Caller, string, string) {
	t.Helper()
	l, store, owner := newLedger(t, &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)})
	res, err := l.CreateToken(context.Background(), owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "contended"}, "")
	if err != nil {
		t.Fatal(err)
	}
	return l, store, owner, res.Token.ID(), res.Secret.Reveal()
}

// checkRotations checks the stream and the view against the rotations that
// succeeded: the token's history is its creation and exactly those
// rotations, each once, at consecutive versions and at the sequences their
// answers gave; the view is at the last of them; its secret is the only one
// that verifies.
func checkRotations(t *testing.T, l *app.Ledger, store *eventstore.Store, owner app.Caller, id, first string, won []rotation) {
	t.Helper()
	ctx := context.Background()
	slices.SortFunc(won, func(a, b rotation) int { return int(a.res.Token.Version()) - int(b.res.Token.Version()) })

	hist, err := store.Load(ctx, "acme", id)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 1+len(won) {
		t.Fatalf("the stream holds %d events for the token, want its creation and %d rotations", len(hist), len(won))
	}
	ids := map[string]bool{}
	for i, rec := range hist {
		e := rec.Event
		if ids[e.ID] {
			t.Errorf("event %s stored twice", e.ID)
		}
		ids[e.ID] = true
		if e.Version != uint64(i+1) {
			t.Errorf("event %d of the token has version %d, want %d", i, e.Version, i+1)
		}
		if i == 0 {
			continue
		}
		if e.Type != domain.TokenRotated {
			t.Errorf("event %d is %s, want %s", i, e.Type, domain.TokenRotated)
		}
		if w := won[i-1].res; rec.Sequence != w.Sequence {
			t.Errorf("the rotation to version %d was answered with sequence %d but stored at %d", e.Version, w.Sequence, rec.Sequence)
		}
	}

	lastWin := won[len(won)-1].res
	tok, _, err := l.GetToken(ctx, owner, id, lastWin.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Version() != lastWin.Token.Version() || tok.Fingerprint() != lastWin.Token.Fingerprint() {
		t.Errorf("the view has version %d (%s), want the last rotation's %d (%s)", tok.Version(), tok.Fingerprint(), lastWin.Token.Version(), lastWin.Token.Fingerprint())
	}

	secrets := []string{first}
	for _, w := range won {
		secrets = append(secrets, w.res.Secret.Reveal())
	}
	for i, s := range secrets {
		v, err := l.Verify(ctx, owner, s)
		if err != nil {
			t.Fatal(err)
		}
		want := projections.OutcomeRotated
		if i == len(secrets)-1 {
			want = projections.OutcomeActive
		}
		if v.Outcome != want {
			t.Errorf("secret %d of %d verifies as %s, want %s", i+1, len(secrets), v.Outcome, want)
		}
	}
}
