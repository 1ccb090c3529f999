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

// awaitRecorded waits, with a deadline, until the ledger's reuse events
// stand for n tries, and fails at once if one could not be stored.
func awaitRecorded(t *testing.T, l *app.Ledger, n uint64) app.ReuseStats {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := l.ReuseStats()
		if st.Failed > 0 {
			t.Fatalf("reuse events failed: %+v", st)
		}
		if st.RecordedTries >= n {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d tries recorded after 30 s: %+v", st.RecordedTries, n, st)
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

// tries adds up the tries the events stand for, by source address.
func tries(events []domain.Event) (total uint64, bySource map[string]uint64) {
	bySource = map[string]uint64{}
	for _, e := range events {
		n := e.Data.(domain.ReuseDetectedData).Tries()
		total += n
		bySource[e.Actor.SourceIP] += n
	}
	return total, bySource
}

// rotatedAway makes a workspace token and rotates it: the token and its old
// secret.
func rotatedAway(t *testing.T, l *app.Ledger, owner app.Caller, name string) (app.Result, string) {
	t.Helper()
	ctx := context.Background()
	res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: name}, "")
	if err != nil {
		t.Fatal(err)
	}
	rot, err := l.RotateToken(ctx, owner, res.Token.ID(), "")
	if err != nil {
		t.Fatal(err)
	}
	return rot, res.Secret.Reveal()
}

