package projections_test

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

// A string that starts with a real secret is still malformed: Verify hashes
// the first SecretLen bytes before judging the format, and must not let that
// hash's match answer for the whole string.
func TestAMalformedStringIsNeverAnsweredFromTheIndexes(t *testing.T) {
	v := projections.NewTokens()
	_, created, secret := create(t, nil)
	must(t, v.Apply(1, created))
	for _, s := range []string{secret + "x", secret + secret, secret[:len(secret)-1]} {
		got := v.Verify(s, t0)
		if got.Outcome != projections.OutcomeMalformed || got.Token() != nil {
			t.Errorf("Verify(%d bytes starting with a secret) = %s with token %v, want malformed and no token", len(s), got.Outcome, got.Token() != nil)
		}
	}
	if got := v.Verify(secret, t0).Outcome; got != projections.OutcomeActive {
		t.Fatalf("the secret itself: %s", got)
	}
}

// Verification allocates on none of its paths, the five bad kinds and a
// marked use included.
func TestVerifyAndMarkUsedDoNotAllocateOnAnyPath(t *testing.T) {
	v, kinds := viewOfEveryKind(t)
	for name, s := range kinds {
		if n := testing.AllocsPerRun(500, func() { v.MarkUsed(v.Verify(s, t0), t0) }); n != 0 {
			t.Errorf("%s: Verify+MarkUsed allocates %.0f times per call", name, n)
		}
	}
}

func TestLastUseMovesAtMostEveryThirtySecondsAndNeverBack(t *testing.T) {
	v := projections.NewTokens()
	tok, created, secret := create(t, nil)
	must(t, v.Apply(1, created))
	lastUsed := func() time.Time {
		t.Helper()
		got, _, _ := v.Get("acme", tok.ID())
		listed := v.List("acme")[0].Token.LastUsedAt()
		if !listed.Equal(got.LastUsedAt()) {
			t.Fatalf("Get says last used %v, List %v", got.LastUsedAt(), listed)
		}
		return got.LastUsedAt()
	}
	if !lastUsed().IsZero() {
		t.Fatal("an unused token has a last use")
	}
	use := func(at time.Time) { v.MarkUsed(v.Verify(secret, at), at) }
	first := t0.Add(time.Minute)
	use(first)
	if !lastUsed().Equal(first) {
		t.Fatalf("last used %v, want %v", lastUsed(), first)
	}
	if !v.UsesUnsaved() {
		t.Fatal("a use is not reported unsaved")
	}
	use(first.Add(29 * time.Second))
	if !lastUsed().Equal(first) {
		t.Fatalf("a use 29 s later moved the last use to %v", lastUsed())
	}
	use(first.Add(30 * time.Second))
	if !lastUsed().Equal(first.Add(30 * time.Second)) {
		t.Fatalf("a use 30 s later left the last use at %v", lastUsed())
	}
	use(first) // a clock that went back
	if !lastUsed().Equal(first.Add(30 * time.Second)) {
		t.Fatalf("an earlier use moved the last use back to %v", lastUsed())
	}
	// Only an active verdict counts: a bad secret, or verifying without
	// marking, leaves it.
	v.MarkUsed(v.Verify(mustSecret(t), first.Add(time.Hour)), first.Add(time.Hour))
	_ = v.Verify(secret, first.Add(time.Hour))
	if !lastUsed().Equal(first.Add(30 * time.Second)) {
		t.Fatalf("last use moved to %v without a marked active use", lastUsed())
	}
	// Neither a use nor its stamp is a change to the token.
	got, seq, _ := v.Get("acme", tok.ID())
	if got.Version() != 1 || seq != 1 || v.Sequence() != 1 {
		t.Fatalf("a use changed the token: version %d, last seq %d, view at %d", got.Version(), seq, v.Sequence())
	}
}

