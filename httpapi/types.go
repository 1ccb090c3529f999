// Package httpapi is the ledger's HTTP JSON API: the server side that
// `ledger serve` runs, and the client the CLI uses. The wire types here are
// the contract documented in openapi.yaml; add fields, never change them.
package httpapi

import (
	"fmt"
	"maps"
	"sort"
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
	// LastUsedAt is when the token last authenticated a request, to within
	// a minute; null when not known (never used, or only before the
	// ledger kept track).
	LastUsedAt *time.Time `json:"last_used_at"`
	// Roles lists every role the token has, wherever it has it. A deleted or
	// expired token keeps its roles here; Status says whether it can use them.
	Roles []RoleGrant `json:"roles"`
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

// Role levels: where a RoleGrant is held.
const (
	LevelOrganization = "organization"
	LevelWorkspace    = "workspace"
	LevelDeployment   = "deployment"
)

// RoleGrant is one role a token has: at the organization, in a workspace or
// in a deployment, named by ID.
type RoleGrant struct {
	Level string      `json:"level"`
	ID    string      `json:"id"`
	Role  domain.Role `json:"role"`
}

// TokenQuery narrows a list of tokens; empty fields do not filter (see
// GET /v1/tokens in openapi.yaml).
type TokenQuery struct {
	Scope        string
	WorkspaceID  string
	DeploymentID string
	Role         string
	Status       string
}

// Holding is a token that can act in a workspace or deployment, with the role
// it holds there and how.
type Holding struct {
	TokenID string       `json:"token_id"`
	Name    string       `json:"name"`
	Scope   domain.Scope `json:"scope"`
	Role    domain.Role  `json:"role"`
	How     string       `json:"how"`
	// WorkspaceID is the workspace the role is held in (for an organization
	// token, the workspace it is assigned to).
	WorkspaceID string `json:"workspace_id"`
	// DeploymentID is a deployment token's deployment; null otherwise.
	DeploymentID *string `json:"deployment_id"`
}

// HoldingList is the answer to GET /v1/roles.
type HoldingList struct {
	Holdings []Holding `json:"holdings"`
	Sequence uint64    `json:"sequence"`
}

// HistoryEvent is one event of a token's history. Data holds the event
// type's fields, without the secret's hashes.
type HistoryEvent struct {
	Sequence     uint64           `json:"sequence"`
	EventID      string           `json:"event_id"`
	EventType    domain.EventType `json:"event_type"`
	OccurredAt   time.Time        `json:"occurred_at"`
	Version      uint64           `json:"version"`
	ActorTokenID string           `json:"actor_token_id"`
	RequestID    string           `json:"request_id"`
	SourceIP     string           `json:"source_ip"`
	UserAgent    string           `json:"user_agent"`
	Data         map[string]any   `json:"data"`
}

// History is the answer to GET /v1/tokens/{id}/history: the token's events,
// oldest first, and the stream sequence of the last.
type History struct {
	TokenID  string         `json:"token_id"`
	Events   []HistoryEvent `json:"events"`
	Sequence uint64         `json:"sequence"`
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
	if u := t.LastUsedAt(); !u.IsZero() {
		out.LastUsedAt = &u
	}
	out.Roles = roleGrants(t)
	return out
}

// roleGrants lists every role of t: an organization token's organization role
// and its workspace roles (by workspace id), a workspace token's role in its
// workspace, a deployment token's role in its deployment.
func roleGrants(t *domain.Token) []RoleGrant {
	switch t.Scope() {
	case domain.ScopeWorkspace:
		return []RoleGrant{{Level: LevelWorkspace, ID: t.WorkspaceID(), Role: t.Role()}}
	case domain.ScopeDeployment:
		return []RoleGrant{{Level: LevelDeployment, ID: t.DeploymentID(), Role: t.Role()}}
	}
	ws := t.WorkspaceRoles()
	out := make([]RoleGrant, 0, 1+len(ws))
	out = append(out, RoleGrant{Level: LevelOrganization, ID: t.OrganizationID(), Role: t.Role()})
	ids := make([]string, 0, len(ws))
	for id := range ws {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		out = append(out, RoleGrant{Level: LevelWorkspace, ID: id, Role: ws[id]})
	}
	return out
}

func holdingJSON(h projections.Holding, workspaceID string) Holding {
	t := h.Token
	out := Holding{TokenID: t.ID(), Name: t.Name(), Scope: t.Scope(), Role: h.Role, How: string(h.How), WorkspaceID: workspaceID}
	if t.Scope() != domain.ScopeOrganization {
		out.WorkspaceID = t.WorkspaceID()
	}
	if d := t.DeploymentID(); d != "" {
		out.DeploymentID = &d
	}
	return out
}

// HistoryEventOf is the event stored at stream sequence seq as the API's
// history shows it (no secret hash); `ledger events tail` prints the same.
func HistoryEventOf(seq uint64, e domain.Event) (HistoryEvent, error) {
	data, err := domain.ShownData(e.Data)
	if err != nil {
		return HistoryEvent{}, fmt.Errorf("event %s at sequence %d: %w", e.ID, seq, err)
	}
	return HistoryEvent{
		Sequence:     seq,
		EventID:      e.ID,
		EventType:    e.Type,
		OccurredAt:   e.OccurredAt,
		Version:      e.Version,
		ActorTokenID: e.Actor.TokenID,
		RequestID:    e.Actor.RequestID,
		SourceIP:     e.Actor.SourceIP,
		UserAgent:    e.Actor.UserAgent,
		Data:         data,
	}, nil
}

func verificationJSON(v projections.Verdict) Verification {
	out := Verification{Valid: v.Outcome == projections.OutcomeActive, Status: string(v.Outcome), Reason: v.Reason()}
	if t := v.Token(); t != nil && out.Valid {
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
