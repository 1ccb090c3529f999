package domain

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// EventType names what happened to a token. The names are part of the stored
// record and of every consumer's contract: never rename one.
type EventType string

const (
	TokenCreated    EventType = "TokenCreated"
	TokenUpdated    EventType = "TokenUpdated"
	TokenRotated    EventType = "TokenRotated"
	TokenAssigned   EventType = "TokenAssigned"
	TokenUnassigned EventType = "TokenUnassigned"
	TokenDeleted    EventType = "TokenDeleted"
	// TokenReuseDetected is not a command's: the ledger records it when a
	// secret the token had before a rotation is presented again, which may
	// mean the old secret leaked.
	TokenReuseDetected EventType = "TokenReuseDetected"
)

// EventTypes lists every event type, in the order a token's life meets them
// (a reuse can be noticed at any point after a rotation, even after a
// deletion).
var EventTypes = []EventType{TokenCreated, TokenUpdated, TokenRotated, TokenAssigned, TokenUnassigned, TokenDeleted, TokenReuseDetected}

// Actor records who caused an event and through which request.
type Actor struct {
	TokenID   string `json:"actor_token_id"`
	RequestID string `json:"request_id,omitempty"`
	SourceIP  string `json:"source_ip,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
}

// SystemActor is the actor of events the ledger writes on its own (the
// bootstrap token, a detected reuse).
const SystemActor = "system"

// Event is one fact in a token's history. Data holds the type-specific fields
// and is one of the *Data types below.
type Event struct {
	ID             string    `json:"event_id"`
	Type           EventType `json:"event_type"`
	TokenID        string    `json:"token_id"`
	OrganizationID string    `json:"organization_id"`
	// TokenName, Scope, WorkspaceID and DeploymentID say which token this is
	// as of the event (its name after it), so an event can be read, exported
	// and audited on its own, without its token's earlier history.
	TokenName    string `json:"token_name"`
	Scope        Scope  `json:"scope"`
	WorkspaceID  string `json:"workspace_id,omitempty"`
	DeploymentID string `json:"deployment_id,omitempty"`
	// Version is the token's version after this event: 1 for TokenCreated, and
	// one more for each event after it.
	Version        uint64    `json:"version"`
	OccurredAt     time.Time `json:"occurred_at"`
	Actor          Actor     `json:"actor"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	// RequestHash is set with IdempotencyKey: a hash of the request's
	// parameters, so a retry can be told from a reuse of the key.
	RequestHash string    `json:"request_hash,omitempty"`
	Data        EventData `json:"data"`
	// PrevHash is the Hash of the token's previous event ("" for its
	// TokenCreated), and Hash is Record().ChainHash(): each token's events
	// form a hash chain, computed when the event is decided, that an export
	// carries and `ledger audit verify` checks.
	PrevHash EventHash `json:"prev_hash,omitzero"`
	Hash     EventHash `json:"hash,omitzero"`
}

// EventData is the type-specific part of an event.
type EventData interface{ eventType() EventType }

// CreatedData: a token came into being. It carries the secret's hash (the only
// stored form of it) and a fingerprint, never the secret.
type CreatedData struct {
	Scope          Scope      `json:"scope"`
	WorkspaceID    string     `json:"workspace_id,omitempty"`
	DeploymentID   string     `json:"deployment_id,omitempty"`
	Name           string     `json:"name"`
	Description    string     `json:"description,omitempty"`
	Role           Role       `json:"role"`
	ExpirationDays int        `json:"expiration_days,omitempty"`
	ExpiresAt      *time.Time `json:"expires_at,omitempty"`
	SecretHash     SecretHash `json:"secret_hash"`
	Fingerprint    string     `json:"fingerprint"`
}

// UpdatedData holds only the fields that changed, each with its value before.
type UpdatedData struct {
	Name                *string `json:"name,omitempty"`
	PreviousName        *string `json:"previous_name,omitempty"`
	Description         *string `json:"description,omitempty"`
	PreviousDescription *string `json:"previous_description,omitempty"`
	Role                Role    `json:"role,omitempty"`
	PreviousRole        Role    `json:"previous_role,omitempty"`
}

