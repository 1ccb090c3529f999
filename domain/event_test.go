package domain_test

import (
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// eventsOfEveryType runs commands at now and returns one event of each type,
// keyed by type, plus a few variants (never-expiring rotation, first assignment).
func eventsOfEveryType(t *testing.T, now time.Time) map[string]domain.Event {
	t.Helper()
	env := func(i int) domain.Env {
		e := envAt(now.Add(time.Duration(i) * time.Minute))
		e.IdempotencyKey = "key-" + string(rune('a'+i))
		return e
	}
	out := make(map[string]domain.Event)
	tok, e, _, err := domain.Create(domain.CreateToken{
		OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "ci", Description: "multi\nline\tdesc é",
		Role: "ORGANIZATION_OWNER", ExpirationDays: intPtr(30),
	}, env(0))
	if err != nil {
		t.Fatal(err)
	}
	out["created expiring"] = e

	var changed bool
	e, changed, err = tok.Update(domain.UpdateToken{Name: strPtr("ci2"), Description: strPtr(""), Role: strPtr("ORGANIZATION_MEMBER")}, env(1))
	if err != nil || !changed {
		t.Fatal(err, changed)
	}
	out["updated all fields"] = e
	e, changed, err = tok.Update(domain.UpdateToken{Role: strPtr("ORGANIZATION_BILLING_ADMIN")}, env(2))
	if err != nil || !changed {
		t.Fatal(err, changed)
	}
	out["updated role only"] = e
	e, _, err = tok.Rotate(env(3))
	if err != nil {
		t.Fatal(err)
	}
	out["rotated expiring"] = e
	e, changed, err = tok.Assign("ws-1", "WORKSPACE_OWNER", env(4))
	if err != nil || !changed {
		t.Fatal(err, changed)
	}
	out["assigned first time"] = e
	e, changed, err = tok.Assign("ws-1", "WORKSPACE_MEMBER", env(5))
	if err != nil || !changed {
		t.Fatal(err, changed)
	}
	out["assigned role change"] = e
	e, err = tok.Unassign("ws-1", env(6))
	if err != nil {
		t.Fatal(err)
	}
	out["unassigned"] = e
	e, err = tok.Delete(env(7))
	if err != nil {
		t.Fatal(err)
	}
	out["deleted"] = e
	// A reuse is recorded on a deleted token too: it is not a command.
	e, err = tok.RecordReuse("0123456789abcdef", env(10))
	if err != nil {
		t.Fatal(err)
	}
	out["reuse detected after delete"] = e

	dep, e, _, err := domain.Create(depCmd(), env(8))
	if err != nil {
		t.Fatal(err)
	}
	out["created deployment never expiring"] = e
	e, _, err = dep.Rotate(env(9))
	if err != nil {
		t.Fatal(err)
	}
	out["rotated never expiring"] = e
	e, err = dep.RecordReuse("fedcba9876543210", env(11))
	if err != nil {
		t.Fatal(err)
	}
	out["reuse detected"] = e
	return out
}

func TestEventJSONRoundTrip(t *testing.T) {
	nows := []struct {
		name string
		now  time.Time
	}{
		{"fixed UTC time", t0},
		{"fixed time in another zone", t0.In(time.FixedZone("UTC+5:30", 5*3600+1800))},
		{"wall clock with monotonic reading", time.Now()},
	}
	for _, n := range nows {
		for name, e := range eventsOfEveryType(t, n.now) {
			t.Run(n.name+"/"+name, func(t *testing.T) {
				b, err := json.Marshal(e)
				if err != nil {
					t.Fatalf("Marshal: %v", err)
				}
				var got domain.Event
				if err := json.Unmarshal(b, &got); err != nil {
					t.Fatalf("Unmarshal(%s): %v", b, err)
				}
				if !reflect.DeepEqual(got, e) {
					t.Errorf("round trip changed the event\n got  %#v\n want %#v\n json %s", got, e, b)
				}
				if !got.OccurredAt.Equal(e.OccurredAt) {
					t.Errorf("OccurredAt = %v, want %v", got.OccurredAt, e.OccurredAt)
				}
				// A second round trip gives the same bytes.
				b2, err := json.Marshal(got)
				if err != nil {
					t.Fatal(err)
				}
				if string(b2) != string(b) {
					t.Errorf("re-encoding differs:\n %s\n %s", b, b2)
				}
			})
		}
	}
}

func TestEventJSONFieldNames(t *testing.T) {
	// Stored events and every consumer depend on these names.
	events := eventsOfEveryType(t, t0)
	tests := []struct {
		event    string
		wantType domain.EventType
		wantData []string
	}{
		{"created expiring", domain.TokenCreated, []string{"scope", "name", "description", "role", "expiration_days", "expires_at", "secret_hash", "fingerprint"}},
		{"created deployment never expiring", domain.TokenCreated, []string{"scope", "workspace_id", "deployment_id", "name", "role", "secret_hash", "fingerprint"}},
		{"updated all fields", domain.TokenUpdated, []string{"name", "previous_name", "description", "previous_description", "role", "previous_role"}},
		{"updated role only", domain.TokenUpdated, []string{"role", "previous_role"}},
		{"rotated expiring", domain.TokenRotated, []string{"secret_hash", "fingerprint", "previous_secret_hash", "previous_fingerprint", "expires_at"}},
		{"rotated never expiring", domain.TokenRotated, []string{"secret_hash", "fingerprint", "previous_secret_hash", "previous_fingerprint"}},
		{"assigned first time", domain.TokenAssigned, []string{"workspace_id", "role"}},
		{"assigned role change", domain.TokenAssigned, []string{"workspace_id", "role", "previous_role"}},
		{"unassigned", domain.TokenUnassigned, []string{"workspace_id", "previous_role"}},
		{"deleted", domain.TokenDeleted, nil},
		{"reuse detected", domain.TokenReuseDetected, []string{"fingerprint"}},
		{"reuse detected after delete", domain.TokenReuseDetected, []string{"fingerprint"}},
	}
	for _, tc := range tests {
		t.Run(tc.event, func(t *testing.T) {
			e, ok := events[tc.event]
			if !ok {
				t.Fatalf("no event %q", tc.event)
			}
			b, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			want := []string{"event_id", "event_type", "token_id", "organization_id", "token_name", "scope", "version", "occurred_at", "actor", "idempotency_key", "data", "hash"}
			if e.Scope != domain.ScopeOrganization {
				want = append(want, "workspace_id")
			}
			if e.Scope == domain.ScopeDeployment {
				want = append(want, "deployment_id")
			}
			if e.Type != domain.TokenCreated {
				want = append(want, "prev_hash")
			}
			for _, k := range want {
				if _, ok := m[k]; !ok {
					t.Errorf("event JSON lacks %q: %s", k, b)
				}
			}
			if len(m) != len(want) {
				t.Errorf("event JSON has %d top-level keys, want %d: %s", len(m), len(want), b)
			}
			if string(m["event_type"]) != `"`+string(tc.wantType)+`"` {
				t.Errorf("event_type = %s, want %q", m["event_type"], tc.wantType)
			}
			var actor map[string]string
			if err := json.Unmarshal(m["actor"], &actor); err != nil {
				t.Fatal(err)
			}
			wantActor := map[string]string{"actor_token_id": testActor.TokenID, "request_id": testActor.RequestID, "source_ip": testActor.SourceIP, "user_agent": testActor.UserAgent}
			if !reflect.DeepEqual(actor, wantActor) {
				t.Errorf("actor = %v, want %v", actor, wantActor)
			}
			var data map[string]json.RawMessage
			if err := json.Unmarshal(m["data"], &data); err != nil {
				t.Fatalf("data is not an object: %s", m["data"])
			}
			var keys []string
			for k := range data {
				keys = append(keys, k)
			}
			if !sameSet(keys, tc.wantData) {
				t.Errorf("data keys = %v, want %v", keys, tc.wantData)
			}
		})
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := make(map[string]int)
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

func TestEventJSONDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		json string
	}{
		{"unknown event_type", `{"event_id":"x","event_type":"TokenExploded","token_id":"tok_a","organization_id":"o","version":1,"occurred_at":"2025-03-14T09:26:53Z","actor":{"actor_token_id":"a"},"data":{}}`},
		{"lower-case event_type", `{"event_type":"tokencreated","data":{}}`},
		{"missing event_type", `{"event_id":"x","token_id":"tok_a","version":1,"data":{}}`},
		{"empty event_type", `{"event_type":"","data":{}}`},
		{"data of the wrong shape", `{"event_type":"TokenCreated","data":"oops"}`},
		{"secret_hash too short", `{"event_type":"TokenCreated","data":{"secret_hash":"abcd"}}`},
		{"secret_hash not hex", `{"event_type":"TokenRotated","data":{"secret_hash":"` + strings.Repeat("zz", 32) + `"}}`},
		{"bad time", `{"event_type":"TokenDeleted","occurred_at":"yesterday","data":{}}`},
		{"version not a number", `{"event_type":"TokenDeleted","version":"one","data":{}}`},
		{"not an object", `[1,2,3]`},
		{"truncated", `{"event_type":"TokenDeleted",`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e domain.Event
			if err := json.Unmarshal([]byte(tc.json), &e); err == nil {
				t.Errorf("Unmarshal succeeded: %+v", e)
			}
		})
	}
}

