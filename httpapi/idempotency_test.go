package httpapi_test

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/projections"
)

// An idempotency key is the acting token's: another caller using the same
// key neither gets the first caller's token as a replay nor is refused
// because the key was used, and cannot use a key up before its owner does;
// the first caller's own retry still replays, also on a ledger restarted
// from the stream.
func TestIdempotencyKeysBelongToTheActingToken(t *testing.T) {
	h := newHarness(t)
	a := h.client(h.owner)
	other := h.create(httpapi.CreateRequest{Scope: "organization", Name: "other owner", Role: "ORGANIZATION_OWNER"})
	b := h.client(other.Secret)
	req := httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "ci", Role: "WORKSPACE_MEMBER"}

	first, err := a.CreateToken(ctxT(t), req, "create-ci-1")
	if err != nil || first.IdempotentReplay || first.Secret == "" {
		t.Fatalf("first create: %s, %v", shortly(first), err)
	}
	theirs, err := b.CreateToken(ctxT(t), req, "create-ci-1")
	if err != nil {
		t.Fatalf("another caller using the same key is refused: %v", err)
	}
	if theirs.IdempotentReplay || theirs.ID == first.ID || theirs.Secret == "" {
		t.Fatalf("another caller using the same key got %s, want a token of its own (first was %s)", shortly(theirs), first.ID)
	}
	retry, err := a.CreateToken(ctxT(t), req, "create-ci-1")
	if err != nil || !retry.IdempotentReplay || retry.ID != first.ID || retry.Secret != "" {
		t.Fatalf("the first caller's retry: %s, %v; want a replay of %s", shortly(retry), err, first.ID)
	}

	// Squatting: another caller uses a key first, with other parameters.
	if _, err := b.CreateToken(ctxT(t), httpapi.CreateRequest{Scope: "organization", Name: "squat", Role: "ORGANIZATION_MEMBER"}, "create-ci-2"); err != nil {
		t.Fatal(err)
	}
	mine, err := a.CreateToken(ctxT(t), req, "create-ci-2")
	if err != nil || mine.IdempotentReplay || mine.Secret == "" {
		t.Fatalf("a key another caller used first: %s, %v; want a create of its own", shortly(mine), err)
	}

	// A ledger started afresh from the stream knows whose key is whose.
	srv := h.restarted()
	again, err := httpapi.NewClient(srv, h.owner).CreateToken(ctxT(t), req, "create-ci-1")
	if err != nil || !again.IdempotentReplay || again.ID != first.ID {
		t.Fatalf("the first caller's retry after a restart: %s, %v; want a replay of %s", shortly(again), err, first.ID)
	}
	again, err = httpapi.NewClient(srv, other.Secret).CreateToken(ctxT(t), req, "create-ci-1")
	if err != nil || !again.IdempotentReplay || again.ID != theirs.ID {
		t.Fatalf("the other caller's retry after a restart: %s, %v; want a replay of %s", shortly(again), err, theirs.ID)
	}
}

// restarted serves a ledger started afresh on the harness's stream: a new
// view built from the first event, as after a restart with --rebuild.
func (h *harness) restarted() string {
	h.t.Helper()
	view := projections.NewTokens()
	ledger := app.New(h.store, view, app.WithClock(h.now), app.WithAuditKey(h.key))
	h.t.Cleanup(app.Feed(h.store, view, nil))
	h.t.Cleanup(func() { _ = ledger.Close() })
	if err := ledger.CatchUp(ctxT(h.t)); err != nil {
		h.t.Fatal(err)
	}
	srv := httptest.NewServer(httpapi.NewServer(ledger, slog.New(slog.NewTextHandler(io.Discard, nil)), nil))
	h.t.Cleanup(srv.Close)
	return srv.URL
}
