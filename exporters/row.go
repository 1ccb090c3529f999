package exporters

import (
	"fmt"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// Row is one event as an export holds it: the audit record, the stream
// sequence the event was stored at, and its hash. Columns, in order, are named
// by the parquet tags; "optional" columns hold null where the string is empty,
// and null reads back as "". The dictionary-encoded ("dict") columns are the
// ones with few distinct values, where a dictionary makes the file smaller and
// faster to filter; the others (ids, hashes, details) are nearly all distinct.
// The Parquet writer uses parquetRow, the same schema with pointers for nulls.
type Row struct {
	Sequence       int64            `parquet:"sequence"`
	EventID        string           `parquet:"event_id"`
	EventType      domain.EventType `parquet:"event_type,dict"`
	OccurredAt     time.Time        `parquet:"occurred_at,timestamp(microsecond:utc)"`
	OrganizationID string           `parquet:"organization_id,dict"`
	WorkspaceID    string           `parquet:"workspace_id,optional,dict"`
	DeploymentID   string           `parquet:"deployment_id,optional,dict"`
	TokenID        string           `parquet:"token_id"`
	TokenName      string           `parquet:"token_name"`
	Scope          domain.Scope     `parquet:"scope,dict"`
	Role           domain.Role      `parquet:"role,optional,dict"`
	PreviousRole   domain.Role      `parquet:"previous_role,optional,dict"`
	ActorTokenID   string           `parquet:"actor_token_id,dict"`
	SourceIP       string           `parquet:"source_ip,optional,dict"`
	UserAgent      string           `parquet:"user_agent,optional,dict"`
	RequestID      string           `parquet:"request_id,optional"`
	Fingerprint    string           `parquet:"fingerprint,optional"`
	PrevHash       string           `parquet:"prev_hash,optional"`
	Hash           string           `parquet:"hash"`
	// Details is a JSON object: the event's fields that have no column.
	Details string `parquet:"details"`
}

// Columns are the export's column names, in file order.
var Columns = []string{
	"sequence", "event_id", "event_type", "occurred_at", "organization_id",
	"workspace_id", "deployment_id", "token_id", "token_name", "scope", "role",
	"previous_role", "actor_token_id", "source_ip", "user_agent", "request_id",
	"fingerprint", "prev_hash", "hash", "details",
}

// RowOf returns the export row of event e, stored at stream sequence seq.
// JetStream sequences stay far below 2^63, so the int64 column holds them.
func RowOf(seq uint64, e domain.Event) Row {
	r := e.Record()
	return Row{
		Sequence: int64(seq), EventID: r.EventID, EventType: r.EventType, OccurredAt: r.OccurredAt.UTC(),
		OrganizationID: r.OrganizationID, WorkspaceID: r.WorkspaceID, DeploymentID: r.DeploymentID,
		TokenID: r.TokenID, TokenName: r.TokenName, Scope: r.Scope, Role: r.Role, PreviousRole: r.PreviousRole,
		ActorTokenID: r.ActorTokenID, SourceIP: r.SourceIP, UserAgent: r.UserAgent, RequestID: r.RequestID,
		Fingerprint: r.Fingerprint, PrevHash: r.PrevHash, Hash: e.Hash.String(), Details: r.Details,
	}
}

// Record returns the audit record the row was made from: for every field the
// hash covers it is the exact inverse of RowOf, so Record().ChainHash()
// recomputes Hash from the row alone.
func (w Row) Record() domain.Record {
	return domain.Record{
		EventID: w.EventID, EventType: w.EventType, OccurredAt: w.OccurredAt,
		OrganizationID: w.OrganizationID, WorkspaceID: w.WorkspaceID, DeploymentID: w.DeploymentID,
		TokenID: w.TokenID, TokenName: w.TokenName, Scope: w.Scope, Role: w.Role, PreviousRole: w.PreviousRole,
		ActorTokenID: w.ActorTokenID, SourceIP: w.SourceIP, UserAgent: w.UserAgent, RequestID: w.RequestID,
		Fingerprint: w.Fingerprint, Details: w.Details, PrevHash: w.PrevHash,
	}
}

// Format is the file format of an export.
type Format string

const (
	FormatParquet Format = "parquet"
	FormatJSONL   Format = "jsonl"
	FormatJSON    Format = "json"
)

// Formats lists every format, the default first.
var Formats = []Format{FormatParquet, FormatJSONL, FormatJSON}

// ParseFormat accepts a format's name.
func ParseFormat(s string) (Format, error) {
	for _, f := range Formats {
		if Format(s) == f {
			return f, nil
		}
	}
	return "", domain.Invalid("format", fmt.Sprintf("must be one of parquet, jsonl, json (got %q)", s))
}

// Ext is the file name extension of the format, with its dot.
func (f Format) Ext() string { return "." + string(f) }
