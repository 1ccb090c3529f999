package httpapi_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/httpapi"
)

// TestAnOwnerMovesASquattedDeployment: a workspace operator binds a
// deployment id of another workspace to its own by creating the first token
// for it. The other workspace is refused (without being told where the
// deployment is), and so is the owner while the squatter's token is
// active; once the owner deletes it, the owner's create moves the deployment
// and its rightful workspace may give it tokens, the squatter no longer.
func TestAnOwnerMovesASquattedDeployment(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	owner := h.client(h.owner)
	squatter := h.client(h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "w1-op", Role: "WORKSPACE_OPERATOR"}).Secret)
	rightful := h.client(h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w2", Name: "w2-op", Role: "WORKSPACE_OPERATOR"}).Secret)
	deploy := func(c *httpapi.Client, ws, name string) (httpapi.Token, error) {
		return c.CreateToken(ctx, httpapi.CreateRequest{Scope: "deployment", WorkspaceID: ws, DeploymentID: "etl-prod", Name: name}, "")
	}
	conflict := func(err error, what string) *httpapi.Problem {
		t.Helper()
		var p *httpapi.Problem
		if !errors.As(err, &p) || p.Status != http.StatusConflict {
			t.Fatalf("%s: %v, want 409", what, err)
		}
		return p
	}

	squat, err := deploy(squatter, "w1", "squat")
	if err != nil {
		t.Fatal(err)
	}
	before := h.lastSeq()
	if p := conflict(func() error { _, err := deploy(rightful, "w2", "mine"); return err }(), "the rightful workspace"); strings.Contains(mustJSON(t, p), "w1") {
		t.Errorf("the refusal tells w2 where the deployment is: %s", mustJSON(t, p))
	}
	conflict(func() error { _, err := deploy(owner, "w2", "moved"); return err }(), "the owner while the squatter's token is active")
	if h.lastSeq() != before {
		t.Fatal("a refused create wrote something")
	}
	if _, err := owner.DeleteToken(ctx, squat.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := deploy(owner, "w2", "moved"); err != nil {
		t.Fatalf("the owner moves the deployment: %v", err)
	}
	if _, err := deploy(rightful, "w2", "mine"); err != nil {
		t.Fatalf("the rightful workspace after the move: %v", err)
	}
	conflict(func() error { _, err := deploy(squatter, "w1", "again"); return err }(), "the squatter after the move")
}