// RotatedData: a new secret replaced the old one, which stopped working at once.
// A rotation renews an expiring token for its original number of days.
type RotatedData struct {
	SecretHash          SecretHash `json:"secret_hash"`
	Fingerprint         string     `json:"fingerprint"`
	PreviousSecretHash  SecretHash `json:"previous_secret_hash"`
	PreviousFingerprint string     `json:"previous_fingerprint"`
	ExpiresAt           *time.Time `json:"expires_at,omitempty"`
}

// AssignedData: an organization token got (or changed) a role in a workspace.
type AssignedData struct {
	WorkspaceID  string `json:"workspace_id"`
	Role         Role   `json:"role"`
	PreviousRole Role   `json:"previous_role,omitempty"`
}

// UnassignedData: an organization token lost its role in a workspace.
type UnassignedData struct {
	WorkspaceID  string `json:"workspace_id"`
	PreviousRole Role   `json:"previous_role"`
}

// DeletedData: the token is gone for good; its history stays.
type DeletedData struct{}

// ReuseDetectedData: a secret the token had before a rotation was presented
// again and refused. Fingerprint is that secret's (the previous_fingerprint
// of the rotation that retired it), never the secret or its hash: the event
// says which old secret is out there without handing it to every reader of
// the stream. The request it came in is the event's actor.
//
// The ledger records reuse in bounded form: one event for the first try
// from a source, then at most one per source and interval standing for the
// tries made since. Count is how many tries the event stands for when that
// is more than one; it is omitted (zero) for one try, and in every event
// written before reuse was counted.
type ReuseDetectedData struct {
	Fingerprint string `json:"fingerprint"`
	Count       uint64 `json:"count,omitempty"`
}

// Tries is how many presentations of the old secret the event stands for:
// Count, or one when it is omitted.
func (d ReuseDetectedData) Tries() uint64 { return max(d.Count, 1) }

func (CreatedData) eventType() EventType       { return TokenCreated }
func (UpdatedData) eventType() EventType       { return TokenUpdated }
func (RotatedData) eventType() EventType       { return TokenRotated }
func (AssignedData) eventType() EventType      { return TokenAssigned }
func (UnassignedData) eventType() EventType    { return TokenUnassigned }
func (DeletedData) eventType() EventType       { return TokenDeleted }
func (ReuseDetectedData) eventType() EventType { return TokenReuseDetected }

// UnmarshalJSON decodes Data into the type named by event_type.
func (e *Event) UnmarshalJSON(b []byte) error {
	type plain Event
	var raw struct {
		plain
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*e = Event(raw.plain)
	var data EventData
	switch e.Type {
	case TokenCreated:
		data = &CreatedData{}
	case TokenUpdated:
		data = &UpdatedData{}
	case TokenRotated:
		data = &RotatedData{}
	case TokenAssigned:
		data = &AssignedData{}
	case TokenUnassigned:
		data = &UnassignedData{}
	case TokenDeleted:
		data = &DeletedData{}
	case TokenReuseDetected:
		data = &ReuseDetectedData{}
	default:
		return fmt.Errorf("decode event: unknown event_type %q", e.Type)
	}
	if len(raw.Data) > 0 && string(raw.Data) != "null" {
		if err := json.Unmarshal(raw.Data, data); err != nil {
			return fmt.Errorf("decode %s data: %w", e.Type, err)
		}
	}
	e.Data = derefData(data)
	return nil
}

// derefData stores payloads by value so a decoded event equals the one that was
// encoded.
func derefData(d EventData) EventData {
	switch v := d.(type) {
	case *CreatedData:
		return *v
	case *UpdatedData:
		return *v
	case *RotatedData:
		return *v
	case *AssignedData:
		return *v
	case *UnassignedData:
		return *v
	case *DeletedData:
		return *v
	case *ReuseDetectedData:
		return *v
	}
	return d
}

// ShownData is an event's data as people and services outside the ledger
// are shown it (the API's history, `ledger events tail`): every field but
// the secret's hashes. Any field whose name mentions a hash is left out, so
// a hash added to an event later is not shown by accident; fingerprints
// stay.
func ShownData(d EventData) (map[string]any, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	out := map[string]any{}
	if err := dec.Decode(&out); err != nil {
		return nil, err
	}
	for k := range out {
		if strings.Contains(k, "hash") {
			delete(out, k)
		}
	}
	return out, nil
}
