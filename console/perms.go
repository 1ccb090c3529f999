package console

import (
	"crypto/rand"
	"slices"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// Which buttons a page shows is asked of domain.Authorize, the function that
// judges the commands themselves, on the tokens those commands would make:
// a page offers what the ledger will accept. The ledger judges each command
// again when it comes.

// may reports whether actor may do op to t now.
func may(actor *domain.Token, op domain.Operation, t *domain.Token) bool {
	if op != domain.OpRead && t.Deleted() {
		return false // a deleted token accepts no command
	}
	if (op == domain.OpAssign || op == domain.OpUnassign) && t.Scope() != domain.ScopeOrganization {
		return false
	}
	return domain.Authorize(actor, op, t, nil) == nil
}

// scopes lists the scopes a token can be created in, in the order the
// create page offers them.
var scopes = []domain.Scope{domain.ScopeOrganization, domain.ScopeWorkspace, domain.ScopeDeployment}

// grant is what actor may create in one scope: the roles it may give, and
// the workspaces it may create in (any, for an ORGANIZATION_OWNER).
type grant struct {
	Roles         []domain.Role
	Workspaces    []string
	AnyWorkspace  bool
	NeedWorkspace bool
}

// probeWorkspace and probeDeployment stand in for "any" when asking
// Authorize about an actor that may act in every workspace.
const (
	probeWorkspace  = "any-workspace"
	probeDeployment = "any-deployment"
)

// grantsOf says what actor may create in scope s.
func grantsOf(actor *domain.Token, s domain.Scope, now time.Time) grant {
	g := grant{NeedWorkspace: s != domain.ScopeOrganization}
	var candidates []string
	switch {
	case s == domain.ScopeOrganization:
		candidates = []string{""}
	case actor.Role() == domain.RoleOrganizationOwner:
		candidates, g.AnyWorkspace = []string{probeWorkspace}, true
	case actor.Scope() == domain.ScopeWorkspace:
		candidates = []string{actor.WorkspaceID()}
	case actor.Scope() == domain.ScopeOrganization:
		actor.EachWorkspaceRole(func(ws string, _ domain.Role) { candidates = append(candidates, ws) })
	}
	if domain.CanChangeAny(actor) != nil {
		return grant{}
	}
	for _, r := range domain.RolesOf(s) {
		for _, ws := range candidates {
			if !mayCreate(actor, s, ws, r, now) {
				continue
			}
			if !slices.Contains(g.Roles, r) {
				g.Roles = append(g.Roles, r)
			}
			if ws != "" && ws != probeWorkspace && !slices.Contains(g.Workspaces, ws) {
				g.Workspaces = append(g.Workspaces, ws)
			}
		}
	}
	return g
}

// mayCreate asks Authorize about the token a create would make.
func mayCreate(actor *domain.Token, s domain.Scope, ws string, r domain.Role, now time.Time) bool {
	cmd := domain.CreateToken{OrganizationID: actor.OrganizationID(), Scope: string(s), Name: "probe", Role: string(r), WorkspaceID: ws}
	if s == domain.ScopeDeployment {
		cmd.DeploymentID = probeDeployment
	}
	t, _, _, err := domain.Create(cmd, domain.Env{Now: now, Rand: rand.Reader, Actor: domain.Actor{TokenID: actor.ID()}})
	return err == nil && domain.Authorize(actor, domain.OpCreate, nil, t) == nil
}

// canCreate reports whether actor may create a token of any kind.
func canCreate(actor *domain.Token, now time.Time) bool {
	for _, s := range scopes {
		if len(grantsOf(actor, s, now).Roles) > 0 {
			return true
		}
	}
	return false
}

// settableRoles lists the roles actor may give t by editing it: those that
// fit its scope and that Authorize accepts on the token the edit would
// leave. Its current role is among them whenever t can be edited at all.
func settableRoles(actor, t *domain.Token, now time.Time) []domain.Role {
	var out []domain.Role
	for _, r := range domain.RolesOf(t.Scope()) {
		after := t.Clone()
		role := string(r)
		if _, _, err := after.Update(domain.UpdateToken{Role: &role}, domain.Env{Now: now, Rand: rand.Reader, Actor: domain.Actor{TokenID: actor.ID()}}); err != nil {
			continue
		}
		if domain.Authorize(actor, domain.OpUpdate, t, after) == nil {
			out = append(out, r)
		}
	}
	return out
}

// workspaceRoles are the roles an organization token can be given in a
// workspace.
var workspaceRoles = domain.RolesOf(domain.ScopeWorkspace)
