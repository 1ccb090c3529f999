package eventstore

import (
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/tokenledger/tokenledger/domain"
)

// Every event message is also a CloudEvents 1.0 event in binary content mode
// (CloudEvents NATS protocol binding, 1.0.3): the attributes travel as ce-*
// headers and the body is the ledger's event JSON, untouched, so the ledger
// itself never needs the headers and events stored before them read the same.
// Header names are lowercase: nats.go matches header names case-sensitively,
// and that is the spelling the CloudEvents SDKs look for.
const (
	HeaderSpecVersion     = "ce-specversion"
	HeaderID              = "ce-id"
	HeaderSource          = "ce-source"
	HeaderType            = "ce-type"
	HeaderSubject         = "ce-subject"
	HeaderTime            = "ce-time"
	HeaderDataContentType = "ce-datacontenttype"
	// HeaderWatermillUUID is watermill-nats' WatermillUUIDHdr. Watermill takes
	// a message's UUID from it, and only from it, so without it every event
	// would reach a Watermill handler with an empty UUID. Spelled out here so
	// the ledger does not depend on Watermill.
	HeaderWatermillUUID = "_watermill_message_uuid"
)

// CloudEventsSpecVersion is the ce-specversion of every event.
const CloudEventsSpecVersion = "1.0"

// cloudEventTypes is part of every subscriber's contract, like the event type
// names: never change an entry. A change to an event's JSON that an existing
// reader would misread gets a new version (.v2) instead, published beside a
// schema of its own.
var cloudEventTypes = map[domain.EventType]string{
	domain.TokenCreated:       "io.tokenledger.token.created.v1",
	domain.TokenUpdated:       "io.tokenledger.token.updated.v1",
	domain.TokenRotated:       "io.tokenledger.token.rotated.v1",
	domain.TokenAssigned:      "io.tokenledger.token.assigned.v1",
	domain.TokenUnassigned:    "io.tokenledger.token.unassigned.v1",
	domain.TokenDeleted:       "io.tokenledger.token.deleted.v1",
	domain.TokenReuseDetected: "io.tokenledger.token.reuse-detected.v1",
}

var eventTypesByCloudEventType = func() map[string]domain.EventType {
	m := make(map[string]domain.EventType, len(cloudEventTypes))
	for t, ce := range cloudEventTypes {
		m[ce] = t
	}
	return m
}()

// CloudEventType is the ce-type of events of type t; "" for a type the ledger
// does not know.
func CloudEventType(t domain.EventType) string { return cloudEventTypes[t] }

// EventTypeOfCloudEvent is the inverse of CloudEventType; false for a ce-type
// that is not the ledger's.
func EventTypeOfCloudEvent(ceType string) (domain.EventType, bool) {
	t, ok := eventTypesByCloudEventType[ceType]
	return t, ok
}

// CloudEventSource is the ce-source of an organization's events. Event ids are
// unique on their own, so the source is there for routing and filtering by
// organization, not to make source+id unique.
func CloudEventSource(organizationID string) string {
	return "/tokenledger/organizations/" + organizationID
}

// newEventMsg makes the message that stores e: body as is, CloudEvents
// attributes in headers.
func newEventMsg(subject string, e domain.Event, body []byte) (*nats.Msg, error) {
	ceType := CloudEventType(e.Type)
	if ceType == "" {
		// An event type added without a ce-type would otherwise go out
		// unlabelled, and subscribers filtering on ce-type would miss it.
		return nil, fmt.Errorf("event type %q has no CloudEvents type", e.Type)
	}
	// One backing array for the eight values and a map sized for them: a
	// message per command, so its allocations show in the append rate.
	v := [...]string{
		CloudEventsSpecVersion, e.ID, CloudEventSource(e.OrganizationID), ceType, e.TokenID,
		// Same instant as occurred_at, in the layout of the hash chain and
		// the audit export: always six fractional digits, where the body's
		// encoding/json form drops trailing zeros.
		e.OccurredAt.UTC().Format(domain.AuditTimeLayout),
		"application/json", e.ID,
	}
	h := make(nats.Header, len(v))
	for i, k := range [len(v)]string{
		HeaderSpecVersion, HeaderID, HeaderSource, HeaderType, HeaderSubject,
		HeaderTime, HeaderDataContentType, HeaderWatermillUUID,
	} {
		h[k] = v[i : i+1 : i+1]
	}
	return &nats.Msg{Subject: subject, Data: body, Header: h}, nil
}
