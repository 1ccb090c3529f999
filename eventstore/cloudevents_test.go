package eventstore_test

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	wmjetstream "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/domain/schemas"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
)

// wantCloudEventTypes is written out rather than taken from the code under
// test: these strings are what subscribers filter on, and a change to one must
// fail here.
var wantCloudEventTypes = map[domain.EventType]string{
	domain.TokenCreated:       "io.tokenledger.token.created.v1",
	domain.TokenUpdated:       "io.tokenledger.token.updated.v1",
	domain.TokenRotated:       "io.tokenledger.token.rotated.v1",
	domain.TokenAssigned:      "io.tokenledger.token.assigned.v1",
	domain.TokenUnassigned:    "io.tokenledger.token.unassigned.v1",
	domain.TokenDeleted:       "io.tokenledger.token.deleted.v1",
	domain.TokenReuseDetected: "io.tokenledger.token.reuse-detected.v1",
}

func TestCloudEventTypesMapBothWaysForEveryEventType(t *testing.T) {
	if len(wantCloudEventTypes) != len(domain.EventTypes) {
		t.Fatalf("the test knows %d event types, domain.EventTypes has %d", len(wantCloudEventTypes), len(domain.EventTypes))
	}
	for _, et := range domain.EventTypes {
		ce := eventstore.CloudEventType(et)
		if ce != wantCloudEventTypes[et] {
			t.Errorf("CloudEventType(%s) = %q, want %q", et, ce, wantCloudEventTypes[et])
		}
		if back, ok := eventstore.EventTypeOfCloudEvent(ce); !ok || back != et {
			t.Errorf("EventTypeOfCloudEvent(%q) = %q, %v; want %s", ce, back, ok, et)
		}
	}
	if ce := eventstore.CloudEventType("TokenExploded"); ce != "" {
		t.Errorf("CloudEventType of an unknown type = %q, want \"\"", ce)
	}
	if et, ok := eventstore.EventTypeOfCloudEvent("io.tokenledger.token.rotated.v2"); ok {
		t.Errorf("EventTypeOfCloudEvent of an unknown ce-type = %q, true", et)
	}
	if eventstore.HeaderWatermillUUID != wmnats.WatermillUUIDHdr {
		t.Errorf("HeaderWatermillUUID = %q, watermill-nats reads %q", eventstore.HeaderWatermillUUID, wmnats.WatermillUUIDHdr)
	}
}

// compileSchemas compiles every event type's schema from the files the repo
// ships, with formats asserted: in 2020-12 "format" is only an annotation
// unless the validator is told otherwise, and occurred_at must be checked.
func compileSchemas(t *testing.T) map[domain.EventType]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	out := map[domain.EventType]*jsonschema.Schema{}
	for _, et := range domain.EventTypes {
		name := schemas.File(et)
		if name == "" {
			t.Fatalf("no schema file for %s", et)
		}
		f, err := schemas.FS.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if id := doc.(map[string]any)["$id"]; id != schemas.IDPrefix+eventstore.CloudEventType(et) {
			t.Errorf("%s: $id = %v, want %s", name, id, schemas.IDPrefix+eventstore.CloudEventType(et))
		}
		if err := c.AddResource(name, doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		sch, err := c.Compile(name)
		if err != nil {
			t.Fatalf("compile %s: %v", name, err)
		}
		out[et] = sch
	}
	return out
}

func validate(sch *jsonschema.Schema, body []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}

