package domain

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// auditTime is how the ledger stores a moment: UTC, to the microsecond. An
// audit export's timestamps are microseconds (Parquet TIMESTAMP(MICROS)), and
// the hash chain covers them: a finer clock would not survive the export.
func auditTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// AuditTimeLayout is the text form of a moment in the hash chain and in JSON
// exports: RFC 3339, UTC, exactly six fractional digits.
const AuditTimeLayout = "2006-01-02T15:04:05.000000Z07:00"

// Record is an event as the audit log shows it: one row of an export, without
// the stream sequence (assigned after the event is decided) and the hash
// itself. Empty strings are the export's nulls. It never holds a secret or a
// secret's stored hash; the fingerprint stands for the secret instead.
type Record struct {
	EventID        string
	EventType      EventType
	OccurredAt     time.Time
	OrganizationID string
	// WorkspaceID is the workspace the token lives in; for TokenAssigned and
	// TokenUnassigned, the workspace the role is in.
	WorkspaceID  string
	DeploymentID string
	TokenID      string
	TokenName    string
	Scope        Scope
	// Role is the role the event granted (TokenCreated, a role change in
	// TokenUpdated, TokenAssigned); PreviousRole the one it replaced or took
	// away.
	Role         Role
	PreviousRole Role
	ActorTokenID string
	SourceIP     string
	UserAgent    string
	RequestID    string
	// Fingerprint is the new secret's, for TokenCreated and TokenRotated;
	// the presented old secret's, for TokenReuseDetected.
	Fingerprint string
	// Details holds the event's other fields as a JSON object, always with
	// "version".
	Details  string
	PrevHash string
}

// details are the fields of an event that have no column of their own.
type details struct {
	Version             uint64     `json:"version"`
	Name                *string    `json:"name,omitempty"`
	PreviousName        *string    `json:"previous_name,omitempty"`
	Description         *string    `json:"description,omitempty"`
	PreviousDescription *string    `json:"previous_description,omitempty"`
	ExpirationDays      int        `json:"expiration_days,omitempty"`
	ExpiresAt           *time.Time `json:"expires_at,omitempty"`
	PreviousFingerprint string     `json:"previous_fingerprint,omitempty"`
	// Count is TokenReuseDetected's, when more than one try.
	Count uint64 `json:"count,omitempty"`
}

// Record returns the event's audit record.
func (e Event) Record() Record {
	r := Record{
		EventID: e.ID, EventType: e.Type, OccurredAt: e.OccurredAt,
		OrganizationID: e.OrganizationID, WorkspaceID: e.WorkspaceID, DeploymentID: e.DeploymentID,
		TokenID: e.TokenID, TokenName: e.TokenName, Scope: e.Scope,
		ActorTokenID: e.Actor.TokenID, SourceIP: e.Actor.SourceIP, UserAgent: e.Actor.UserAgent, RequestID: e.Actor.RequestID,
	}
	if !e.PrevHash.IsZero() {
		r.PrevHash = e.PrevHash.String()
	}
	d := details{Version: e.Version}
	switch data := e.Data.(type) {
	case CreatedData:
		r.Role, r.Fingerprint = data.Role, data.Fingerprint
		if data.Description != "" {
			d.Description = &data.Description
		}
		d.ExpirationDays, d.ExpiresAt = data.ExpirationDays, data.ExpiresAt
	case UpdatedData:
		r.Role, r.PreviousRole = data.Role, data.PreviousRole
		d.Name, d.PreviousName = data.Name, data.PreviousName
		d.Description, d.PreviousDescription = data.Description, data.PreviousDescription
	case RotatedData:
		r.Fingerprint = data.Fingerprint
		d.PreviousFingerprint, d.ExpiresAt = data.PreviousFingerprint, data.ExpiresAt
	case AssignedData:
		r.WorkspaceID, r.Role, r.PreviousRole = data.WorkspaceID, data.Role, data.PreviousRole
	case UnassignedData:
		r.WorkspaceID, r.PreviousRole = data.WorkspaceID, data.PreviousRole
	case ReuseDetectedData:
		r.Fingerprint = data.Fingerprint
		d.Count = data.Count
	}
	r.Details = string(d.appendJSON(make([]byte, 0, 128)))
	return r
}

