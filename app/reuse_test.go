package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/projections"
)

// awaitRecorded waits, with a deadline, until the ledger has written n
// reuse events or failed one.
func awaitRecorded(t *testing.T, l *app.Ledger, n uint64) app.ReuseStats {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := l.ReuseStats()
		if st.Failed > 0 {
			t.Fatalf("reuse reports failed: %+v", st)
		}
		if st.Recorded >= n {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d reuse reports recorded after 30 s: %+v", st.Recorded, n, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reuses loads a token's history from the stream and returns its
// TokenReuseDetected events, having checked that the whole history replays
// (one version after another, one hash chain).
func reuses(t *testing.T, store *eventstore.Store, org, id string) []domain.Event {
	t.Helper()
	recs, err := store.Load(context.Background(), org, id)
	if err != nil {
		t.Fatal(err)
	}
	var all, out []domain.Event
	for _, r := range recs {
		all = append(all, r.Event)
		if r.Event.Type == domain.TokenReuseDetected {
			out = append(out, r.Event)
		}
	}
	if _, err := domain.Replay(all); err != nil {
		t.Fatalf("the token's history does not replay: %v", err)
	}
	return out
}

// Reuse reports race with commands on the same token; every report still
// becomes exactly one event (a conflict is retried on the token's new head,
// under the same event id), and the commands go through.
func TestEveryReuseIsOneEventWhileCommandsRace(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk)
	t.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "busy"}, "")
	if err != nil {
		t.Fatal(err)
	}
	old := res.Secret.Reveal()
	if _, err := l.RotateToken(ctx, owner, res.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}

	const attempts, updates = 40, 15
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range attempts {
			if _, err := l.Authenticate(old, app.Source{RequestID: fmt.Sprint("r", i), SourceIP: "192.0.2.7"}); !errors.Is(err, app.ErrUnauthenticated) {
				t.Errorf("attempt %d with the rotated-away secret: %v", i, err)
			}
		}
	}()
	updated := 0
	go func() {
		defer wg.Done()
		for i := 0; updated < updates; i++ {
			name := fmt.Sprint("busy ", i)
			_, err := l.UpdateToken(ctx, owner, res.Token.ID(), domain.UpdateToken{Name: &name}, "")
			switch {
			case err == nil:
				updated++
			default: // a reuse event that got there first is no reason to refuse
				t.Errorf("update: %v", err)
				return
			}
		}
	}()
	wg.Wait()
	st := awaitRecorded(t, l, attempts)
	if st.Queued != attempts || st.Recorded != attempts || st.Dropped != 0 {
		t.Fatalf("stats %+v, want %d queued and recorded", st, attempts)
	}
	events := reuses(t, store, "acme", res.Token.ID())
	seen := map[string]bool{}
	for _, e := range events {
		seen[e.Actor.RequestID] = true
		if e.Actor.TokenID != domain.SystemActor || e.Actor.SourceIP != "192.0.2.7" || e.Data != (domain.ReuseDetectedData{Fingerprint: domain.Fingerprint(old)}) {
			t.Fatalf("event %+v", e)
		}
	}
	if len(events) != attempts || len(seen) != attempts {
		t.Fatalf("%d TokenReuseDetected events from %d requests, for %d attempts", len(events), len(seen), attempts)
	}
}

// With a queue of one and a burst of attempts, reports are dropped rather
// than wait, and counted; each one taken is still exactly one event.
func TestAFullQueueDropsAndCountsRatherThanWaits(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk, app.WithReuseQueue(1))
	t.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "w"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.RotateToken(ctx, owner, res.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}
	const burst = 500
	for range burst {
		if _, err := l.Authenticate(res.Secret.Reveal(), app.Source{}); !errors.Is(err, app.ErrUnauthenticated) {
			t.Fatal(err)
		}
	}
	st := l.ReuseStats()
	if st.Queued+st.Dropped != burst || st.Dropped == 0 {
		t.Fatalf("after a burst of %d: %+v; want some dropped, and every attempt queued or dropped", burst, st)
	}
	awaitRecorded(t, l, st.Queued)
	if err := l.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(reuses(t, store, "acme", res.Token.ID())); uint64(n) != st.Queued {
		t.Fatalf("%d events for %d queued reports", n, st.Queued)
	}
}

// Close writes what is queued, then refuses (and counts) new reports; the
// ledger still answers a rotated-away secret with 401.
func TestCloseStopsTheReuseWriterCleanly(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk)
	if err := l.Close(); err != nil { // never started: returns at once
		t.Fatal(err)
	}
	l, store, owner = newLedger(t, clk)
	ctx := context.Background()
	res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "w"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.RotateToken(ctx, owner, res.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		_, _ = l.Authenticate(res.Secret.Reveal(), app.Source{})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	st := l.ReuseStats()
	if st.Queued != 5 || st.Recorded != 5 {
		t.Fatalf("after Close: %+v; want the 5 queued reports recorded", st)
	}
	if _, err := l.Authenticate(res.Secret.Reveal(), app.Source{}); !errors.Is(err, app.ErrUnauthenticated) {
		t.Fatalf("a rotated-away secret after Close: %v", err)
	}
	if got := l.ReuseStats(); got.Dropped != 1 || got.Queued != 5 {
		t.Fatalf("a report after Close: %+v; want it dropped", got)
	}
	if err := l.Close(); err != nil { // twice is fine
		t.Fatal(err)
	}
	if err := l.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(reuses(t, store, "acme", res.Token.ID())); n != 5 {
		t.Fatalf("%d events, want 5", n)
	}
}