// appendAll builds histories that between them produce every event type and
// every optional field the ledger writes, and appends them the way the ledger
// does. It returns the events in the order they were stored.
func appendAll(t *testing.T, st *eventstore.Store) []domain.Event {
	t.Helper()
	// A fractional second with trailing zeros: the body's occurred_at drops
	// them, ce-time keeps six digits; both must be the same instant.
	now := time.Date(2026, 11, 23, 10, 0, 0, 120_000_000, time.UTC)
	tick := func() time.Time { now = now.Add(1234567 * time.Microsecond); return now }
	var stored []domain.Event
	last := map[string]uint64{}
	add := func(e domain.Event, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		ap, err := st.Append(ctx(t), e, last[e.TokenID])
		if err != nil {
			t.Fatalf("append %s: %v", e.Type, err)
		}
		last[e.TokenID] = ap.Sequence
		stored = append(stored, e)
	}
	changed := func(e domain.Event, ok bool, err error) (domain.Event, error) {
		if err == nil && !ok {
			err = fmt.Errorf("%s changed nothing", e.Type)
		}
		return e, err
	}

	// The bootstrap token goes through the other publish path.
	boot, bootEvent, _, err := domain.Create(domain.CreateToken{
		OrganizationID: "acme", Scope: "organization", Name: "bootstrap", Role: "ORGANIZATION_OWNER",
		Description: "created by the ledger's first start",
	}, domain.Env{Now: tick(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		t.Fatal(err)
	}
	ap, err := st.AppendIfEmpty(ctx(t), bootEvent)
	if err != nil {
		t.Fatal(err)
	}
	last[boot.ID()] = ap.Sequence
	stored = append(stored, bootEvent)

	by := func() domain.Env {
		return domain.Env{Now: tick(), Rand: rand.Reader, Actor: domain.Actor{
			TokenID: boot.ID(), RequestID: "req-1", SourceIP: "192.0.2.7", UserAgent: "ledger-cli/1.0",
		}}
	}
	keyed := func(key string) domain.Env {
		e := by()
		e.IdempotencyKey, e.EventID, e.RequestHash = key, domain.IdempotentEventID("acme", key), "0123456789abcdef0123456789abcdef"
		return e
	}

	days := 30
	org, e, _, err := domain.Create(domain.CreateToken{
		OrganizationID: "acme", Scope: "organization", Name: "ci", Description: "pipeline", ExpirationDays: &days,
	}, keyed("create-ci"))
	add(e, err)
	name, desc, role := "ci-main", "", "ORGANIZATION_BILLING_ADMIN"
	add(changed(org.Update(domain.UpdateToken{Name: &name, Description: &desc, Role: &role}, by())))
	add(changed(org.Assign("ws-1", "WORKSPACE_AUTHOR", by())))
	add(changed(org.Assign("ws-1", "WORKSPACE_OWNER", by()))) // with previous_role
	add(changed(org.Assign("ws-2", "workspace_member", by())))
	add(org.Unassign("ws-2", by()))
	rotated, _, err := org.Rotate(keyed("rotate-ci"))
	add(rotated, err)
	add(org.RecordReuse(rotated.Data.(domain.RotatedData).PreviousFingerprint, domain.Env{
		Now: tick(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor, SourceIP: "198.51.100.9"},
	}))
	// The tries made since the first, in one event with their count.
	add(org.RecordReuses(rotated.Data.(domain.RotatedData).PreviousFingerprint, 2600, domain.Env{
		Now: tick(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor, SourceIP: "198.51.100.9"},
	}))
	add(org.Delete(by()))

	ws, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "workspace", WorkspaceID: "ws-1", Name: "deployer"}, by())
	add(e, err)
	wsRole := "WORKSPACE_OPERATOR"
	add(changed(ws.Update(domain.UpdateToken{Role: &wsRole}, by())))
	e, _, err = ws.Rotate(by())
	add(e, err)

	_, e, _, err = domain.Create(domain.CreateToken{OrganizationID: "globex", Scope: "deployment", WorkspaceID: "ws-9", DeploymentID: "dep-3", Name: "runner"}, by())
	add(e, err)
	return stored
}

