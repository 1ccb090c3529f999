package domain

import "fmt"

// The permission model, in one place. The README's permission matrix is this
// file in words, and app's table test holds the two together.
//
// A token acts at two levels. At the organization level, an organization
// token's role: ORGANIZATION_OWNER may do everything in its organization;
// ORGANIZATION_BILLING_ADMIN and ORGANIZATION_MEMBER may read every token of
// it. In a workspace W, a workspace role, held by a workspace token of W, by
// an organization token assigned to W, and, as Astro's permission tables have
// it, by every ORGANIZATION_OWNER. Workspace roles are ranked OWNER >
// OPERATOR > AUTHOR > MEMBER > ACCESSOR; a deployment token's
// DEPLOYMENT_ADMIN ranks as OPERATOR (the seeds: "the same permissions as
// the Workspace Operator role, but only for Deployment-level operations").
//
// In W, a WORKSPACE_OWNER changes W's workspace tokens and the deployment
// tokens in W, a WORKSPACE_OPERATOR the deployment tokens in W, and every
// workspace role reads W's tokens: its workspace tokens, its deployment
// tokens and the organization tokens assigned to it. A DEPLOYMENT_ADMIN reads
// its own token and nothing else. Organization tokens, and their workspace
// assignments, are changed by ORGANIZATION_OWNER alone; so is the audit log
// exported. Nobody grants, or changes a token holding, a role above their
// own; nothing reaches another organization; a role in one workspace says
// nothing about another.

// Operation is what a request does to a token.
type Operation string

const (
	OpCreate   Operation = "create"
	OpUpdate   Operation = "update"
	OpRotate   Operation = "rotate"
	OpAssign   Operation = "assign"
	OpUnassign Operation = "unassign"
	OpDelete   Operation = "delete"
	// OpRead covers showing a token, its history and its past states, and
	// seeing it in a list, in a roles answer or in a verify answer.
	OpRead   Operation = "read"
	OpExport Operation = "export"
)

// Operations lists every operation, in the README's order.
var Operations = []Operation{OpCreate, OpUpdate, OpRotate, OpAssign, OpUnassign, OpDelete, OpRead, OpExport}

// ForbiddenError says which permission rule denied a request, and on which
// field of the request (the caller's own token is "Authorization").
type ForbiddenError struct{ Field, Rule string }

func (e *ForbiddenError) Error() string { return "forbidden: " + e.Field + ": " + e.Rule }

func forbid(field, format string, args ...any) error {
	return &ForbiddenError{Field: field, Rule: fmt.Sprintf(format, args...)}
}

// workspaceRank orders the roles that act in a workspace.
var workspaceRank = map[Role]int{
	RoleWorkspaceAccessor: 1,
	RoleWorkspaceMember:   2,
	RoleWorkspaceAuthor:   3,
	RoleWorkspaceOperator: 4,
	RoleDeploymentAdmin:   4,
	RoleWorkspaceOwner:    5,
}

// RoleIn is the workspace role t acts with in workspace ws, if any: an
// ORGANIZATION_OWNER's WORKSPACE_OWNER, an organization token's assignment,
// a workspace token's role in its own workspace. Deployment tokens act on
// their deployment only, not in its workspace.
func (t *Token) RoleIn(ws string) (Role, bool) {
	switch t.scope {
	case ScopeOrganization:
		if t.role == RoleOrganizationOwner {
			return RoleWorkspaceOwner, true
		}
		return t.WorkspaceRole(ws)
	case ScopeWorkspace:
		return t.role, t.workspaceID == ws
	}
	return "", false
}

// who names an actor in a rule: its role, and where it holds it.
func who(actor *Token) string {
	switch actor.scope {
	case ScopeWorkspace:
		return fmt.Sprintf("%s of workspace %s", actor.role, actor.workspaceID)
	case ScopeDeployment:
		return fmt.Sprintf("%s of deployment %s", actor.role, actor.deploymentID)
	}
	s := "an organization token with role " + string(actor.role)
	sep := " (and "
	actor.EachWorkspaceRole(func(ws string, r Role) {
		s += fmt.Sprintf("%s%s in workspace %s", sep, r, ws)
		sep = ", "
	})
	if sep == ", " {
		s += ")"
	}
	return s
}