// A successful Authenticate moves the token's last use, at most every 30 s;
// Verify (someone else asking about the secret) does not; nothing is
// written to the stream. SaveView saves a snapshot for uses alone, so a
// restart keeps them.
func TestLastUseIsKeptInTheViewAndItsSnapshot(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	store, _, _ := eventstoretest.MustStore(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	view := projections.NewTokens()
	l := app.New(store, view, app.WithClock(clk.Now))
	t.Cleanup(app.Feed(store, view, nil))
	t.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	ownerTok, _, err := l.Bootstrap(ctx, "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	owner := app.Caller{Token: ownerTok}
	res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "w"}, "")
	if err != nil {
		t.Fatal(err)
	}
	secret, id := res.Secret.Reveal(), res.Token.ID()
	lastUsed := func() time.Time {
		t.Helper()
		tok, _, err := l.GetToken(ctx, owner, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		return tok.LastUsedAt()
	}
	path := filepath.Join(t.TempDir(), "TOKENS.snap")
	saved, err := app.SaveView(ctx, store, view, path, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := store.LastSequence(ctx)

	if _, err := l.Verify(ctx, owner, secret); err != nil || !lastUsed().IsZero() {
		t.Fatalf("Verify counted as a use: last used %v, %v", lastUsed(), err)
	}
	if again, err := app.SaveView(ctx, store, view, path, saved, quiet); err != nil || again != saved {
		t.Fatalf("nothing moved, yet SaveView: %d, %v", again, err)
	}
	if _, err := l.Authenticate(secret, app.Source{}); err != nil {
		t.Fatal(err)
	}
	first := clk.Now()
	if !lastUsed().Equal(first) {
		t.Fatalf("last used %v, want %v", lastUsed(), first)
	}
	clk.Advance(29 * time.Second)
	_, _ = l.Authenticate(secret, app.Source{})
	if !lastUsed().Equal(first) {
		t.Fatalf("a use 29 s later moved last used to %v", lastUsed())
	}
	clk.Advance(time.Second)
	_, _ = l.Authenticate(secret, app.Source{})
	if want := first.Add(30 * time.Second); !lastUsed().Equal(want) {
		t.Fatalf("a use 30 s later: last used %v, want %v", lastUsed(), want)
	}
	if after, _ := store.LastSequence(ctx); after != before {
		t.Fatalf("uses wrote events: sequence %d -> %d", before, after)
	}

	// No event since the last snapshot, but uses: SaveView writes one, and
	// a view loaded from it knows the last use.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := app.SaveView(ctx, store, view, path, saved, quiet); err != nil {
		t.Fatal(err)
	}
	loaded, err := app.OpenView(ctx, store, path, false, quiet)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, ok := loaded.Get("acme", id)
	if !ok || !tok.LastUsedAt().Equal(first.Add(30*time.Second)) {
		t.Fatalf("after a restart from the snapshot: last used %v", tok.LastUsedAt())
	}
}

// A report decided on a view that lags the stream conflicts with the
// token's real head; the writer catches up and appends again, and the
// report is still exactly one event, on the chain where it belongs.
func TestAReportThatConflictsIsRetriedOnTheNewHead(t *testing.T) {
	ctx := context.Background()
	store, _, _ := eventstoretest.MustStore(t)
	view := projections.NewTokens()
	l := app.New(store, view, app.WithReadWait(500*time.Millisecond))
	t.Cleanup(func() { _ = l.Close() })
	stopFeed := app.Feed(store, view, nil)
	ownerTok, _, err := l.Bootstrap(ctx, "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	owner := app.Caller{Token: ownerTok}
	res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "w"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.RotateToken(ctx, owner, res.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}
	// The view stops here; another ledger moves the token on.
	stopFeed()
	otherView := projections.NewTokens()
	other := app.New(store, otherView)
	t.Cleanup(app.Feed(store, otherView, nil))
	if err := other.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	name := "moved on"
	if _, err := other.UpdateToken(ctx, owner, res.Token.ID(), domain.UpdateToken{Name: &name}, ""); err != nil {
		t.Fatal(err)
	}

	if _, err := l.Authenticate(res.Secret.Reveal(), app.Source{RequestID: "late-view"}); !errors.Is(err, app.ErrUnauthenticated) {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for l.ReuseStats().Retries == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no retry: %+v", l.ReuseStats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Cleanup(app.Feed(store, view, nil))
	awaitRecorded(t, l, 1)
	events := reuses(t, store, "acme", res.Token.ID())
	if len(events) != 1 || events[0].Version != 4 || events[0].Actor.RequestID != "late-view" || events[0].TokenName != name {
		t.Fatalf("reuse events %+v; want one, version 4, after the update", events)
	}
}