// Snapshots keep when tokens were last used; Digest, which compares what
// the stream decides, leaves it out.
func TestSnapshotsKeepLastUseAndDigestIgnoresIt(t *testing.T) {
	v := projections.NewTokens()
	tok, created, secret := create(t, nil)
	must(t, v.Apply(1, created))
	rebuilt := projections.NewTokens()
	must(t, rebuilt.Apply(1, created))
	used := t0.Add(5 * time.Minute)
	v.MarkUsed(v.Verify(secret, used), used)
	if v.Digest() != rebuilt.Digest() {
		t.Fatal("a last use changed the digest")
	}

	path := filepath.Join(t.TempDir(), "s.snap")
	if _, err := v.SaveSnapshot(path, "TOKENS", t0); err != nil {
		t.Fatal(err)
	}
	if v.UsesUnsaved() {
		t.Fatal("uses still unsaved after a snapshot")
	}
	loaded, _, err := projections.LoadSnapshot(path)
	must(t, err)
	got, _, _ := loaded.Get("acme", tok.ID())
	if !got.LastUsedAt().Equal(used) {
		t.Fatalf("after a restart from the snapshot, last used %v, want %v", got.LastUsedAt(), used)
	}
	if loaded.UsesUnsaved() {
		t.Fatal("a freshly loaded view has unsaved uses")
	}
	// And a loaded view goes on counting from where it was.
	later := used.Add(time.Minute)
	loaded.MarkUsed(loaded.Verify(secret, later), later)
	got, _, _ = loaded.Get("acme", tok.ID())
	if !got.LastUsedAt().Equal(later) || !loaded.UsesUnsaved() {
		t.Fatalf("loaded view: last used %v (want %v), unsaved %v", got.LastUsedAt(), later, loaded.UsesUnsaved())
	}
}

// A reuse report moves the token's version and last sequence and nothing
// the indexes hold: the old secret still reads as rotated away, the new one
// as active, and a rebuild equals the live view.
func TestAReuseReportChangesNoIndex(t *testing.T) {
	v := projections.NewTokens()
	tok, created, first := create(t, nil)
	rotated, second, err := tok.Rotate(env(t0.Add(time.Minute)))
	must(t, err)
	must(t, v.Apply(1, created))
	must(t, v.Apply(2, rotated))
	before := v.Digest()
	reuse, err := tok.RecordReuse(domain.Fingerprint(first), domain.Env{Now: t0.Add(time.Hour), Rand: env(t0).Rand, Actor: domain.Actor{TokenID: domain.SystemActor, SourceIP: "198.51.100.7"}})
	must(t, err)
	must(t, v.Apply(3, reuse))
	got, last, _ := v.Get("acme", tok.ID())
	if got.Version() != 3 || last != 3 || !got.UpdatedAt().Equal(rotated.OccurredAt) {
		t.Fatalf("after the report: version %d, last seq %d, updated %v; want 3, 3, %v", got.Version(), last, got.UpdatedAt(), rotated.OccurredAt)
	}
	if out := v.Verify(first, t0.Add(time.Hour)).Outcome; out != projections.OutcomeRotated {
		t.Fatalf("old secret: %s", out)
	}
	if out := v.Verify(second.Reveal(), t0.Add(time.Hour)).Outcome; out != projections.OutcomeActive {
		t.Fatalf("new secret: %s", out)
	}
	if v.Digest() == before {
		t.Fatal("the report left the view unchanged (its version and sequence should move)")
	}
	var buf bytes.Buffer
	_, err = v.WriteSnapshot(&buf, "TOKENS", t0)
	must(t, err)
	restored, _, err := projections.ReadSnapshot(&buf)
	must(t, err)
	replayed := projections.NewTokens()
	for i, e := range []domain.Event{created, rotated, reuse} {
		must(t, replayed.Apply(uint64(i+1), e))
	}
	if replayed.Digest() != v.Digest() || restored.Digest() != v.Digest() {
		t.Fatal("replayed or restored view differs from the live one")
	}
}

// viewOfEveryKind returns a view and one secret of each kind Verify tells
// apart: active, and the five that do not authenticate.
func viewOfEveryKind(tb testing.TB) (*projections.Tokens, map[string]string) {
	tb.Helper()
	v, secrets := viewWith(tb, 1000)
	seq := uint64(len(secrets))
	apply := func(e domain.Event) {
		seq++
		must(tb, v.Apply(seq, e))
	}
	mk := func(days *int) (*domain.Token, string) {
		tok, e, s, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "workspace", WorkspaceID: "w1", Name: "k", ExpirationDays: days}, env(t0.Add(-48*time.Hour)))
		must(tb, err)
		apply(e)
		return tok, s.Reveal()
	}
	rot, old := mk(nil)
	e, _, err := rot.Rotate(env(t0.Add(-time.Hour)))
	must(tb, err)
	apply(e)
	del, deleted := mk(nil)
	e, err = del.Delete(env(t0.Add(-time.Hour)))
	must(tb, err)
	apply(e)
	one := 1
	_, expired := mk(&one)
	unknown, err := domain.NewSecret(domain.ScopeWorkspace, env(t0).Rand)
	must(tb, err)
	// Well-formed but for its checksum: the costliest malformed string.
	malformed := secrets[1][:len(secrets[1])-1] + flip(secrets[1][len(secrets[1])-1])
	return v, map[string]string{
		"active":    secrets[0],
		"malformed": malformed,
		"unknown":   unknown.Reveal(),
		"expired":   expired,
		"rotated":   old,
		"deleted":   deleted,
	}
}

