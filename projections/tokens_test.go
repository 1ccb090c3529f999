package projections_test

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func env(at time.Time) domain.Env {
	return domain.Env{Now: at, Rand: rand.Reader, Actor: domain.Actor{TokenID: "tok_actor"}}
}

func create(t *testing.T, days *int) (*domain.Token, domain.Event, string) {
	t.Helper()
	tok, e, s, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "workspace", WorkspaceID: "ws1", Name: "bot", ExpirationDays: days}, env(t0))
	if err != nil {
		t.Fatal(err)
	}
	return tok, e, s.Reveal()
}

func TestVerifyTellsActiveRotatedDeletedExpiredUnknownAndMalformedApart(t *testing.T) {
	v := projections.NewTokens()
	tok, created, first := create(t, nil)
	one := 1
	exp, expCreated, expSecret := create(t, &one)
	_ = exp
	rotated, second, err := tok.Rotate(env(t0.Add(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	must(t, v.Apply(1, created))
	must(t, v.Apply(2, expCreated))
	must(t, v.Apply(3, rotated))

	other, otherCreated, otherSecret := create(t, nil)
	must(t, v.Apply(4, otherCreated))
	deleted, err := other.Delete(env(t0))
	must(t, err)
	must(t, v.Apply(5, deleted))

	now := t0.Add(time.Hour)
	cases := []struct {
		name   string
		secret string
		at     time.Time
		want   projections.Outcome
	}{
		{"current secret", second.Reveal(), now, projections.OutcomeActive},
		{"rotated-away secret", first, now, projections.OutcomeRotated},
		{"deleted token", otherSecret, now, projections.OutcomeDeleted},
		{"expiring token before its day is up", expSecret, t0.Add(23 * time.Hour), projections.OutcomeActive},
		{"expired token, judged by the clock alone", expSecret, t0.Add(24 * time.Hour), projections.OutcomeExpired},
		{"unknown well-formed secret", mustSecret(t), now, projections.OutcomeUnknown},
		{"malformed", "tlw_nope", now, projections.OutcomeMalformed},
		{"checksum broken", first[:len(first)-1] + flip(first[len(first)-1]), now, projections.OutcomeMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := v.Verify(tc.secret, tc.at)
			if got.Outcome != tc.want {
				t.Fatalf("outcome %s, want %s", got.Outcome, tc.want)
			}
			if got.Reason() == "" {
				t.Fatal("no reason given")
			}
		})
	}
}

func TestAnEventThatDoesNotContinueItsTokenIsRefusedAndChangesNothing(t *testing.T) {
	v := projections.NewTokens()
	tok, created, secret := create(t, nil)
	must(t, v.Apply(1, created))
	rot1, current, _ := tok.Clone().Rotate(env(t0))
	rot2, _, _ := tok.Clone().Rotate(env(t0)) // also version 2: a fork

	must(t, v.Apply(2, rot1))
	if err := v.Apply(3, rot2); err == nil {
		t.Fatal("a second version 2 was applied")
	}
	if v.Rejected() != 1 || v.Sequence() != 3 {
		t.Fatalf("rejected=%d sequence=%d, want 1 and 3 (seen but refused)", v.Rejected(), v.Sequence())
	}
	got, last, _ := v.Get("acme", tok.ID())
	if got.Version() != 2 || last != 3 {
		t.Fatalf("token at version %d, last seq %d; want version 2 and last seq 3 (the stream's, for the next append)", got.Version(), last)
	}
	// The ledger no longer vouches for a token whose history it could not follow.
	if out := v.Verify(current.Reveal(), t0).Outcome; out != projections.OutcomeQuarantined {
		t.Fatalf("current secret after a refused event: %s, want quarantined", out)
	}
	// An event for a token that was never created is refused too.
	_, orphanCreated, _ := create(t, nil)
	orphan, _ := domain.NewFromCreated(orphanCreated)
	del, _ := orphan.Delete(env(t0))
	if err := v.Apply(4, del); err == nil {
		t.Fatal("an event of an uncreated token was applied")
	}
	if v.Verify(secret, t0).Outcome != projections.OutcomeRotated {
		t.Fatal("the original secret should read as rotated away")
	}
	// Re-applying an old sequence (a replayed tail) is a no-op, not an error.
	if err := v.Apply(1, created); err != nil {
		t.Fatalf("re-applying sequence 1: %v", err)
	}
}

func TestWaitForReturnsOnceTheSequenceIsAppliedAndHonoursItsContext(t *testing.T) {
	v := projections.NewTokens()
	_, created, _ := create(t, nil)
	done := make(chan error, 1)
	go func() { done <- v.WaitFor(context.Background(), 1) }()
	select {
	case err := <-done:
		t.Fatalf("WaitFor returned %v before sequence 1 was applied", err)
	case <-time.After(50 * time.Millisecond):
	}
	must(t, v.Apply(1, created))
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("WaitFor did not wake up")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := v.WaitFor(ctx, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor past its deadline = %v", err)
	}
}

func TestListIsPerOrganizationOldestFirstAndHandsOutCopies(t *testing.T) {
	v := projections.NewTokens()
	var ids []string
	for i := range 3 {
		tok, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "t"}, env(t0.Add(time.Duration(i)*time.Minute)))
		must(t, err)
		must(t, v.Apply(uint64(i+1), e))
		ids = append(ids, tok.ID())
	}
	_, g, _, _ := domain.Create(domain.CreateToken{OrganizationID: "globex", Scope: "organization", Name: "g"}, env(t0))
	must(t, v.Apply(4, g))
	list := v.List("acme")
	if len(list) != 3 {
		t.Fatalf("acme has %d tokens, want 3", len(list))
	}
	for i, l := range list {
		if l.Token.ID() != ids[i] || l.Sequence != uint64(i+1) {
			t.Fatalf("list[%d] = %s at %d, want %s at %d (oldest first)", i, l.Token.ID(), l.Sequence, ids[i], i+1)
		}
	}
	// Changing a copy must not change the view.
	if _, _, err := list[0].Token.Rotate(env(t0)); err != nil {
		t.Fatal(err)
	}
	again, _, _ := v.Get("acme", ids[0])
	if again.Version() != 1 {
		t.Fatal("rotating a listed copy changed the view")
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustSecret(t *testing.T) string {
	s, err := domain.NewSecret(domain.ScopeWorkspace, rand.Reader)
	must(t, err)
	return s.Reveal()
}

func flip(c byte) string {
	if c == 'a' {
		return "b"
	}
	return "a"
}