// Issue 16: whoever holds a rotated-away secret wrote one permanent event
// per try, and each moved the token's version, so every If-Match command
// on it failed. Now 1,000 tries over about three intervals write at most
// one event per source and interval (and the first at once), their counts
// add up to the tries, and the token is still unchanged since the version
// read before the tries (what If-Match is to compare).
func TestAThousandTriesWriteBoundedEvents(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk)
	t.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	rot, old := rotatedAway(t, l, owner, "leaky")
	id := rot.Token.ID()
	read, _, err := l.GetToken(ctx, owner, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	before := read.Version()

	// 1,000 tries from one address, 200 ms apart on the ledger's clock:
	// 200 s, a little over three intervals of a minute.
	const n = 1000
	for i := range n {
		if _, err := l.Authenticate(old, app.Source{RequestID: fmt.Sprint("r", i), SourceIP: "203.0.113.5", UserAgent: "stolen/1"}); !errors.Is(err, app.ErrUnauthenticated) {
			t.Fatalf("try %d: %v", i, err)
		}
		if i == 0 {
			awaitRecorded(t, l, 1) // the first try is written at once
		}
		clk.Advance(200 * time.Millisecond)
	}
	span := time.Duration(n) * 200 * time.Millisecond
	if err := l.Close(); err != nil { // writes what is still counted
		t.Fatal(err)
	}
	st := l.ReuseStats()
	if st.Tries != n || st.RecordedTries != n || st.Pending != 0 || st.Dropped != 0 || st.Failed != 0 {
		t.Fatalf("stats %+v; want all %d tries recorded", st, n)
	}
	if err := l.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	events := reuses(t, store, "acme", id)
	// The first try at once, then one per interval begun, and what Close
	// found counted.
	bound := 1 + int(span/app.DefaultReuseInterval) + 1
	if len(events) > bound || uint64(len(events)) != st.Recorded {
		t.Fatalf("%d TokenReuseDetected events for %d tries over %s (stats %d); want at most %d", len(events), n, span, st.Recorded, bound)
	}
	total, _ := tries(events)
	if total != n {
		t.Fatalf("the events' counts add up to %d tries, want %d", total, n)
	}
	fp := domain.Fingerprint(old)
	for i, e := range events {
		d := e.Data.(domain.ReuseDetectedData)
		if d.Fingerprint != fp || e.Actor.SourceIP != "203.0.113.5" || e.Actor.UserAgent != "stolen/1" || e.Actor.TokenID != domain.SystemActor {
			t.Fatalf("event %d: %+v", i, e)
		}
		if i > 0 && e.OccurredAt.Sub(events[i-1].OccurredAt) < app.DefaultReuseInterval && i != len(events)-1 {
			t.Fatalf("events %d and %d are %s apart, less than an interval", i-1, i, e.OccurredAt.Sub(events[i-1].OccurredAt))
		}
	}
	if d := events[0].Data.(domain.ReuseDetectedData); d.Tries() != 1 || events[0].Actor.RequestID != "r0" {
		t.Fatalf("the first event stands for %d tries (request %s), want the first try alone", d.Tries(), events[0].Actor.RequestID)
	}

	// The version read before the tries still names the token as it is.
	now, _, err := l.GetToken(ctx, owner, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if now.Version() != before+uint64(len(events)) || now.ChangedVersion() != before {
		t.Fatalf("after the tries: version %d, changed at %d; want %d and %d", now.Version(), now.ChangedVersion(), before+uint64(len(events)), before)
	}
	if !now.UnchangedSince(before) {
		t.Fatalf("the token at version %d is not unchanged since version %d", now.Version(), before)
	}
}

// Sources past the token's first maxReuseSources (16) in an interval are
// counted together, in one event without an address: many addresses buy
// no more events.
func TestManySourcesShareOneEventPastTheFirstSixteen(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk)
	rot, old := rotatedAway(t, l, owner, "leaky")
	const sources, each = 40, 5
	for i := range sources * each {
		_, _ = l.Authenticate(old, app.Source{SourceIP: fmt.Sprintf("198.51.100.%d", i%sources)})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.CatchUp(context.Background()); err != nil {
		t.Fatal(err)
	}
	events := reuses(t, store, "acme", rot.Token.ID())
	total, bySource := tries(events)
	if total != sources*each {
		t.Fatalf("%d tries recorded, want %d", total, sources*each)
	}
	// Each of the first 16 sources: its first try, then the rest; the
	// others: one shared event (its first try woke the writer too at most
	// once) without an address.
	if len(events) > 2*16+2 {
		t.Fatalf("%d events from %d sources in one interval; want at most %d", len(events), sources, 2*16+2)
	}
	if len(bySource) != 17 || bySource[""] != (sources-16)*each {
		t.Fatalf("tries by source %v; want 16 sources and %d tries without an address", bySource, (sources-16)*each)
	}
}

// Tries race with commands on the same token; every try is counted in an
// event (a conflict is retried on the token's new head, under the same
// event id), and the commands go through.
func TestReuseIsRecordedWhileCommandsRace(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk, app.WithReuseInterval(time.Millisecond))
	t.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	rot, old := rotatedAway(t, l, owner, "busy")
	id := rot.Token.ID()

	const attempts, updates = 40, 15
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range attempts {
			if _, err := l.Authenticate(old, app.Source{RequestID: fmt.Sprint("r", i), SourceIP: "192.0.2.7"}); !errors.Is(err, app.ErrUnauthenticated) {
				t.Errorf("attempt %d with the rotated-away secret: %v", i, err)
			}
			clk.Advance(time.Millisecond) // an interval each: many events
			time.Sleep(time.Millisecond)
		}
	}()
	updated := 0
	go func() {
		defer wg.Done()
		for i := 0; updated < updates; i++ {
			name := fmt.Sprint("busy ", i)
			_, err := l.UpdateToken(ctx, owner, id, domain.UpdateToken{Name: &name}, "")
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
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	st := l.ReuseStats()
	if st.Tries != attempts || st.RecordedTries != attempts || st.Dropped != 0 || st.Failed != 0 {
		t.Fatalf("stats %+v, want %d tries recorded", st, attempts)
	}
	events := reuses(t, store, "acme", id)
	for _, e := range events {
		if e.Actor.TokenID != domain.SystemActor || e.Actor.SourceIP != "192.0.2.7" || e.Data.(domain.ReuseDetectedData).Fingerprint != domain.Fingerprint(old) {
			t.Fatalf("event %+v", e)
		}
	}
	if total, _ := tries(events); total != attempts || uint64(len(events)) != st.Recorded {
		t.Fatalf("%d events standing for %d tries (stats %+v), for %d attempts", len(events), total, st, attempts)
	}
}

// With one slot, the tries of a second token (or source) are dropped and
// counted rather than waited for; the first one's are all recorded.
func TestWhenEverySlotIsTakenTriesAreDroppedAndCounted(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk, app.WithReuseSlots(1))
	a, oldA := rotatedAway(t, l, owner, "a")
	b, oldB := rotatedAway(t, l, owner, "b")
	const burst = 500
	for range burst {
		if _, err := l.Authenticate(oldA, app.Source{SourceIP: "192.0.2.1"}); !errors.Is(err, app.ErrUnauthenticated) {
			t.Fatal(err)
		}
		_, _ = l.Authenticate(oldA, app.Source{SourceIP: "192.0.2.2"})
		_, _ = l.Authenticate(oldB, app.Source{SourceIP: "192.0.2.1"})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	st := l.ReuseStats()
	if st.Tries != 3*burst || st.RecordedTries != burst || st.Dropped != 2*burst {
		t.Fatalf("stats %+v; want %d tries, %d recorded and %d dropped", st, 3*burst, burst, 2*burst)
	}
	if err := l.CatchUp(context.Background()); err != nil {
		t.Fatal(err)
	}
	if total, _ := tries(reuses(t, store, "acme", a.Token.ID())); total != burst {
		t.Fatalf("%d tries recorded on a, want %d", total, burst)
	}
	if n := len(reuses(t, store, "acme", b.Token.ID())); n != 0 {
		t.Fatalf("%d events on b, whose tries found no slot", n)
	}
}

// Close writes what is counted, then refuses (and counts) new tries; the
// ledger still answers a rotated-away secret with 401.
func TestCloseStopsTheReuseWriterCleanly(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, store, owner := newLedger(t, clk)
	if err := l.Close(); err != nil { // never started: returns at once
		t.Fatal(err)
	}
	l, store, owner = newLedger(t, clk)
	ctx := context.Background()
	rot, old := rotatedAway(t, l, owner, "w")
	for range 5 {
		_, _ = l.Authenticate(old, app.Source{})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	st := l.ReuseStats()
	if st.Tries != 5 || st.RecordedTries != 5 || st.Pending != 0 {
		t.Fatalf("after Close: %+v; want the 5 tries recorded", st)
	}
	if _, err := l.Authenticate(old, app.Source{}); !errors.Is(err, app.ErrUnauthenticated) {
		t.Fatalf("a rotated-away secret after Close: %v", err)
	}
	if got := l.ReuseStats(); got.Dropped != 1 || got.RecordedTries != 5 {
		t.Fatalf("a try after Close: %+v; want it dropped", got)
	}
	if err := l.Close(); err != nil { // twice is fine
		t.Fatal(err)
	}
	if err := l.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	events := reuses(t, store, "acme", rot.Token.ID())
	if total, _ := tries(events); total != 5 || len(events) > 2 {
		t.Fatalf("%d events standing for %d tries; want at most 2 for 5", len(events), total)
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
	// The view is stopped below to play a lagging one: with the staleness
	// bound on, the ledger would (rightly) refuse to answer at all.
	l := app.New(store, view, app.WithReadWait(500*time.Millisecond), app.WithMaxStaleness(0))
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