func TestEventJSONDecodesDataByType(t *testing.T) {
	h := domain.Hash("x").String()
	tests := []struct {
		name string
		json string
		want domain.EventData
	}{
		{"deleted without data", `{"event_type":"TokenDeleted"}`, domain.DeletedData{}},
		{"deleted with null data", `{"event_type":"TokenDeleted","data":null}`, domain.DeletedData{}},
		{"assigned", `{"event_type":"TokenAssigned","data":{"workspace_id":"ws-1","role":"WORKSPACE_OWNER"}}`,
			domain.AssignedData{WorkspaceID: "ws-1", Role: domain.RoleWorkspaceOwner}},
		{"unassigned", `{"event_type":"TokenUnassigned","data":{"workspace_id":"ws-1","previous_role":"WORKSPACE_OWNER"}}`,
			domain.UnassignedData{WorkspaceID: "ws-1", PreviousRole: domain.RoleWorkspaceOwner}},
		{"rotated", `{"event_type":"TokenRotated","data":{"secret_hash":"` + h + `","fingerprint":"f"}}`,
			domain.RotatedData{SecretHash: domain.Hash("x"), Fingerprint: "f"}},
		{"updated role", `{"event_type":"TokenUpdated","data":{"role":"WORKSPACE_AUTHOR","previous_role":"WORKSPACE_MEMBER"}}`,
			domain.UpdatedData{Role: domain.RoleWorkspaceAuthor, PreviousRole: domain.RoleWorkspaceMember}},
		{"reuse detected", `{"event_type":"TokenReuseDetected","data":{"fingerprint":"0123456789abcdef"}}`,
			domain.ReuseDetectedData{Fingerprint: "0123456789abcdef"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e domain.Event
			if err := json.Unmarshal([]byte(tc.json), &e); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(e.Data, tc.want) {
				t.Errorf("Data = %#v (%T), want %#v (%T)", e.Data, e.Data, tc.want, tc.want)
			}
		})
	}
}

