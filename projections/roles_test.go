package projections_test

import (
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

func TestWhoCanActInAWorkspaceAndADeployment(t *testing.T) {
	v := projections.NewTokens()
	seq := uint64(0)
	apply := func(e domain.Event, err error) {
		t.Helper()
		must(t, err)
		seq++
		must(t, v.Apply(seq, e))
	}
	mk := func(cmd domain.CreateToken) *domain.Token {
		t.Helper()
		cmd.OrganizationID = "acme"
		tok, e, _, err := domain.Create(cmd, env(t0))
		apply(e, err)
		return tok
	}
	one := 1
	ws := mk(domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "b-ws", Role: "WORKSPACE_AUTHOR"})
	dep := mk(domain.CreateToken{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "c-dep"})
	org := mk(domain.CreateToken{Scope: "organization", Name: "a-org"})
	mk(domain.CreateToken{Scope: "workspace", WorkspaceID: "w2", Name: "elsewhere"})
	mk(domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "short", ExpirationDays: &one})
	gone := mk(domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "gone"})

	e, _, err := org.Assign("w1", "WORKSPACE_OPERATOR", env(t0))
	apply(e, err)
	e, _, err = org.Assign("w3", "WORKSPACE_MEMBER", env(t0))
	apply(e, err)
	e, err = gone.Delete(env(t0))
	apply(e, err)

	got := v.InWorkspace("acme", "w1", t0.Add(48*time.Hour)) // "short" has expired
	want := []struct {
		id   string
		role domain.Role
		how  projections.How
	}{
		{org.ID(), domain.RoleWorkspaceOperator, projections.HeldByOrganizationToken},
		{ws.ID(), domain.RoleWorkspaceAuthor, projections.HeldByWorkspaceToken},
		{dep.ID(), domain.RoleDeploymentAdmin, projections.HeldByDeploymentToken},
	}
	if len(got) != len(want) {
		t.Fatalf("w1 holders = %d, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Token.ID() != w.id || got[i].Role != w.role || got[i].How != w.how {
			t.Errorf("holder %d = %s %s %q, want %s %s %q", i, got[i].Token.Name(), got[i].Role, got[i].How, w.id, w.role, w.how)
		}
	}
	if d := v.InDeployment("acme", "d1", t0); len(d) != 1 || d[0].Token.ID() != dep.ID() {
		t.Fatalf("d1 holders = %v", d)
	}
	if other := v.InWorkspace("globex", "w1", t0); len(other) != 0 {
		t.Fatal("another organization's w1 shows acme's tokens")
	}

	// Unassigning removes the organization token from w1 and leaves w3.
	e, err = org.Unassign("w1", env(t0))
	apply(e, err)
	if got := v.InWorkspace("acme", "w1", t0); len(got) != 3 { // ws, dep, short
		t.Fatalf("after unassign w1 has %d holders, want 3", len(got))
	}
	if got := v.InWorkspace("acme", "w3", t0); len(got) != 1 || got[0].Role != domain.RoleWorkspaceMember {
		t.Fatalf("w3 = %v", got)
	}
}
