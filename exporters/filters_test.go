package exporters

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// gapped reports whether some token's rows in rows do not follow one
// another: an export of them that checked every link would fail.
func gapped(rows []Row) bool {
	head := map[string]string{}
	for _, r := range rows {
		if h, ok := head[r.TokenID]; ok && r.PrevHash != h {
			return true
		}
		head[r.TokenID] = r.Hash
	}
	return false
}

// TestVerifyJudgesAnExportByItsFilters exports a history's rows as each
// filter selects them, signed with that filter: every one verifies (no
// false INVALID where a filter leaves out events between a token's rows),
// and the report says whether the links between a token's rows were
// checked.
func TestVerifyJudgesAnExportByItsFilters(t *testing.T) {
	key := newKey(t)
	all := makeHistory(t, 12, 200, 21).rows()
	mid := all[len(all)/2]
	actor := all[len(all)-1].ActorTokenID
	if actor == domain.SystemActor {
		actor = all[1].ActorTokenID
	}
	cases := []struct {
		name    string
		filters Filters
		keep    func(Row) bool
		linked  bool
	}{
		{"one type", Filters{Types: []string{"TokenRotated"}}, func(r Row) bool { return r.EventType == domain.TokenRotated }, false},
		{"two types", Filters{Types: []string{"TokenCreated", "TokenDeleted"}}, func(r Row) bool {
			return r.EventType == domain.TokenCreated || r.EventType == domain.TokenDeleted
		}, false},
		{"workspace", Filters{WorkspaceID: "ws-1"}, func(r Row) bool { return r.WorkspaceID == "ws-1" }, false},
		{"actor", Filters{ActorTokenID: actor}, func(r Row) bool { return r.ActorTokenID == actor }, false},
		{"since", Filters{Since: mid.OccurredAt.Format(time.RFC3339Nano)}, func(r Row) bool { return !r.OccurredAt.Before(mid.OccurredAt) }, true},
		{"until", Filters{Until: mid.OccurredAt.Format(time.RFC3339Nano)}, func(r Row) bool { return r.OccurredAt.Before(mid.OccurredAt) }, true},
		{"after sequence", Filters{AfterSequence: uint64(mid.Sequence)}, func(r Row) bool { return r.Sequence > mid.Sequence }, true},
		{"token", Filters{TokenID: mid.TokenID}, func(r Row) bool { return r.TokenID == mid.TokenID }, true},
		{"deployment", Filters{DeploymentID: "dep-2"}, func(r Row) bool { return r.DeploymentID == "dep-2" }, true},
		{"none", Filters{}, func(Row) bool { return true }, true},
	}
	for _, c := range cases {
		var rows []Row
		for _, r := range all {
			if c.keep(r) {
				rows = append(rows, r)
			}
		}
		if len(rows) < 2 {
			t.Fatalf("%s: the fixture gives %d rows", c.name, len(rows))
		}
		if gapped(rows) == c.linked {
			t.Fatalf("%s: a token's rows follow one another: %v; the case proves nothing unless that is %v", c.name, !gapped(rows), c.linked)
		}
		if c.filters.KeepWholeChains() != c.linked {
			t.Errorf("%s: KeepWholeChains %v, want %v", c.name, !c.linked, c.linked)
		}
		for _, f := range Formats {
			t.Run(c.name+"/"+string(f), func(t *testing.T) {
				path, manifest := exportSignedWith(t, t.TempDir(), f, rows, c.filters, key)
				rep := verifyBytes(mustRead(t, path), manifest, pub(key))
				if !rep.OK() {
					t.Fatalf("a %s export (%d rows) does not verify:\n%s", c.name, len(rows), strings.Join(messages(rep), "\n"))
				}
				if rep.ChainsLinked != c.linked {
					t.Errorf("ChainsLinked %v, want %v", rep.ChainsLinked, c.linked)
				}
				if !slices.Equal(rep.Manifest.Filters.Types, c.filters.Types) || rep.Manifest.Filters.IsZero() != (c.name == "none") {
					t.Errorf("the report's filters %+v, want %+v", rep.Manifest.Filters, c.filters)
				}
			})
		}
	}
}