// appendJSON appends d as json.Marshal writes it, byte for byte (a test
// holds it to that), without reflection: an export computes it for every
// row.
func (d *details) appendJSON(b []byte) []byte {
	b = append(b, `{"version":`...)
	b = strconv.AppendUint(b, d.Version, 10)
	str := func(key string, v *string) {
		if v != nil {
			b = append(b, ',', '"')
			b = append(b, key...)
			b = append(b, '"', ':')
			b = AppendJSONString(b, *v, true)
		}
	}
	str("name", d.Name)
	str("previous_name", d.PreviousName)
	str("description", d.Description)
	str("previous_description", d.PreviousDescription)
	if d.ExpirationDays != 0 {
		b = append(b, `,"expiration_days":`...)
		b = strconv.AppendInt(b, int64(d.ExpirationDays), 10)
	}
	if d.ExpiresAt != nil {
		b = append(b, `,"expires_at":`...)
		t, err := d.ExpiresAt.MarshalJSON()
		if err != nil { // a year outside 0-9999: json.Marshal would fail too
			t = []byte("null")
		}
		b = append(b, t...)
	}
	if d.PreviousFingerprint != "" {
		b = append(b, `,"previous_fingerprint":`...)
		b = AppendJSONString(b, d.PreviousFingerprint, true)
	}
	if d.Count != 0 {
		b = append(b, `,"count":`...)
		b = strconv.AppendUint(b, d.Count, 10)
	}
	return append(b, '}')
}

// ChainHash is the hex SHA-256 that links a record into its token's chain.
// The recipe is public (README, "Audit export") so anyone can check an
// export without the ledger: the label "tokenledger-chain-v1", then each
// field in the order of Record, as its UTF-8 bytes preceded by their length
// as an unsigned varint; OccurredAt in AuditTimeLayout. PrevHash, the last
// field, ties the record to the one before it.
func (r Record) ChainHash() string { return r.chainSum().String() }

func (r Record) chainSum() EventHash {
	h := sha256.New()
	var buf []byte
	field := func(s string) {
		buf = binary.AppendUvarint(buf[:0], uint64(len(s)))
		buf = append(buf, s...)
		h.Write(buf)
	}
	field("tokenledger-chain-v1")
	for _, s := range [...]string{
		r.EventID, string(r.EventType), r.OccurredAt.UTC().Format(AuditTimeLayout),
		r.OrganizationID, r.WorkspaceID, r.DeploymentID, r.TokenID, r.TokenName, string(r.Scope),
		string(r.Role), string(r.PreviousRole), r.ActorTokenID, r.SourceIP, r.UserAgent, r.RequestID,
		r.Fingerprint, r.Details, r.PrevHash,
	} {
		field(s)
	}
	var sum EventHash
	h.Sum(sum[:0])
	return sum
}

// EventHash is a link of a token's hash chain: Event.Hash and Event.PrevHash.
// Its text form is lowercase hex; the zero value (no link) is omitted.
type EventHash [sha256.Size]byte

func (h EventHash) IsZero() bool   { return h == EventHash{} }
func (h EventHash) String() string { return hex.EncodeToString(h[:]) }

func (h EventHash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

func (h *EventHash) UnmarshalText(b []byte) error {
	if len(b) != 2*len(h) {
		return fmt.Errorf("event hash: want %d hex characters, got %d", 2*len(h), len(b))
	}
	if _, err := hex.Decode(h[:], b); err != nil {
		return fmt.Errorf("event hash: %w", err)
	}
	return nil
}
