package eventstore

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	mrand "math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// sampleEvents makes events of every type, with awkward strings (quotes,
// HTML characters, non-ASCII) that json.Marshal escapes or keeps.
func sampleEvents(t testing.TB, n int) []domain.Event {
	rnd := mrand.New(mrand.NewPCG(7, 7))
	names := []string{"ci", `say "hi"`, "<script>&", "héllo wörld", "a\\b", "emoji 🙂"}
	pick := func(xs []string) string { return xs[rnd.IntN(len(xs))] }
	var out []domain.Event
	for len(out) < n {
		env := domain.Env{Now: time.Date(2026, 1, 1, 0, 0, 0, rnd.IntN(1e9), time.UTC), Rand: rand.Reader,
			Actor: domain.Actor{TokenID: "tok_x", RequestID: pick([]string{"", "r1"}), SourceIP: pick([]string{"", "10.0.0.1"}), UserAgent: pick([]string{"", "curl/8 <x>"})}}
		if rnd.IntN(3) == 0 {
			env.IdempotencyKey, env.RequestHash, env.EventID = "k", "h", domain.IdempotentEventID("acme", "k")
		}
		var days *int
		if rnd.IntN(2) == 0 {
			d := 1 + rnd.IntN(365)
			days = &d
		}
		sc := []string{"organization", "workspace", "deployment"}[rnd.IntN(3)]
		cmd := domain.CreateToken{OrganizationID: "acme", Scope: sc, Name: pick(names), Description: pick([]string{"", "d", `q"`}), ExpirationDays: days}
		if sc != "organization" {
			cmd.WorkspaceID = "w1"
		}
		if sc == "deployment" {
			cmd.DeploymentID = "d1"
		}
		tok, e, _, err := domain.Create(cmd, env)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
		name, desc := pick(names), pick([]string{"", "new"})
		if e, changed, err := tok.Update(domain.UpdateToken{Name: &name, Description: &desc}, env); err == nil && changed {
			out = append(out, e)
		}
		if e, _, err := tok.Rotate(env); err == nil {
			out = append(out, e)
		}
		if sc == "organization" {
			if e, _, err := tok.Assign("w1", "WORKSPACE_OWNER", env); err == nil {
				out = append(out, e)
			}
			if e, err := tok.Unassign("w1", env); err == nil {
				out = append(out, e)
			}
		}
		reuse := env
		reuse.Actor.TokenID, reuse.IdempotencyKey, reuse.RequestHash, reuse.EventID = domain.SystemActor, "", "", ""
		if rnd.IntN(2) == 0 {
			if e, err := tok.RecordReuses(pick([]string{"0123456789abcdef", `fp"`}), uint64(1+rnd.IntN(3)), reuse); err == nil {
				out = append(out, e)
			}
		}
		if e, err := tok.Delete(env); err == nil {
			out = append(out, e)
		}
		// A reuse is recorded after a deletion too.
		if rnd.IntN(2) == 0 {
			if e, err := tok.RecordReuse("0123456789abcdef", reuse); err == nil {
				out = append(out, e)
			}
		}
	}
	return out
}

func TestTheDecoderReadsEveryEventAsEncodingJSONDoes(t *testing.T) {
	d := &eventDecoder{}
	fastPath := 0
	fastTypes := map[domain.EventType]bool{}
	for _, e := range sampleEvents(t, 2000) {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		var want domain.Event
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		got, err := d.decode(b)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("decode(%s)\n got %#v, %v\nwant %#v", b, got, err, want)
		}
		_, ok := canonical(b, map[string]string{})
		if ok {
			fastPath++
			fastTypes[e.Type] = true
		} else if !bytes.ContainsRune(b, '\\') {
			// Only a string json.Marshal had to escape may send an event
			// the ledger wrote down the slow path.
			t.Fatalf("an event with no escapes missed the canonical path: %s", b)
		}
	}
	if fastPath < 250 {
		t.Fatalf("only %d events took the canonical path: it is not doing its job", fastPath)
	}
	for _, typ := range domain.EventTypes {
		if !fastTypes[typ] {
			t.Errorf("no %s event took the canonical path", typ)
		}
	}
}

// FuzzDecoder checks that whatever bytes come, the decoder never accepts
// something encoding/json would reject or read differently.
func FuzzDecoder(f *testing.F) {
	for _, e := range sampleEvents(f, 30) {
		b, _ := json.Marshal(e)
		f.Add(b)
	}
	f.Add([]byte(`{"event_id":"x","event_type":"TokenDeleted","token_id":"t","organization_id":"o","version":2,"occurred_at":"2026-01-01T00:00:00Z","actor":{"actor_token_id":"a"},"data":{}}`))
	f.Add([]byte(`{"EVENT_ID":"x","event_type":"TokenDeleted"}`))
	// Numbers too large for an int field: encoding/json refuses them.
	for _, n := range []string{"9223372036854775808", "18446744073709551615"} {
		ev := `{"event_id":"x","event_type":"TokenCreated","token_id":"t","organization_id":"o","version":1,"occurred_at":"2026-01-01T00:00:00Z","actor":{"actor_token_id":"a"},"data":{"scope":"WORKSPACE","workspace_id":"w","name":"n","role":"WORKSPACE_MEMBER","expiration_days":` + n + `,"secret_hash":"0000000000000000000000000000000000000000000000000000000000000000","fingerprint":"f"}}`
		f.Add([]byte(ev))
		f.Add([]byte(ev + " ")) // not canonical: encoding/json decides
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d := &eventDecoder{}
		got, err := d.decode(b)
		var want domain.Event
		werr := json.Unmarshal(b, &want)
		if (err == nil) != (werr == nil) {
			t.Fatalf("decode error %v, encoding/json error %v", err, werr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("decode read %#v, encoding/json %#v", got, want)
		}
	})
}
