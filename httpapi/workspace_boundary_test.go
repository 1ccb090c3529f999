package httpapi_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/httpapi"
)

// TestAWorkspaceSeesOnlyItsOwnWorkspace: a workspace token that may read an
// organization token assigned to its workspace sees that token's role there,
// not its roles, assignments or holdings in other workspaces, whichever
// answer it asks (show, past state, history, list filters, roles, verify).
func TestAWorkspaceSeesOnlyItsOwnWorkspace(t *testing.T) {
	h := newHarness(t)
	owner := h.client(h.owner)
	ctx := ctxT(t)
	org := h.create(httpapi.CreateRequest{Scope: "organization", Name: "shared-ci", Role: "ORGANIZATION_MEMBER"})
	for _, a := range []struct{ ws, role string }{{"w1", "WORKSPACE_AUTHOR"}, {"secret-project", "WORKSPACE_OWNER"}} {
		if _, err := owner.AssignToken(ctx, org.ID, a.ws, a.role); err != nil {
			t.Fatal(err)
		}
	}
	reader := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "w1-reader", Role: "WORKSPACE_MEMBER"})
	c := h.client(reader.Secret)

	leaks := func(what string, s any) {
		t.Helper()
		if strings.Contains(mustJSON(t, s), "secret-project") {
			t.Errorf("%s names the other workspace: %s", what, mustJSON(t, s))
		}
	}
	got, err := c.GetToken(ctx, org.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.WorkspaceRoles["w1"] != "WORKSPACE_AUTHOR" {
		t.Errorf("show: the role in its own workspace is missing: %v", got.WorkspaceRoles)
	}
	leaks("show", got)
	at, err := c.GetTokenAt(ctx, org.ID, "2100-01-01T00:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	leaks("show --at", at)
	hist, err := c.TokenHistory(ctx, org.ID)
	if err != nil {
		t.Fatal(err)
	}
	leaks("history", hist)
	if len(hist.Events) != 2 {
		t.Errorf("history shows %d events, want the creation and the assignment to w1", len(hist.Events))
	}
	list, err := c.ListTokensWhere(ctx, httpapi.TokenQuery{WorkspaceID: "secret-project"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Tokens) != 0 {
		t.Errorf("list --workspace secret-project answers %v", ids(list.Tokens))
	}
	all, err := c.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ids(all.Tokens), org.ID) {
		t.Errorf("list leaves out the organization token assigned to w1")
	}
	leaks("list", all)
	roles, err := c.Roles(ctx, "secret-project", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(roles.Holdings) != 0 {
		t.Errorf("roles --workspace secret-project answers %+v", roles.Holdings)
	}
	// The organization token's own secret, verified by the reader.
	rotated, err := owner.RotateToken(ctx, org.ID)
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.Verify(ctx, rotated.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Valid {
		t.Fatalf("verify: %+v", v)
	}
	leaks("verify", v)

	// An organization token still sees everything.
	full, err := owner.GetToken(ctx, org.ID)
	if err != nil {
		t.Fatal(err)
	}
	if full.WorkspaceRoles["secret-project"] != "WORKSPACE_OWNER" {
		t.Errorf("the owner no longer sees every role: %v", full.WorkspaceRoles)
	}
}
