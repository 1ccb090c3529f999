package domain_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// A reuse report is on the token's own chain like any event, changes
// nothing about the token but its version and chain head, and is recorded
// for a deleted token as well.
func TestRecordReuseOnlyAdvancesVersionAndChain(t *testing.T) {
	tok, created, old := mustCreate(t, depCmd())
	rotated, _, err := tok.Rotate(envAt(t0.Add(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	before := tok.State()
	source := domain.Actor{TokenID: domain.SystemActor, RequestID: "req-7", SourceIP: "203.0.113.9", UserAgent: "curl/8.5"}
	fp := domain.Fingerprint(old.Reveal())
	at := t0.Add(time.Hour)
	e, err := tok.RecordReuse(fp, domain.Env{Now: at, Rand: envAt(at).Rand, Actor: source})
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != domain.TokenReuseDetected || e.Version != before.Version+1 || e.PrevHash != rotated.Hash || e.Actor != source || !e.OccurredAt.Equal(at) {
		t.Fatalf("event = %s v%d prev %s actor %+v at %v; want TokenReuseDetected v%d after %s by %+v at %v",
			e.Type, e.Version, e.PrevHash, e.Actor, e.OccurredAt, before.Version+1, rotated.Hash, source, at)
	}
	if e.Data != (domain.ReuseDetectedData{Fingerprint: fp}) {
		t.Fatalf("data = %#v", e.Data)
	}
	if e.Hash.String() != e.Record().ChainHash() {
		t.Fatal("the event's hash is not its record's chain hash")
	}
	after := tok.State()
	if after.Version != e.Version || after.ChainHead != e.Hash {
		t.Fatalf("token at v%d head %s, want v%d head %s", after.Version, after.ChainHead, e.Version, e.Hash)
	}
	after.Version, after.ChainHead = before.Version, before.ChainHead
	if !reflect.DeepEqual(after, before) {
		t.Fatalf("a reuse report changed the token (updated_at included):\nbefore %+v\nafter  %+v", before, after)
	}

	// The audit record names the reused secret by fingerprint, and holds
	// neither it nor any hash of it.
	r := e.Record()
	if r.Fingerprint != fp || r.Details != `{"version":`+itoa(e.Version)+`}` || r.SourceIP != source.SourceIP || r.UserAgent != source.UserAgent || r.ActorTokenID != domain.SystemActor {
		t.Fatalf("record = %+v", r)
	}
	b, _ := json.Marshal(e)
	for _, leak := range []string{old.Reveal(), domain.Hash(old.Reveal()).String()} {
		if strings.Contains(string(b), leak) {
			t.Fatalf("the event holds the old secret or its hash: %s", b)
		}
	}

	// Deleted: still recorded, still nothing else changes.
	del, err := tok.Delete(envAt(at.Add(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	late, err := tok.RecordReuse(fp, envAt(at.Add(2*time.Minute)))
	if err != nil {
		t.Fatalf("reuse on a deleted token: %v", err)
	}
	if late.PrevHash != del.Hash || !tok.Deleted() || !tok.UpdatedAt().Equal(del.OccurredAt) {
		t.Fatalf("after delete: prev %s (want %s), deleted %v, updated %v (want %v)", late.PrevHash, del.Hash, tok.Deleted(), tok.UpdatedAt(), del.OccurredAt)
	}
	replayed, err := domain.Replay([]domain.Event{created, rotated, e, del, late})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(replayed.State(), tok.State()) {
		t.Fatalf("replay differs:\n%+v\n%+v", replayed.State(), tok.State())
	}

	if _, err := tok.RecordReuse("", envAt(at)); err == nil {
		t.Fatal("a reuse report without a fingerprint was recorded")
	}
}

func itoa(n uint64) string { b, _ := json.Marshal(n); return string(b) }

// The view stamps copies with their last use; nothing else sets it, and it
// stays out of the token's state (snapshots keep it beside the token).
func TestLastUsedAtIsAStampOnACopy(t *testing.T) {
	tok, _, _ := mustCreate(t, depCmd())
	if !tok.LastUsedAt().IsZero() {
		t.Fatalf("a new token was last used at %v", tok.LastUsedAt())
	}
	c := tok.Clone()
	used := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	c.SetLastUsedAt(used.Add(400 * time.Millisecond))
	if !c.LastUsedAt().Equal(used) || !tok.LastUsedAt().IsZero() {
		t.Fatalf("copy last used %v (want %v, to the second), original %v (want zero)", c.LastUsedAt(), used, tok.LastUsedAt())
	}
	if !reflect.DeepEqual(c.State(), tok.State()) {
		t.Fatal("last use leaked into the token's state")
	}
	c.SetLastUsedAt(time.Time{})
	if !c.LastUsedAt().IsZero() {
		t.Fatal("SetLastUsedAt(zero) did not clear it")
	}
}
