package domain

import (
	"fmt"
	"regexp"
	"strings"
)

// Scope is the level a token acts at.
type Scope string

const (
	ScopeOrganization Scope = "ORGANIZATION"
	ScopeWorkspace    Scope = "WORKSPACE"
	ScopeDeployment   Scope = "DEPLOYMENT"
)

// Role is what a token may do at its scope (or, for an organization token
// assigned to a workspace, in that workspace).
type Role string

const (
	RoleOrganizationOwner        Role = "ORGANIZATION_OWNER"
	RoleOrganizationBillingAdmin Role = "ORGANIZATION_BILLING_ADMIN"
	RoleOrganizationMember       Role = "ORGANIZATION_MEMBER"
	RoleWorkspaceOwner           Role = "WORKSPACE_OWNER"
	RoleWorkspaceOperator        Role = "WORKSPACE_OPERATOR"
	RoleWorkspaceAuthor          Role = "WORKSPACE_AUTHOR"
	RoleWorkspaceMember          Role = "WORKSPACE_MEMBER"
	RoleWorkspaceAccessor        Role = "WORKSPACE_ACCESSOR"
	RoleDeploymentAdmin          Role = "DEPLOYMENT_ADMIN"
)

// rolesByScope lists the roles each scope admits, most powerful first.
var rolesByScope = map[Scope][]Role{
	ScopeOrganization: {RoleOrganizationOwner, RoleOrganizationBillingAdmin, RoleOrganizationMember},
	ScopeWorkspace:    {RoleWorkspaceOwner, RoleWorkspaceOperator, RoleWorkspaceAuthor, RoleWorkspaceMember, RoleWorkspaceAccessor},
	ScopeDeployment:   {RoleDeploymentAdmin},
}

// defaultRole is the least-privileged role of a scope, used when a create names
// none: a token nobody thought about should be able to do little.
var defaultRole = map[Scope]Role{
	ScopeOrganization: RoleOrganizationMember,
	ScopeWorkspace:    RoleWorkspaceMember,
	ScopeDeployment:   RoleDeploymentAdmin,
}

// RolesOf returns the roles a token of scope s may hold, most powerful first.
func RolesOf(s Scope) []Role { return append([]Role(nil), rolesByScope[s]...) }

// ParseScope accepts a scope in any case ("workspace" or "WORKSPACE").
func ParseScope(s string) (Scope, error) {
	sc := Scope(strings.ToUpper(strings.TrimSpace(s)))
	if _, ok := rolesByScope[sc]; !ok {
		return "", fmt.Errorf("must be one of ORGANIZATION, WORKSPACE, DEPLOYMENT")
	}
	return sc, nil
}

// Fits reports whether role r is allowed for scope s.
func (r Role) Fits(s Scope) bool {
	for _, allowed := range rolesByScope[s] {
		if r == allowed {
			return true
		}
	}
	return false
}

// Known reports whether r is any role at all.
func (r Role) Known() bool {
	for s := range rolesByScope {
		if r.Fits(s) {
			return true
		}
	}
	return false
}

// checkRole validates a role for a scope and says which rule failed.
func checkRole(field string, r Role, s Scope) string {
	if !r.Known() {
		return "unknown role " + quote(string(r))
	}
	if !r.Fits(s) {
		return fmt.Sprintf("role %s does not fit scope %s (allowed: %s)", r, s, joinRoles(rolesByScope[s]))
	}
	return ""
}

func joinRoles(rs []Role) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = string(r)
	}
	return strings.Join(parts, ", ")
}

// idPattern keeps organization, workspace and deployment ids safe as NATS subject
// tokens (no dots, spaces or wildcards), which is how the event store files them.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// ValidID reports whether s may be used as an organization, workspace or
// deployment id.
func ValidID(s string) bool { return idPattern.MatchString(s) }

const idRule = "must be 1-64 characters of letters, digits, '-' or '_', starting with a letter or digit"

func quote(s string) string {
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return fmt.Sprintf("%q", s)
}