// BenchmarkVerifyKinds times verification of each kind of secret on one
// goroutine: the five that do not authenticate should take the same time,
// within noise (compare with benchstat over -count runs).
func BenchmarkVerifyKinds(b *testing.B) {
	v, kinds := viewOfEveryKind(b)
	want := map[string]projections.Outcome{
		"active": projections.OutcomeActive, "malformed": projections.OutcomeMalformed, "unknown": projections.OutcomeUnknown,
		"expired": projections.OutcomeExpired, "rotated": projections.OutcomeRotated, "deleted": projections.OutcomeDeleted,
	}
	for _, name := range []string{"active", "malformed", "unknown", "expired", "rotated", "deleted"} {
		s := kinds[name]
		if got := v.Verify(s, t0).Outcome; got != want[name] {
			b.Fatalf("%s secret verifies as %s", name, got)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				v.Verify(s, t0)
			}
		})
	}
}

// A view passes on each last use it moves, and only those (at most one per
// token every LastUsedEvery); a last use taken in from elsewhere moves the
// view's forward, never back, is not passed on again, and is worth a
// snapshot. A token the view does not hold takes nothing in.
func TestLastUsesMovedArePassedOnAndOnesFromElsewhereTakenIn(t *testing.T) {
	v := projections.NewTokens()
	tok, created, secret := create(t, nil)
	must(t, v.Apply(1, created))
	type stamp struct {
		org, id string
		at      time.Time
	}
	var told []stamp
	v.OnUse(func(org, id string, at time.Time) { told = append(told, stamp{org, id, at}) })
	use := func(at time.Time) { v.MarkUsed(v.Verify(secret, at), at) }
	first := t0.Add(time.Minute)
	use(first)
	use(first.Add(10 * time.Second))
	if len(told) != 1 || told[0].org != "acme" || told[0].id != tok.ID() || !told[0].at.Equal(first) {
		t.Fatalf("told %+v, want one stamp: acme, %s, %v", told, tok.ID(), first)
	}
	if _, err := v.SaveSnapshot(filepath.Join(t.TempDir(), "s.snap"), "TOKENS", t0); err != nil {
		t.Fatal(err)
	}
	elsewhere := first.Add(20 * time.Second)
	if !v.MergeLastUsed("acme", tok.ID(), elsewhere) {
		t.Fatal("the view does not hold the token it holds")
	}
	got, _, _ := v.Get("acme", tok.ID())
	if !got.LastUsedAt().Equal(elsewhere) || len(told) != 1 || !v.UsesUnsaved() {
		t.Fatalf("after a use from elsewhere at %v: last use %v, told %d times, unsaved %v", elsewhere, got.LastUsedAt(), len(told), v.UsesUnsaved())
	}
	v.MergeLastUsed("acme", tok.ID(), first)
	if got, _, _ := v.Get("acme", tok.ID()); !got.LastUsedAt().Equal(elsewhere) {
		t.Fatalf("an older use from elsewhere moved the last use back to %v", got.LastUsedAt())
	}
	// The local throttle counts from the stamp taken in: a use 20 s after
	// it moves nothing, one 30 s after does and is passed on.
	use(elsewhere.Add(20 * time.Second))
	use(elsewhere.Add(30 * time.Second))
	if len(told) != 2 || !told[1].at.Equal(elsewhere.Add(30*time.Second)) {
		t.Fatalf("told %+v, want a second stamp 30 s after the one taken in", told)
	}
	if v.MergeLastUsed("acme", "tok_nobody", elsewhere) {
		t.Fatal("a token the view does not hold took a last use in")
	}
}
