package domain

import (
	"slices"
	"strings"
	"time"
)

func rolesFrom(m map[string]Role) []WorkspaceRole {
	if len(m) == 0 {
		return nil
	}
	out := make([]WorkspaceRole, 0, len(m))
	for ws, r := range m {
		out = append(out, WorkspaceRole{ws, r})
	}
	slices.SortFunc(out, func(a, b WorkspaceRole) int { return strings.Compare(a.WorkspaceID, b.WorkspaceID) })
	return out
}

// TokenState is every field of a token, exported for one purpose: saving a
// projection's snapshot and restoring it. It is not a way to make tokens:
// commands (Create) and events (Apply) are; RestoreToken trusts its input,
// which must come from State.
type TokenState struct {
	ID             string
	OrganizationID string
	Scope          Scope
	WorkspaceID    string
	DeploymentID   string
	Name           string
	Description    string
	Role           Role
	WorkspaceRoles map[string]Role
	ExpirationDays int
	ExpiresAt      time.Time
	CreatedAt      time.Time
	UpdatedAt      time.Time
	RotatedAt      time.Time
	DeletedAt      time.Time
	Version        uint64
	// ChangedVersion is Token.ChangedVersion; zero (a snapshot older than
	// it) restores as Version, which only makes If-Match stricter.
	ChangedVersion uint64
	SecretHash     SecretHash
	Fingerprint    string
	ChainHead      EventHash
}

// State returns a copy of the token's fields.
func (t *Token) State() TokenState {
	return TokenState{
		ID: t.id, OrganizationID: t.organizationID, Scope: t.scope,
		WorkspaceID: t.workspaceID, DeploymentID: t.deploymentID,
		Name: t.name, Description: t.description, Role: t.role,
		WorkspaceRoles: t.WorkspaceRoles(), ExpirationDays: t.expirationDays,
		ExpiresAt: t.expiresAt, CreatedAt: t.createdAt, UpdatedAt: t.updatedAt,
		RotatedAt: t.rotatedAt, DeletedAt: t.deletedAt, Version: t.version,
		ChangedVersion: t.changedVersion, SecretHash: t.secretHash, Fingerprint: t.fingerprint, ChainHead: t.chainHead,
	}
}

// RestoreToken makes a token from a State saved earlier.
func RestoreToken(s TokenState) *Token {
	changed := s.ChangedVersion
	if changed == 0 {
		changed = s.Version
	}
	return &Token{
		changedVersion: changed,
		id:             s.ID, organizationID: s.OrganizationID, scope: s.Scope,
		workspaceID: s.WorkspaceID, deploymentID: s.DeploymentID,
		name: s.Name, description: s.Description, role: s.Role,
		workspaceRoles: rolesFrom(s.WorkspaceRoles), expirationDays: s.ExpirationDays,
		expiresAt: s.ExpiresAt, createdAt: s.CreatedAt, updatedAt: s.UpdatedAt,
		rotatedAt: s.RotatedAt, deletedAt: s.DeletedAt, version: s.Version,
		secretHash: s.SecretHash, fingerprint: s.Fingerprint, chainHead: s.ChainHead,
	}
}
