package projections_test

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

// TestReadersAndSnapshotsRaceFreeWithApply runs every kind of reader, and
// snapshots, while events change tokens in place. Under -race it fails if any
// token the view hands out is still the one Apply changes.
func TestReadersAndSnapshotsRaceFreeWithApply(t *testing.T) {
	v := projections.NewTokens()
	seq := uint64(0)
	var tokens []*domain.Token
	var secrets []string
	for i := range 50 {
		tok, e, s, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: fmt.Sprintf("t%d", i)}, env(t0))
		must(t, err)
		seq++
		must(t, v.Apply(seq, e))
		tokens, secrets = append(tokens, tok), append(secrets, s.Reveal())
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	read := func(f func()) {
		wg.Go(func() {
			for !stop.Load() {
				f()
			}
		})
	}
	read(func() {
		for _, s := range secrets { // the first secrets get rotated away
			if tok := v.Verify(s, t0).Token(); tok != nil {
				_ = tok.State()
			}
		}
	})
	read(func() {
		for _, l := range v.List("acme") {
			_ = l.Token.Name()
			l.Token.EachWorkspaceRole(func(string, domain.Role) {})
		}
		if tok, _, ok := v.Get("acme", tokens[0].ID()); ok {
			_ = tok.Role()
		}
	})
	read(func() {
		for _, h := range v.InWorkspace("acme", "w1", t0) {
			_ = h.Token.State()
		}
	})
	read(func() {
		var buf bytes.Buffer
		if _, err := v.WriteSnapshot(&buf, "TOKENS", t0); err != nil {
			t.Error(err)
		}
		_ = v.Digest()
	})

	for round := range 40 {
		for i, tok := range tokens {
			var e domain.Event
			var err error
			switch (round + i) % 4 {
			case 0:
				e, _, err = tok.Rotate(env(t0.Add(time.Duration(round) * time.Minute)))
			case 1:
				e, _, err = tok.Assign(fmt.Sprintf("w%d", round%3), "WORKSPACE_MEMBER", env(t0))
			case 2:
				name := fmt.Sprintf("t%d-%d", i, round)
				e, _, err = tok.Update(domain.UpdateToken{Name: &name}, env(t0))
			case 3:
				if _, ok := tok.WorkspaceRole("w1"); ok {
					e, err = tok.Unassign("w1", env(t0))
				} else {
					e, _, err = tok.Assign("w1", "WORKSPACE_OWNER", env(t0))
				}
			}
			must(t, err)
			if e.Type == "" {
				continue // a no-op (already assigned with that role)
			}
			seq++
			must(t, v.Apply(seq, e))
		}
	}
	stop.Store(true)
	wg.Wait()

	if got := v.Sequence(); got != seq {
		t.Fatalf("sequence %d, want %d", got, seq)
	}
}
