package projections_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

// Reuse events move a token's version, not the version of its last change
// (what If-Match compares); the view and its snapshot keep both.
func TestTheViewAndItsSnapshotKeepTheVersionOfTheLastChange(t *testing.T) {
	v := projections.NewTokens()
	seq := uint64(0)
	apply := func(e domain.Event, err error) {
		t.Helper()
		must(t, err)
		seq++
		must(t, v.Apply(seq, e))
	}
	tok, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "workspace", WorkspaceID: "w1", Name: "leaky"}, env(t0))
	apply(e, err)
	rot, _, err := tok.Rotate(env(t0.Add(time.Minute)))
	apply(rot, err)
	fp := rot.Data.(domain.RotatedData).PreviousFingerprint
	apply(tok.RecordReuse(fp, env(t0.Add(2*time.Minute))))
	apply(tok.RecordReuses(fp, 999, env(t0.Add(3*time.Minute))))

	check := func(what string, view *projections.Tokens) {
		t.Helper()
		got, _, ok := view.Get("acme", tok.ID())
		if !ok || got.Version() != 4 || got.ChangedVersion() != 2 || !got.UnchangedSince(2) || got.UnchangedSince(1) || got.UnchangedSince(5) {
			t.Fatalf("%s: version %d, changed at %d; want 4 and 2", what, got.Version(), got.ChangedVersion())
		}
	}
	check("the view", v)
	var buf bytes.Buffer
	if _, err := v.WriteSnapshot(&buf, "TOKENS", t0); err != nil {
		t.Fatal(err)
	}
	restored, _, err := projections.ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	check("the restored view", restored)
}