func TestEventTypes(t *testing.T) {
	// The names are part of the stored record: they must never change.
	want := []string{"TokenCreated", "TokenUpdated", "TokenRotated", "TokenAssigned", "TokenUnassigned", "TokenDeleted", "TokenReuseDetected"}
	if len(domain.EventTypes) != len(want) {
		t.Fatalf("EventTypes = %v, want %v", domain.EventTypes, want)
	}
	for i, et := range domain.EventTypes {
		if string(et) != want[i] {
			t.Errorf("EventTypes[%d] = %q, want %q", i, et, want[i])
		}
	}
	// Every listed type decodes.
	for _, et := range domain.EventTypes {
		t.Run(string(et), func(t *testing.T) {
			var e domain.Event
			if err := json.Unmarshal([]byte(`{"event_type":"`+string(et)+`","data":{}}`), &e); err != nil {
				t.Fatalf("decode %s: %v", et, err)
			}
			if e.Type != et || e.Data == nil {
				t.Errorf("decoded type %q data %T", e.Type, e.Data)
			}
		})
	}
}

var uuidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestIdempotentEventID(t *testing.T) {
	tests := []struct {
		name     string
		org1     string
		key1     string
		org2     string
		key2     string
		wantSame bool
	}{
		{"same organization and key", "org-1", "key-1", "org-1", "key-1", true},
		{"same key, different organization", "org-1", "key-1", "org-2", "key-1", false},
		{"same organization, different key", "org-1", "key-1", "org-1", "key-2", false},
		{"key case matters", "org-1", "Key", "org-1", "key", false},
		{"boundary between organization and key", "org-1", "2key", "org-12", "key", false},
		{"empty key differs from a key", "org-1", "", "org-1", "k", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := domain.IdempotentEventID(tc.org1, tc.key1)
			b := domain.IdempotentEventID(tc.org2, tc.key2)
			for _, id := range []string{a, b} {
				if !uuidRe.MatchString(id) {
					t.Errorf("IdempotentEventID = %q, not a UUID", id)
				}
				if id[14] != '5' {
					t.Errorf("IdempotentEventID = %q, want version 5", id)
				}
			}
			if (a == b) != tc.wantSame {
				t.Errorf("ids %q and %q: same = %v, want %v", a, b, a == b, tc.wantSame)
			}
		})
	}
	t.Run("stable across calls", func(t *testing.T) {
		first := domain.IdempotentEventID("org-1", "retry-me")
		for i := 0; i < 10; i++ {
			if got := domain.IdempotentEventID("org-1", "retry-me"); got != first {
				t.Fatalf("call %d gave %q, first gave %q", i, got, first)
			}
		}
	})
}

