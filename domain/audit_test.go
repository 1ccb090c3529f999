package domain_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// A token's events form a hash chain: each event's Hash is its record's
// ChainHash, each PrevHash the hash of the event before, and the view refuses
// an event that does not continue the chain.
func TestEventsChainTheirHashes(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	env := envAt(now)
	days := 30
	tok, created, _, err := domain.Create(domain.CreateToken{OrganizationID: "org-1", Scope: "organization", Name: "ci", ExpirationDays: &days}, env)
	if err != nil {
		t.Fatal(err)
	}
	events := []domain.Event{created}
	name := "ci renamed"
	if e, _, err := tok.Update(domain.UpdateToken{Name: &name}, env); err != nil {
		t.Fatal(err)
	} else {
		events = append(events, e)
	}
	if e, _, err := tok.Rotate(env); err != nil {
		t.Fatal(err)
	} else {
		events = append(events, e)
	}
	if e, _, err := tok.Assign("ws-1", "WORKSPACE_OWNER", env); err != nil {
		t.Fatal(err)
	} else {
		events = append(events, e)
	}
	if e, err := tok.Delete(env); err != nil {
		t.Fatal(err)
	} else {
		events = append(events, e)
	}

	var prev domain.EventHash
	for i, e := range events {
		if e.Hash.IsZero() || e.Hash.String() != e.Record().ChainHash() {
			t.Fatalf("event %d (%s): hash %s, its record hashes to %s", i, e.Type, e.Hash, e.Record().ChainHash())
		}
		if e.PrevHash != prev {
			t.Fatalf("event %d (%s): prev_hash %s, want the previous event's %s", i, e.Type, e.PrevHash, prev)
		}
		prev = e.Hash
		if got := e.OccurredAt; got.Nanosecond()%1000 != 0 || got.Location() != time.UTC {
			t.Fatalf("event %d occurred at %v: want UTC to the microsecond, as exports store it", i, got)
		}
		if e.TokenName != tok.Name() && e.Type != domain.TokenCreated {
			t.Fatalf("event %d names the token %q, want %q", i, e.TokenName, tok.Name())
		}
		if strings.Contains(e.Record().Details, tok.SecretHash().String()) {
			t.Fatalf("event %d: the audit record holds the stored secret hash", i)
		}
	}

	replayed, err := domain.Replay(events)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(replayed.State(), tok.State()) {
		t.Fatalf("replayed token differs:\n%+v\n%+v", replayed.State(), tok.State())
	}

	// A forged event whose prev_hash skips a link is refused.
	forged := events[2]
	forged.PrevHash = events[0].Hash
	if _, err := domain.Replay([]domain.Event{events[0], events[1], forged}); err == nil || !strings.Contains(err.Error(), "hash chain") {
		t.Fatalf("replay with a broken chain: err = %v, want a hash chain error", err)
	}

	// Every field of the record is covered: changing any one changes the hash.
	r := events[1].Record()
	base := r.ChainHash()
	for _, edit := range []func(*domain.Record){
		func(r *domain.Record) { r.EventID += "x" },
		func(r *domain.Record) { r.EventType = domain.TokenDeleted },
		func(r *domain.Record) { r.OccurredAt = r.OccurredAt.Add(time.Microsecond) },
		func(r *domain.Record) { r.OrganizationID += "x" },
		func(r *domain.Record) { r.WorkspaceID += "x" },
		func(r *domain.Record) { r.DeploymentID += "x" },
		func(r *domain.Record) { r.TokenID += "x" },
		func(r *domain.Record) { r.TokenName += "x" },
		func(r *domain.Record) { r.Scope = domain.ScopeWorkspace },
		func(r *domain.Record) { r.Role = "WORKSPACE_OWNER" },
		func(r *domain.Record) { r.PreviousRole = "WORKSPACE_OWNER" },
		func(r *domain.Record) { r.ActorTokenID += "x" },
		func(r *domain.Record) { r.SourceIP += "x" },
		func(r *domain.Record) { r.UserAgent += "x" },
		func(r *domain.Record) { r.RequestID += "x" },
		func(r *domain.Record) { r.Fingerprint += "x" },
		func(r *domain.Record) { r.Details += " " },
		func(r *domain.Record) { r.PrevHash = "" },
		// Field boundaries count: moving a character from one field to
		// the next is a change too.
		func(r *domain.Record) {
			r.EventID, r.EventType = r.EventID+"T", domain.EventType(string(r.EventType)[1:])
		},
	} {
		changed := r
		edit(&changed)
		if changed.ChainHash() == base {
			t.Fatalf("an edit of the record left its hash unchanged: %+v", changed)
		}
	}
}