// TestVerifyFilteredExportsStillCatchTampering: what a filtered export
// still proves. A row dropped from a type-filtered export is caught by the
// manifest (its count and the token's chain ends) though not by a link; a
// row dropped from a since-filtered export breaks its token's chain; a row
// the filters do not keep, signed all the same, is named; and a manifest
// whose filters were edited fails its signature.
func TestVerifyFilteredExportsStillCatchTampering(t *testing.T) {
	key := newKey(t)
	all := makeHistory(t, 6, 120, 22).rows()
	var rotations, recent []Row
	since := all[20].OccurredAt
	for _, r := range all {
		if r.EventType == domain.TokenRotated {
			rotations = append(rotations, r)
		}
		if !r.OccurredAt.Before(since) {
			recent = append(recent, r)
		}
	}
	byType := Filters{Types: []string{"TokenRotated"}}
	bySince := Filters{Since: since.Format(time.RFC3339Nano)}
	// middle returns the index of a row of rs whose token has rows before
	// and after it.
	middle := func(rs []Row) int {
		for i := 1; i < len(rs)-1; i++ {
			var before, after bool
			for j, r := range rs {
				before = before || (j < i && r.TokenID == rs[i].TokenID)
				after = after || (j > i && r.TokenID == rs[i].TokenID)
			}
			if before && after {
				return i
			}
		}
		t.Fatal("no token with three rows in the fixture")
		return 0
	}

	for _, f := range []Format{FormatJSONL, FormatParquet} {
		t.Run(string(f)+"/row dropped from a type-filtered export", func(t *testing.T) {
			dir := t.TempDir()
			_, manifest := exportSignedWith(t, dir, f, rotations, byType, key)
			i := middle(rotations)
			path, _ := writeFileWith(t, dir, f, slices.Delete(slices.Clone(rotations), i, i+1), byType)
			rep := verifyBytes(mustRead(t, path), manifest, pub(key))
			tok := rotations[i].TokenID
			if _, ok := findingWith(rep, "token "+tok, fmt.Sprintf("the manifest says %d rows, the file has %d", countOf(rotations, tok), countOf(rotations, tok)-1)); !ok || !hasProblem(rep, ProblemSHA256) {
				t.Errorf("want the SHA-256 and token %s's row count named:\n%s", tok, strings.Join(messages(rep), "\n"))
			}
		})
		t.Run(string(f)+"/row dropped from a since-filtered export", func(t *testing.T) {
			dir := t.TempDir()
			_, manifest := exportSignedWith(t, dir, f, recent, bySince, key)
			i := middle(recent)
			path, _ := writeFileWith(t, dir, f, slices.Delete(slices.Clone(recent), i, i+1), bySince)
			rep := verifyBytes(mustRead(t, path), manifest, pub(key))
			if !rep.ChainsLinked || !hasProblem(rep, ProblemChain) {
				t.Errorf("a row dropped inside a token's chain is not named as one:\n%s", strings.Join(messages(rep), "\n"))
			}
		})
		t.Run(string(f)+"/rows the filters do not keep", func(t *testing.T) {
			// Signed with the filter, holding other rows too: the signer
			// exported more than it says.
			path, manifest := exportSignedWith(t, t.TempDir(), f, recent, byType, key)
			rep := verifyBytes(mustRead(t, path), manifest, pub(key))
			var first Row
			for _, r := range recent {
				if r.EventType != domain.TokenRotated {
					first = r
					break
				}
			}
			want := fmt.Sprintf("(sequence %d, token %s) is not one the manifest's filters keep: it is a %s, not one of the types TokenRotated", first.Sequence, first.TokenID, first.EventType)
			if got, ok := findingWith(rep, want); !ok || got.Problem != ProblemFilters {
				t.Errorf("no filters finding saying %q:\n%s", want, strings.Join(messages(rep), "\n"))
			}
		})
		t.Run(string(f)+"/filters edited in the manifest", func(t *testing.T) {
			path, manifest := exportSignedWith(t, t.TempDir(), f, rotations, byType, key)
			edited := bytes.Replace(manifest, []byte(`"TokenRotated"`), []byte(`"TokenCreated", "TokenRotated"`), 1)
			if bytes.Equal(edited, manifest) {
				t.Fatal("no types filter in the manifest")
			}
			rep := verifyBytes(mustRead(t, path), edited, pub(key))
			if !hasProblem(rep, ProblemSignature) || !slices.Equal(rep.Manifest.Filters.Types, []string{"TokenCreated", "TokenRotated"}) {
				t.Errorf("an edited filter: want a signature finding and the filters as claimed:\n%s", strings.Join(messages(rep), "\n"))
			}
		})
	}
}

func countOf(rows []Row, token string) int {
	n := 0
	for _, r := range rows {
		if r.TokenID == token {
			n++
		}
	}
	return n
}