func TestEnvEventIDAndIdempotencyKey(t *testing.T) {
	id := domain.IdempotentEventID("org-1", "create-1")
	env := envAt(t0)
	env.EventID = id
	env.IdempotencyKey = "create-1"
	tok, e, _, err := domain.Create(orgCmd(), env)
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != id || e.IdempotencyKey != "create-1" {
		t.Errorf("event id %q key %q, want %q and create-1", e.ID, e.IdempotencyKey, id)
	}

	// A retry of the same command derives the same event id, so the store can
	// drop it.
	env2 := envAt(t0.Add(time.Second))
	env2.EventID = domain.IdempotentEventID("org-1", "create-1")
	_, e2, _, err := domain.Create(orgCmd(), env2)
	if err != nil {
		t.Fatal(err)
	}
	if e2.ID != e.ID {
		t.Errorf("retry event id %q, want %q", e2.ID, e.ID)
	}

	// Without an EventID the id is random.
	e3, _, err := tok.Rotate(envAt(t0))
	if err != nil {
		t.Fatal(err)
	}
	e4, _, err := tok.Rotate(envAt(t0))
	if err != nil {
		t.Fatal(err)
	}
	if e3.ID == e4.ID || !uuidV4Re.MatchString(e3.ID) || e3.IdempotencyKey != "" {
		t.Errorf("random event ids %q %q (key %q)", e3.ID, e4.ID, e3.IdempotencyKey)
	}
}