// CanRead reports whether actor may see t (never its secret, which nobody
// can see, nor its hash).
func CanRead(actor, t *Token) bool {
	if t.organizationID != actor.organizationID {
		return false
	}
	if actor.scope == ScopeOrganization || t.id == actor.id {
		return true // every organization role reads the whole organization
	}
	if actor.scope == ScopeDeployment {
		return false
	}
	if t.scope == ScopeOrganization {
		_, assigned := t.WorkspaceRole(actor.workspaceID)
		return assigned
	}
	return t.workspaceID == actor.workspaceID
}

// CanChangeAny reports whether actor may change any token at all: an
// ORGANIZATION_OWNER, or a token that is WORKSPACE_OWNER or
// WORKSPACE_OPERATOR somewhere. Others are refused before their request is
// looked at.
func CanChangeAny(actor *Token) error {
	switch {
	case actor.role == RoleOrganizationOwner:
		return nil
	case actor.scope == ScopeWorkspace && workspaceRank[actor.role] >= workspaceRank[RoleWorkspaceOperator]:
		return nil
	}
	manages := false
	actor.EachWorkspaceRole(func(_ string, r Role) {
		manages = manages || workspaceRank[r] >= workspaceRank[RoleWorkspaceOperator]
	})
	if manages {
		return nil
	}
	return forbid("Authorization", "%s may read tokens, not change them", who(actor))
}

// Authorize decides whether actor may do op to a token: before is the token
// as it stands (nil for a create), after the token as the command would
// leave it (nil for reads, and where the command changes no role). It
// returns nil or a *ForbiddenError naming the field and the rule.
func Authorize(actor *Token, op Operation, before, after *Token) error {
	t := before
	if t == nil {
		t = after
	}
	if t == nil {
		// Operations on the organization as a whole: exporting its audit log.
		if op == OpExport && actor.role != RoleOrganizationOwner {
			return forbid("Authorization", "only an %s exports the audit log; this token is %s", RoleOrganizationOwner, who(actor))
		}
		return nil
	}
	if t.organizationID != actor.organizationID {
		return forbid("organization_id", "a token acts only in its own organization (%s)", actor.organizationID)
	}
	if op == OpRead {
		if CanRead(actor, t) {
			return nil
		}
		if actor.scope == ScopeDeployment {
			return forbid("token_id", "a %s reads its own token only", RoleDeploymentAdmin)
		}
		return forbid("token_id", "%s may not read this token: it acts in another workspace, or is an organization token not assigned to this one's", who(actor))
	}
	if actor.role == RoleOrganizationOwner {
		return nil
	}
	if err := CanChangeAny(actor); err != nil {
		return err
	}
	target := "token_id"
	if before == nil {
		target = "scope"
	}
	switch {
	case op == OpAssign || op == OpUnassign:
		return forbid("workspace_id", "only an %s assigns organization tokens to workspaces or removes them", RoleOrganizationOwner)
	case t.scope == ScopeOrganization:
		return forbid(target, "organization tokens are created and changed by an %s only", RoleOrganizationOwner)
	}
	role, ok := actor.RoleIn(t.workspaceID)
	if !ok {
		field := target
		if before == nil {
			field = "workspace_id"
		}
		return forbid(field, "%s holds no role in workspace %s", who(actor), t.workspaceID)
	}
	// The ceiling: a token may not hand out, nor take over (by rotating it,
	// say), more power than it has.
	if after != nil && workspaceRank[after.role] > workspaceRank[role] {
		return forbid("role", "%s is above this token's own role (%s in workspace %s)", after.role, role, t.workspaceID)
	}
	if before != nil && workspaceRank[before.role] > workspaceRank[role] {
		return forbid("token_id", "the token is %s, above this token's own role (%s in workspace %s)", before.role, role, t.workspaceID)
	}
	switch {
	case role == RoleWorkspaceOwner:
		return nil
	case role == RoleWorkspaceOperator && t.scope == ScopeDeployment:
		return nil
	case role == RoleWorkspaceOperator:
		return forbid(target, "a %s manages the deployment tokens of workspace %s only", RoleWorkspaceOperator, t.workspaceID)
	}
	return forbid("Authorization", "a %s reads the tokens of workspace %s, but does not change them", role, t.workspaceID)
}
