package eventstore_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
)

func scanAll(t *testing.T, st *eventstore.Store, r eventstore.Range) ([]uint64, eventstore.ScanStart) {
	t.Helper()
	var got []uint64
	var start eventstore.ScanStart
	err := st.Scan(ctx(t), r, func(s eventstore.ScanStart) { start = s }, func(rec eventstore.Recorded) error {
		if rec.Err != nil {
			t.Fatalf("sequence %d: %v", rec.Sequence, rec.Err)
		}
		if rec.Event.OrganizationID != r.OrganizationID {
			t.Fatalf("scan of %s delivered an event of %s", r.OrganizationID, rec.Event.OrganizationID)
		}
		got = append(got, rec.Sequence)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, start
}

// Scan reads exactly the part of one organization's history it is asked for,
// starting where it is told, and stops at the stream's end as of its start.
func TestScanReadsExactlyTheRangeAskedFor(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	type stored struct {
		seq uint64
		e   domain.Event
	}
	var history []stored
	appendAll := func(events ...domain.Event) {
		for _, e := range events {
			last := uint64(0)
			for _, h := range slices.Backward(history) {
				if h.e.TokenID == e.TokenID {
					last = h.seq
					break
				}
			}
			a, err := st.Append(ctx(t), e, last)
			if err != nil {
				t.Fatal(err)
			}
			history = append(history, stored{a.Sequence, e})
		}
	}
	var tokens []string
	for i := range 4 {
		org := "acme"
		if i == 3 {
			org = "other"
		}
		tok, created := mustCreate(t, org)
		rotated, _, err := tok.Rotate(env())
		if err != nil {
			t.Fatal(err)
		}
		assigned, _, err := tok.Assign("ws-1", "WORKSPACE_MEMBER", env())
		if err != nil {
			t.Fatal(err)
		}
		appendAll(created, rotated, assigned)
		tokens = append(tokens, tok.ID())
	}
	want := func(keep func(stored) bool) []uint64 {
		var out []uint64
		for _, h := range history {
			if h.e.OrganizationID == "acme" && keep(h) {
				out = append(out, h.seq)
			}
		}
		return out
	}

	for _, tc := range []struct {
		name string
		r    eventstore.Range
		keep func(stored) bool
	}{
		{"whole organization", eventstore.Range{}, func(stored) bool { return true }},
		{"one token", eventstore.Range{TokenID: tokens[1]}, func(h stored) bool { return h.e.TokenID == tokens[1] }},
		{"two types", eventstore.Range{Types: []domain.EventType{domain.TokenRotated, domain.TokenAssigned}},
			func(h stored) bool { return h.e.Type != domain.TokenCreated }},
		{"one type of one token", eventstore.Range{TokenID: tokens[0], Types: []domain.EventType{domain.TokenRotated}},
			func(h stored) bool { return h.e.TokenID == tokens[0] && h.e.Type == domain.TokenRotated }},
		{"after a sequence", eventstore.Range{AfterSequence: 5}, func(h stored) bool { return h.seq > 5 }},
		{"after the end", eventstore.Range{AfterSequence: 12}, func(stored) bool { return false }},
		{"nothing matches", eventstore.Range{Types: []domain.EventType{domain.TokenDeleted}}, func(stored) bool { return false }},
		{"since the future", eventstore.Range{Since: time.Now().Add(time.Hour)}, func(stored) bool { return false }},
		{"since the past", eventstore.Range{Since: time.Now().Add(-time.Hour)}, func(stored) bool { return true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.r.OrganizationID = "acme"
			got, start := scanAll(t, st, tc.r)
			if w := want(tc.keep); !slices.Equal(got, w) {
				t.Fatalf("scan delivered sequences %v, want %v", got, w)
			}
			if start.Cut != 12 || start.Pending < uint64(len(got)) {
				t.Fatalf("start = %+v: want cut 12 and at least %d pending", start, len(got))
			}
			// Nightly exports with nothing new must not pile consumers up.
			info, err := js.Stream(ctx(t), "TOKENS")
			if err != nil {
				t.Fatal(err)
			}
			if n := info.CachedInfo().State.Consumers; n != 0 {
				t.Fatalf("the scan left %d consumers on the stream", n)
			}
		})
	}
}

// A scan is one consistent cut: events appended while it runs are left for
// the next one.
func TestScanStopsAtTheStreamsEndWhenItBegan(t *testing.T) {
	st, _, _ := eventstoretest.MustStore(t)
	var last uint64
	for range 50 {
		_, e := mustCreate(t, "acme")
		a, err := st.Append(ctx(t), e, 0)
		if err != nil {
			t.Fatal(err)
		}
		last = a.Sequence
	}
	n := 0
	err := st.Scan(ctx(t), eventstore.Range{OrganizationID: "acme"}, func(eventstore.ScanStart) {}, func(rec eventstore.Recorded) error {
		n++
		if n == 1 { // a write lands while the scan is under way
			_, e := mustCreate(t, "acme")
			if _, err := st.Append(context.Background(), e, 0); err != nil {
				t.Error(err)
			}
		}
		if rec.Sequence > last {
			t.Errorf("scan delivered sequence %d, after its cut at %d", rec.Sequence, last)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != 50 {
		t.Fatalf("scan delivered %d events, want the 50 stored when it began", n)
	}
}
