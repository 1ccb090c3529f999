package eventstore

import (
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// encodeEvent returns exactly the bytes json.Marshal(e) would, the shape the
// canonical scan reads back, at a fraction of the cost: encoding/json finds
// its way through the struct tags, the Data interface and the hashes'
// MarshalText by reflection on every command, and that was a quarter of a
// command's CPU before the publish. An event this encoder does not know how
// to write the same way (an unknown data type, a time encoding/json would
// refuse) goes to encoding/json itself, so the two can never disagree
// (TestEncodeEventMatchesEncodingJSON, FuzzEncodeEvent).
func encodeEvent(e domain.Event) ([]byte, error) {
	b, ok := appendEvent(make([]byte, 0, 1024), e)
	if !ok {
		return json.Marshal(e)
	}
	return b, nil
}

// appendEvent appends e's JSON to b, field by field in struct order with the
// omitempty and omitzero rules of domain.Event's tags; false if e holds
// something only encoding/json should write.
func appendEvent(b []byte, e domain.Event) ([]byte, bool) {
	ok := true
	b = append(b, `{"event_id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"event_type":`...)
	b = appendString(b, string(e.Type))
	b = append(b, `,"token_id":`...)
	b = appendString(b, e.TokenID)
	b = append(b, `,"organization_id":`...)
	b = appendString(b, e.OrganizationID)
	b = append(b, `,"token_name":`...)
	b = appendString(b, e.TokenName)
	b = append(b, `,"scope":`...)
	b = appendString(b, string(e.Scope))
	b = appendOptString(b, `,"workspace_id":`, e.WorkspaceID)
	b = appendOptString(b, `,"deployment_id":`, e.DeploymentID)
	b = append(b, `,"version":`...)
	b = strconv.AppendUint(b, e.Version, 10)
	b = append(b, `,"occurred_at":`...)
	b, ok = appendTime(b, e.OccurredAt)
	b = append(b, `,"actor":{"actor_token_id":`...)
	b = appendString(b, e.Actor.TokenID)
	b = appendOptString(b, `,"request_id":`, e.Actor.RequestID)
	b = appendOptString(b, `,"source_ip":`, e.Actor.SourceIP)
	b = appendOptString(b, `,"user_agent":`, e.Actor.UserAgent)
	b = append(b, '}')
	b = appendOptString(b, `,"idempotency_key":`, e.IdempotencyKey)
	b = appendOptString(b, `,"request_hash":`, e.RequestHash)
	b = append(b, `,"data":`...)
	var dataOK bool
	b, dataOK = appendData(b, e.Data)
	if !e.PrevHash.IsZero() {
		b = append(b, `,"prev_hash":`...)
		b = appendHex(b, e.PrevHash[:])
	}
	if !e.Hash.IsZero() {
		b = append(b, `,"hash":`...)
		b = appendHex(b, e.Hash[:])
	}
	b = append(b, '}')
	return b, ok && dataOK
}

func appendData(b []byte, data domain.EventData) ([]byte, bool) {
	ok := true
	switch d := data.(type) {
	case domain.CreatedData:
		b = append(b, `{"scope":`...)
		b = appendString(b, string(d.Scope))
		b = appendOptString(b, `,"workspace_id":`, d.WorkspaceID)
		b = appendOptString(b, `,"deployment_id":`, d.DeploymentID)
		b = append(b, `,"name":`...)
		b = appendString(b, d.Name)
		b = appendOptString(b, `,"description":`, d.Description)
		b = append(b, `,"role":`...)
		b = appendString(b, string(d.Role))
		if d.ExpirationDays != 0 {
			b = append(b, `,"expiration_days":`...)
			b = strconv.AppendInt(b, int64(d.ExpirationDays), 10)
		}
		if d.ExpiresAt != nil {
			b = append(b, `,"expires_at":`...)
			b, ok = appendTime(b, *d.ExpiresAt)
		}
		b = append(b, `,"secret_hash":`...)
		b = appendHex(b, d.SecretHash[:])
		b = append(b, `,"fingerprint":`...)
		b = appendString(b, d.Fingerprint)
	case domain.UpdatedData:
		// Every field is optional here, so the first one written has no comma.
		b = append(b, '{')
		start := len(b)
		sep := func() {
			if len(b) > start {
				b = append(b, ',')
			}
		}
		for _, f := range [...]struct {
			key string
			v   *string
		}{{`"name":`, d.Name}, {`"previous_name":`, d.PreviousName}, {`"description":`, d.Description}, {`"previous_description":`, d.PreviousDescription}} {
			if f.v != nil {
				sep()
				b = append(b, f.key...)
				b = appendString(b, *f.v)
			}
		}
		if d.Role != "" {
			sep()
			b = append(b, `"role":`...)
			b = appendString(b, string(d.Role))
		}
		if d.PreviousRole != "" {
			sep()
			b = append(b, `"previous_role":`...)
			b = appendString(b, string(d.PreviousRole))
		}
	case domain.RotatedData:
		b = append(b, `{"secret_hash":`...)
		b = appendHex(b, d.SecretHash[:])
		b = append(b, `,"fingerprint":`...)
		b = appendString(b, d.Fingerprint)
		b = append(b, `,"previous_secret_hash":`...)
		b = appendHex(b, d.PreviousSecretHash[:])
		b = append(b, `,"previous_fingerprint":`...)
		b = appendString(b, d.PreviousFingerprint)
		if d.ExpiresAt != nil {
			b = append(b, `,"expires_at":`...)
			b, ok = appendTime(b, *d.ExpiresAt)
		}
	case domain.AssignedData:
		b = append(b, `{"workspace_id":`...)
		b = appendString(b, d.WorkspaceID)
		b = append(b, `,"role":`...)
		b = appendString(b, string(d.Role))
		b = appendOptString(b, `,"previous_role":`, string(d.PreviousRole))
	case domain.UnassignedData:
		b = append(b, `{"workspace_id":`...)
		b = appendString(b, d.WorkspaceID)
		b = append(b, `,"previous_role":`...)
		b = appendString(b, string(d.PreviousRole))
	case domain.DeletedData:
		b = append(b, '{')
	case domain.ReuseDetectedData:
		b = append(b, `{"fingerprint":`...)
		b = appendString(b, d.Fingerprint)
		if d.Count != 0 {
			b = append(b, `,"count":`...)
			b = strconv.AppendUint(b, d.Count, 10)
		}
	default:
		// nil, a pointer, a type added later: encoding/json's business.
		return b, false
	}
	return append(b, '}'), ok
}

// appendString writes s as json.Marshal does, HTML escaping included.
func appendString(b []byte, s string) []byte { return domain.AppendJSONString(b, s, true) }

func appendOptString(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, key...)
	return appendString(b, v)
}

func appendHex(b []byte, p []byte) []byte {
	b = append(b, '"')
	b = hex.AppendEncode(b, p)
	return append(b, '"')
}

// appendTime writes t as time.Time's MarshalJSON does (RFC 3339 with the
// nanoseconds it has); false where MarshalJSON would fail (a year outside
// 0-9999, an offset it cannot write).
func appendTime(b []byte, t time.Time) ([]byte, bool) {
	b = append(b, '"')
	b, err := t.AppendText(b)
	if err != nil {
		return b, false
	}
	return append(b, '"'), true
}