func TestEveryEventIsACloudEventWhoseBodyMatchesItsSchema(t *testing.T) {
	st, _, ns := eventstoretest.MustStore(t)
	stored := appendAll(t, st)
	compiled := compileSchemas(t)

	// Read as any service would: its own connection, a plain ordered consumer.
	_, js := eventstoretest.MustConnect(t, ns)
	cons, err := js.OrderedConsumer(ctx(t), "TOKENS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[domain.EventType]int{}
	for i, want := range stored {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		checkCloudEvent(t, msg, want, compiled)
		seen[want.Type]++

		if i == len(stored)-1 {
			// Watermill's NATS unmarshaler must see the event id as the
			// message's UUID and the event JSON as its payload.
			wm, err := wmjetstream.DefaultUnmarshaler{}.Unmarshal(msg)
			if err != nil {
				t.Fatalf("watermill unmarshal: %v", err)
			}
			if wm.UUID != want.ID {
				t.Errorf("watermill UUID = %q, want the event id %q", wm.UUID, want.ID)
			}
			if !bytes.Equal(wm.Payload, msg.Data()) {
				t.Errorf("watermill payload = %s, want the body %s", wm.Payload, msg.Data())
			}
			if got := wm.Metadata.Get(eventstore.HeaderType); got != wantCloudEventTypes[want.Type] {
				t.Errorf("watermill metadata ce-type = %q, want %q", got, wantCloudEventTypes[want.Type])
			}
		}
	}
	for _, et := range domain.EventTypes {
		if seen[et] == 0 {
			t.Errorf("no %s event was published: the test does not cover it", et)
		}
	}
}

func checkCloudEvent(t *testing.T, msg jetstream.Msg, want domain.Event, compiled map[domain.EventType]*jsonschema.Schema) {
	t.Helper()
	body := msg.Data()
	wantBody, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, wantBody) {
		t.Errorf("%s %s: body changed on the way:\n got %s\nwant %s", want.Type, want.ID, body, wantBody)
	}
	// The headers are checked against the body a subscriber gets, not against
	// the Go value: that is what a non-Go reader will compare them with.
	var got struct {
		ID             string `json:"event_id"`
		Type           string `json:"event_type"`
		TokenID        string `json:"token_id"`
		OrganizationID string `json:"organization_id"`
		OccurredAt     string `json:"occurred_at"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("body: %v", err)
	}
	occurred, err := time.Parse(time.RFC3339Nano, got.OccurredAt)
	if err != nil {
		t.Fatalf("occurred_at %q: %v", got.OccurredAt, err)
	}

	h := msg.Headers()
	wantHeaders := map[string]string{
		"ce-specversion":          "1.0",
		"ce-id":                   got.ID,
		"ce-source":               "/tokenledger/organizations/" + got.OrganizationID,
		"ce-type":                 wantCloudEventTypes[domain.EventType(got.Type)],
		"ce-subject":              got.TokenID,
		"ce-time":                 occurred.UTC().Format(domain.AuditTimeLayout),
		"ce-datacontenttype":      "application/json",
		"_watermill_message_uuid": got.ID,
		"Nats-Msg-Id":             got.ID,
	}
	for name, value := range wantHeaders {
		if vs := h.Values(name); len(vs) != 1 || vs[0] != value {
			t.Errorf("%s %s: header %s = %q, want [%q]", got.Type, got.ID, name, vs, value)
		}
	}
	if ceTime, err := time.Parse(time.RFC3339, h.Get("ce-time")); err != nil || !ceTime.Equal(occurred) {
		t.Errorf("%s %s: ce-time %q is not occurred_at %q (%v)", got.Type, got.ID, h.Get("ce-time"), got.OccurredAt, err)
	}
	if et, ok := eventstore.EventTypeOfCloudEvent(h.Get("ce-type")); !ok || string(et) != got.Type {
		t.Errorf("%s %s: ce-type %q maps back to %q, %v", got.Type, got.ID, h.Get("ce-type"), et, ok)
	}
	if !strings.HasSuffix(msg.Subject(), "."+got.TokenID+"."+got.Type) {
		t.Errorf("%s %s: stored on subject %s", got.Type, got.ID, msg.Subject())
	}
	// A structured-mode marker would make CloudEvents readers look for the
	// attributes in the body, where they are not.
	if ct := h.Get("content-type") + h.Get("Content-Type"); ct != "" {
		t.Errorf("%s %s: content-type header %q in binary mode", got.Type, got.ID, ct)
	}

	for et, sch := range compiled {
		err := validate(sch, body)
		if et == want.Type && err != nil {
			t.Errorf("%s %s does not match its schema %s: %v\nbody: %s", got.Type, got.ID, schemas.File(et), err, body)
		}
		if et != want.Type && err == nil {
			t.Errorf("%s %s matches the schema of %s too", got.Type, got.ID, et)
		}
	}
}

// TestSchemasRejectWhatTheLedgerNeverWrites proves the schemas can fail: each
// case starts from a body the schema accepts and breaks one thing.
func TestSchemasRejectWhatTheLedgerNeverWrites(t *testing.T) {
	compiled := compileSchemas(t)
	e := env()
	e.Actor = domain.Actor{TokenID: domain.SystemActor}
	days := 7
	tok, created, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "workspace", WorkspaceID: "ws-1", Name: "ci", ExpirationDays: &days}, e)
	if err != nil {
		t.Fatal(err)
	}
	rotated, _, err := tok.Rotate(e)
	if err != nil {
		t.Fatal(err)
	}
	reused, err := tok.RecordReuses(rotated.Data.(domain.RotatedData).PreviousFingerprint, 3, e)
	if err != nil {
		t.Fatal(err)
	}
	deleted, err := tok.Delete(e)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		event domain.Event
		edit  func(m map[string]any)
	}{
		{"version is a string", rotated, func(m map[string]any) { m["version"] = "2" }},
		{"version is not a whole number", rotated, func(m map[string]any) { m["version"] = 2.5 }},
		{"event_id missing", rotated, func(m map[string]any) { delete(m, "event_id") }},
		{"hash missing", rotated, func(m map[string]any) { delete(m, "hash") }},
		{"prev_hash missing after the first event", rotated, func(m map[string]any) { delete(m, "prev_hash") }},
		{"prev_hash on a TokenCreated", created, func(m map[string]any) { m["prev_hash"] = m["hash"] }},
		{"hash in upper case", rotated, func(m map[string]any) { m["hash"] = strings.ToUpper(m["hash"].(string)) }},
		{"unknown top-level field", rotated, func(m map[string]any) { m["secret"] = "tlo_x" }},
		{"occurred_at is not a date-time", rotated, func(m map[string]any) { m["occurred_at"] = "yesterday" }},
		{"actor without actor_token_id", rotated, func(m map[string]any) { m["actor"] = map[string]any{"request_id": "r"} }},
		{"event_type of another event", rotated, func(m map[string]any) { m["event_type"] = "TokenCreated" }},
		{"idempotency_key without request_hash", rotated, func(m map[string]any) { m["idempotency_key"] = "k1" }},
		{"workspace token without workspace_id", rotated, func(m map[string]any) { delete(m, "workspace_id") }},
		{"created without secret_hash", created, func(m map[string]any) { delete(data(m), "secret_hash") }},
		{"secret_hash too short", created, func(m map[string]any) { data(m)["secret_hash"] = "abcd" }},
		{"expiration_days is a string", created, func(m map[string]any) { data(m)["expiration_days"] = "7" }},
		{"expiration_days without expires_at", created, func(m map[string]any) { delete(data(m), "expires_at") }},
		{"role of another scope", created, func(m map[string]any) { data(m)["role"] = "ORGANIZATION_OWNER" }},
		{"rotated without previous_secret_hash", rotated, func(m map[string]any) { delete(data(m), "previous_secret_hash") }},
		{"fingerprint is a number", rotated, func(m map[string]any) { data(m)["fingerprint"] = 42 }},
		{"unknown data field", rotated, func(m map[string]any) { data(m)["secret"] = "tlo_x" }},
		{"reuse count of one (one try has none)", reused, func(m map[string]any) { data(m)["count"] = 1 }},
		{"reuse count is a string", reused, func(m map[string]any) { data(m)["count"] = "3" }},
		{"deleted with data", deleted, func(m map[string]any) { m["data"] = map[string]any{"reason": "x"} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sch := compiled[c.event.Type]
			body, err := json.Marshal(c.event)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(sch, body); err != nil {
				t.Fatalf("the unbroken %s is refused: %v", c.event.Type, err)
			}
			var m map[string]any
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatal(err)
			}
			c.edit(m)
			broken, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(sch, broken); err == nil {
				t.Fatalf("schema %s accepts %s", schemas.File(c.event.Type), broken)
			}
		})
	}
}

func data(m map[string]any) map[string]any { return m["data"].(map[string]any) }

// TestSchemasShareOneEnvelope keeps the seven files from drifting apart: they
// are written out in full, so a reader in any language needs only one of them.
func TestSchemasShareOneEnvelope(t *testing.T) {
	var first map[string]any
	var firstName string
	for _, et := range domain.EventTypes {
		raw, err := schemas.FS.ReadFile(schemas.File(et))
		if err != nil {
			t.Fatal(err)
		}
		var s map[string]any
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("%s: %v", schemas.File(et), err)
		}
		if s["$schema"] != "https://json-schema.org/draft/2020-12/schema" || s["additionalProperties"] != false {
			t.Errorf("%s: $schema %v, additionalProperties %v", schemas.File(et), s["$schema"], s["additionalProperties"])
		}
		props := s["properties"].(map[string]any)
		if c := props["event_type"].(map[string]any)["const"]; c != string(et) {
			t.Errorf("%s: event_type const %v, want %s", schemas.File(et), c, et)
		}
		defs := s["$defs"].(map[string]any)
		if first == nil {
			first, firstName = s, schemas.File(et)
			continue
		}
		firstProps := first["properties"].(map[string]any)
		if a, b := slices.Sorted(maps.Keys(props)), slices.Sorted(maps.Keys(firstProps)); !slices.Equal(a, b) {
			t.Errorf("%s has fields %v, %s has %v", schemas.File(et), a, firstName, b)
		}
		for _, f := range []string{"event_id", "token_id", "organization_id", "token_name", "occurred_at", "actor", "idempotency_key", "request_hash", "hash"} {
			if !jsonEqual(props[f], firstProps[f]) {
				t.Errorf("%s: %s differs from %s's", schemas.File(et), f, firstName)
			}
		}
		for name, def := range defs {
			if other, ok := first["$defs"].(map[string]any)[name]; ok && !jsonEqual(def, other) {
				t.Errorf("%s: $defs/%s differs from %s's", schemas.File(et), name, firstName)
			}
		}
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// TestEventsWithoutCloudEventHeadersStillLoad: events stored before the ledger
// wrote ce-* headers carry none, and the ledger reads bodies only.
func TestEventsWithoutCloudEventHeadersStillLoad(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	tok, created := mustCreate(t, "acme")
	body, err := json.Marshal(created)
	if err != nil {
		t.Fatal(err)
	}
	old := nats.NewMsg(st.Subject(created))
	old.Data = body
	ack, err := js.PublishMsg(ctx(t), old, jetstream.WithMsgID(created.ID))
	if err != nil {
		t.Fatal(err)
	}
	rotated, _, err := tok.Rotate(env())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Append(ctx(t), rotated, ack.Sequence); err != nil {
		t.Fatal(err)
	}
	got, err := st.Load(ctx(t), "acme", tok.ID())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Event.ID != created.ID || got[1].Event.ID != rotated.ID {
		t.Fatalf("history = %+v, want the headerless create then the rotation", got)
	}
	rec, err := st.Get(ctx(t), ack.Sequence)
	if err != nil || rec.Event.ID != created.ID {
		t.Fatalf("get headerless event: %+v, %v", rec, err)
	}
	if _, err := domain.Replay([]domain.Event{got[0].Event, got[1].Event}); err != nil {
		t.Fatal(err)
	}
}
