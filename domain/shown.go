package domain

// What a reader may see of another token: a workspace is a boundary, so a
// workspace token that may read an organization token assigned to its
// workspace sees that token's role there, not where else it acts.

// ReadsWorkspace reports whether actor may see what happens in workspace ws:
// an organization token reads every workspace of its organization, a
// workspace token its own, a deployment token none.
func ReadsWorkspace(actor *Token, ws string) bool {
	switch actor.scope {
	case ScopeOrganization:
		return true
	case ScopeWorkspace:
		return actor.workspaceID == ws
	}
	return false
}

// ShownTo returns t as actor may see it: an organization token's workspace
// roles only in the workspaces actor reads. t itself is not changed; it is
// returned as it is when nothing is hidden.
func (t *Token) ShownTo(actor *Token) *Token {
	if actor.scope == ScopeOrganization || t.id == actor.id || len(t.workspaceRoles) == 0 {
		return t
	}
	kept := make([]WorkspaceRole, 0, 1)
	for _, wr := range t.workspaceRoles {
		if ReadsWorkspace(actor, wr.WorkspaceID) {
			kept = append(kept, wr)
		}
	}
	if len(kept) == len(t.workspaceRoles) {
		return t
	}
	c := t.Clone()
	c.workspaceRoles = kept
	return c
}

// ShownTo reports whether actor may see event e of a token it may read: an
// assignment to, or removal from, a workspace is seen only by those who read
// that workspace.
func (e Event) ShownTo(actor *Token) bool {
	if actor.scope == ScopeOrganization || e.TokenID == actor.id {
		return true
	}
	switch d := e.Data.(type) {
	case AssignedData:
		return ReadsWorkspace(actor, d.WorkspaceID)
	case *AssignedData:
		return ReadsWorkspace(actor, d.WorkspaceID)
	case UnassignedData:
		return ReadsWorkspace(actor, d.WorkspaceID)
	case *UnassignedData:
		return ReadsWorkspace(actor, d.WorkspaceID)
	}
	return true
}
