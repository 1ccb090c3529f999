package projections_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

// busyView is a view with every kind of state: tokens of each scope, roles,
// rotations, a deletion, a keyed command and a refused message.
func busyView(t *testing.T) *projections.Tokens {
	t.Helper()
	v := projections.NewTokens()
	seq := uint64(0)
	apply := func(e domain.Event, err error) {
		t.Helper()
		must(t, err)
		seq++
		must(t, v.Apply(seq, e))
	}
	days := 7
	org, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "org", ExpirationDays: &days}, env(t0))
	apply(e, err)
	keyed := env(t0)
	keyed.EventID, keyed.IdempotencyKey, keyed.RequestHash = domain.IdempotentEventID("acme", "k1"), "k1", "abc"
	ws, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "workspace", WorkspaceID: "w1", Name: "ws", Description: "d"}, keyed)
	apply(e, err)
	_, e, _, err = domain.Create(domain.CreateToken{OrganizationID: "globex", Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "dep"}, env(t0))
	apply(e, err)
	e, _, err = org.Assign("w1", "WORKSPACE_OWNER", env(t0.Add(time.Minute)))
	apply(e, err)
	e, _, err = org.Rotate(env(t0.Add(2 * time.Minute)))
	apply(e, err)
	e, err = ws.Delete(env(t0.Add(3 * time.Minute)))
	apply(e, err)
	seq++
	v.Refuse(seq, "acme", org.ID())
	return v
}

func TestASnapshotRestoresTheSameView(t *testing.T) {
	v := busyView(t)
	var buf bytes.Buffer
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	seq, err := v.WriteSnapshot(&buf, "TOKENS", created)
	if err != nil || seq != v.Sequence() {
		t.Fatalf("write: seq %d, %v", seq, err)
	}
	got, h, err := projections.ReadSnapshot(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if h.Stream != "TOKENS" || !h.StreamCreated.Equal(created) || h.Sequence != v.Sequence() {
		t.Fatalf("header = %+v", h)
	}
	if got.Digest() != v.Digest() {
		t.Fatal("restored view differs from the saved one")
	}
	if got.Sequence() != v.Sequence() || got.Rejected() != v.Rejected() {
		t.Fatalf("sequence %d rejected %d, want %d and %d", got.Sequence(), got.Rejected(), v.Sequence(), v.Rejected())
	}
	// Derived indexes came back too: role view and verification.
	if len(got.InWorkspace("acme", "w1", t0)) != len(v.InWorkspace("acme", "w1", t0)) {
		t.Fatal("role index not restored")
	}
	// A restored view keeps applying events.
	var org *domain.Token
	for _, l := range got.List("acme") {
		if l.Token.Name() == "org" {
			org = l.Token
		}
	}
	e, _, err := org.Clone().Rotate(env(t0.Add(time.Hour)))
	must(t, err)
	must(t, got.Apply(got.Sequence()+1, e))
	must(t, v.Apply(v.Sequence()+1, e))
	if got.Digest() != v.Digest() {
		t.Fatal("views differ after applying the same event")
	}
}

func TestABadSnapshotIsRefused(t *testing.T) {
	v := busyView(t)
	var buf bytes.Buffer
	if _, err := v.WriteSnapshot(&buf, "TOKENS", t0); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x01
		return b
	}
	cases := map[string][]byte{
		"empty":             nil,
		"not a snapshot":    []byte("hello, this is not a snapshot at all, nope"),
		"truncated":         good[:len(good)/2],
		"a flipped bit":     flip(len(good) / 2),
		"a flipped trailer": flip(len(good) - 1),
		"other magic":       flip(0),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if _, _, err := projections.ReadSnapshot(bytes.NewReader(b)); !errors.Is(err, projections.ErrBadSnapshot) {
				t.Fatalf("err = %v, want ErrBadSnapshot", err)
			}
		})
	}
	h := projections.SnapshotHeader{Stream: "TOKENS", StreamCreated: t0, Sequence: 10}
	for name, err := range map[string]error{
		"other stream":          h.Check("OTHER", t0, 10),
		"recreated stream":      h.Check("TOKENS", t0.Add(time.Second), 10),
		"beyond the stream end": h.Check("TOKENS", t0, 9),
	} {
		if !errors.Is(err, projections.ErrBadSnapshot) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := h.Check("TOKENS", t0, 12); err != nil {
		t.Errorf("a good snapshot is refused: %v", err)
	}
}
