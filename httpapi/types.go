// Package httpapi is the ledger's HTTP JSON API: the server side that
// `ledger serve` runs, and the client the CLI uses. The wire types here are
// the contract documented in openapi.yaml; add fields, never change them.
package httpapi

import (
	"maps"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

// Token is a token as the API shows it. It never carries the stored hash;
// Secret is set only in a create or rotate answer, once.
type Token struct {
	ID             string            `json:"id"`
	OrganizationID string            `json:"organization_id"`
	Scope          domain.Scope      `json:"scope"`
	Name           string            `json:"name"`
	Description    string            `json:"description"`
	Role           domain.Role       `json:"role"`
	WorkspaceID    *string           `json:"workspace_id"`
	DeploymentID   *string           `json:"deployment_id"`
	WorkspaceRoles map[string]string `json:"workspace_roles"`
	ExpiresAt      *time.Time        `json:"expires_at"`
	CreatedAt      time.Time         `json:"created_at"`
	UpdatedAt      time.Time         `json:"updated_at"`
	RotatedAt      *time.Time        `json:"rotated_at"`
	Status         domain.Status     `json:"status"`
	Version        uint64            `json:"version"`
	Fingerprint    string            `json:"fingerprint"`
	// Sequence is the stream sequence the answer reflects: the command's for a
	// command, the token's last event's for a read. Pass it as min_sequence to
	// a later read to be sure it sees at least this.
	Sequence uint64 `json:"sequence,omitempty"`
	// Secret is the token itself, shown once.
	Secret string `json:"token,omitempty"`
	// IdempotentReplay: this answer is for a retried command that was already
	// stored; nothing new was written and no secret can be shown.
	IdempotentReplay bool `json:"idempotent_replay,omitempty"`
}

// TokenList is the answer to a list.
type TokenList struct {
	Tokens   []Token `json:"tokens"`
	Sequence uint64  `json:"sequence"`
}

// CreateRequest is the body of POST /v1/tokens.
type CreateRequest struct {
	OrganizationID string `json:"organization_id,omitempty"`
	Scope          string `json:"scope"`
	Name           string `json:"name"`
	Description    string `json:"description,omitempty"`
	Role           string `json:"role,omitempty"`
	WorkspaceID    string `json:"workspace_id,omitempty"`
	DeploymentID   string `json:"deployment_id,omitempty"`
	ExpirationDays *int   `json:"expiration_days,omitempty"`
}

// UpdateRequest is the body of PATCH /v1/tokens/{id}; absent fields stay.
type UpdateRequest struct {
	Name        *string `json:"name,omitempty"`
	Description *string `json:"description,omitempty"`
	Role        *string `json:"role,omitempty"`
}

// AssignRequest is the body of PUT /v1/tokens/{id}/workspaces/{workspace_id}.
type AssignRequest struct {
	Role string `json:"role"`
}

// VerifyRequest is the body of POST /v1/verify.
type VerifyRequest struct {
	Token string `json:"token"`
}

// Verification is the answer to a verify. Valid is true only for an active
// token; Reason says why not otherwise.
type Verification struct {
	Valid          bool              `json:"valid"`
	Status         string            `json:"status"`
	Reason         string            `json:"reason"`
	ID             string            `json:"id,omitempty"`
	OrganizationID string            `json:"organization_id,omitempty"`
	Scope          domain.Scope      `json:"scope,omitempty"`
	Role           domain.Role       `json:"role,omitempty"`
	WorkspaceID    string            `json:"workspace_id,omitempty"`
	DeploymentID   string            `json:"deployment_id,omitempty"`
	WorkspaceRoles map[string]string `json:"workspace_roles,omitempty"`
	Fingerprint    string            `json:"fingerprint,omitempty"`
}

func tokenJSON(t *domain.Token, now time.Time) Token {
	out := Token{
		ID:             t.ID(),
		OrganizationID: t.OrganizationID(),
		Scope:          t.Scope(),
		Name:           t.Name(),
		Description:    t.Description(),
		Role:           t.Role(),
		WorkspaceRoles: map[string]string{},
		CreatedAt:      t.CreatedAt(),
		UpdatedAt:      t.UpdatedAt(),
		Status:         t.Status(now),
		Version:        t.Version(),
		Fingerprint:    t.Fingerprint(),
	}
	if ws := t.WorkspaceID(); ws != "" {
		out.WorkspaceID = &ws
	}
	if d := t.DeploymentID(); d != "" {
		out.DeploymentID = &d
	}
	for ws, r := range t.WorkspaceRoles() {
		out.WorkspaceRoles[ws] = string(r)
	}
	if exp := t.ExpiresAt(); !exp.IsZero() {
		out.ExpiresAt = &exp
	}
	if r := t.RotatedAt(); !r.IsZero() {
		out.RotatedAt = &r
	}
	return out
}

func verificationJSON(v projections.Verdict) Verification {
	out := Verification{Valid: v.Outcome == projections.OutcomeActive, Status: string(v.Outcome), Reason: v.Reason()}
	if t := v.Token; t != nil && out.Valid {
		out.ID = t.ID()
		out.OrganizationID = t.OrganizationID()
		out.Scope = t.Scope()
		out.Role = t.Role()
		out.WorkspaceID = t.WorkspaceID()
		out.DeploymentID = t.DeploymentID()
		out.Fingerprint = t.Fingerprint()
		if roles := t.WorkspaceRoles(); len(roles) > 0 {
			out.WorkspaceRoles = make(map[string]string, len(roles))
			for ws, r := range maps.All(roles) {
				out.WorkspaceRoles[ws] = string(r)
			}
		}
	} else if t != nil {
		out.ID = t.ID()
	}
	return out
}
