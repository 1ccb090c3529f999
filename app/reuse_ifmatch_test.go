package app_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
)

// Issue 16: every reuse event moved the token's version, so an If-Match
// command (API or console Edit) with the version read before failed with a
// conflict for as long as someone kept trying an old secret. After 1,000
// tries, an update with the version read before them goes through, on the
// token's real head; one with a version from before a real change does not.
func TestIfMatchHoldsThroughAThousandReuseTries(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, _, owner := newLedger(t, clk)
	t.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	rot, old := rotatedAway(t, l, owner, "leaky")
	id := rot.Token.ID()
	read, _, err := l.GetToken(ctx, owner, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	before := read.Version()
	for i := range 1000 {
		_, _ = l.Authenticate(old, app.Source{RequestID: fmt.Sprint("r", i), SourceIP: "203.0.113.5"})
		clk.Advance(200 * time.Millisecond)
	}
	if err := l.Close(); err != nil { // writes what is counted
		t.Fatal(err)
	}
	if err := l.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	now, _, err := l.GetToken(ctx, owner, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if now.Version() == before {
		t.Fatal("no reuse event was written")
	}
	name := "leaky, seen"
	res, err := l.UpdateToken(ctx, owner, id, domain.UpdateToken{Name: &name}, "", app.IfVersion(before))
	if err != nil {
		t.Fatalf("If-Match with the version read before the tries (token now at %d): %v", now.Version(), err)
	}
	if res.Token.Version() != now.Version()+1 {
		t.Fatalf("the update is version %d, want %d: on the token's real head", res.Token.Version(), now.Version()+1)
	}
	again := "leaky, twice"
	if _, err := l.UpdateToken(ctx, owner, id, domain.UpdateToken{Name: &again}, "", app.IfVersion(before)); !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("If-Match with a version from before a real change: %v, want a conflict", err)
	}
}
