package domain

import (
	"maps"
	"time"
)

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
	SecretHash     SecretHash
	Fingerprint    string
}

// State returns a copy of the token's fields.
func (t *Token) State() TokenState {
	return TokenState{
		ID: t.id, OrganizationID: t.organizationID, Scope: t.scope,
		WorkspaceID: t.workspaceID, DeploymentID: t.deploymentID,
		Name: t.name, Description: t.description, Role: t.role,
		WorkspaceRoles: maps.Clone(t.workspaceRoles), ExpirationDays: t.expirationDays,
		ExpiresAt: t.expiresAt, CreatedAt: t.createdAt, UpdatedAt: t.updatedAt,
		RotatedAt: t.rotatedAt, DeletedAt: t.deletedAt, Version: t.version,
		SecretHash: t.secretHash, Fingerprint: t.fingerprint,
	}
}

// RestoreToken makes a token from a State saved earlier. It takes the
// WorkspaceRoles map as it is: the caller must not use it afterwards.
func RestoreToken(s TokenState) *Token {
	return &Token{
		id: s.ID, organizationID: s.OrganizationID, scope: s.Scope,
		workspaceID: s.WorkspaceID, deploymentID: s.DeploymentID,
		name: s.Name, description: s.Description, role: s.Role,
		workspaceRoles: s.WorkspaceRoles, expirationDays: s.ExpirationDays,
		expiresAt: s.ExpiresAt, createdAt: s.CreatedAt, updatedAt: s.UpdatedAt,
		rotatedAt: s.RotatedAt, deletedAt: s.DeletedAt, version: s.Version,
		secretHash: s.SecretHash, fingerprint: s.Fingerprint,
	}
}
