package eventstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
)

// These tests play an attacker who reached NATS and rewrites the ledger's
// own consumers (CONSUMER.CREATE on an existing name is an update): the
// ledger's reads must notice, whatever the server hands them.

func anyConsumer(jetstream.ConsumerConfig) bool { return true }

// skipDeletions narrows a consumer of org's events to every type but
// TokenDeleted.
func skipDeletions(org string) func(*jetstream.ConsumerConfig) {
	return func(cfg *jetstream.ConsumerConfig) {
		cfg.FilterSubject, cfg.FilterSubjects = "", nil
		for _, typ := range domain.EventTypes {
			if typ != domain.TokenDeleted {
				cfg.FilterSubjects = append(cfg.FilterSubjects, fmt.Sprintf("ledger.tokens.%s.*.%s", org, typ))
			}
		}
	}
}

func headersOnly(cfg *jetstream.ConsumerConfig) { cfg.HeadersOnly = true }

// fillCreatedThenDeleted stores n tokens of org, then deletes them all, in
// bulk (as Append would store them, without waiting for each): the
// deletions are the last n events.
func fillCreatedThenDeleted(t *testing.T, st *eventstore.Store, js jetstream.JetStream, org string, n int) {
	t.Helper()
	publish := func(e domain.Event) {
		msg, err := st.Message(e)
		if err != nil {
			t.Fatal(err)
		}
		msg.Header.Set(jetstream.MsgIDHeader, e.ID)
		if _, err := js.PublishMsgAsync(msg); err != nil {
			t.Fatal(err)
		}
	}
	tokens := make([]*domain.Token, n)
	for i := range tokens {
		tok, e, _, err := domain.Create(domain.CreateToken{OrganizationID: org, Scope: "organization", Name: fmt.Sprintf("t%d", i)}, env())
		if err != nil {
			t.Fatal(err)
		}
		tokens[i] = tok
		publish(e)
	}
	for _, tok := range tokens {
		e, err := tok.Delete(env())
		if err != nil {
			t.Fatal(err)
		}
		publish(e)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(20 * time.Second):
		t.Fatal("bulk publish did not complete")
	}
}

// An export's scan whose consumer is narrowed under it, to skip every
// deletion, fails: it does not return a cut of history with holes in it.
// The scan pauses in its handler early on, far ahead of the first deletion
// (and of what the client has read ahead), while the consumer is changed.
func TestAScanWhoseConsumerIsNarrowedMidwayFails(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	const tokens = 3000
	fillCreatedThenDeleted(t, st, js, "acme", tokens)
	n, deletions := 0, 0
	err := st.Scan(ctx(t), eventstore.Range{OrganizationID: "acme"}, func(eventstore.ScanStart) {}, func(rec eventstore.Recorded) error {
		if n++; n == 100 {
			if eventstoretest.Tamper(t, js, anyConsumer, skipDeletions("acme")) != 1 {
				t.Fatal("the scan's consumer was not found")
			}
		}
		if rec.Event.Type == domain.TokenDeleted {
			deletions++
		}
		return nil
	})
	if err == nil {
		t.Fatalf("the scan succeeded with %d events, %d of %d deletions", n, deletions, tokens)
	}
	if !errors.Is(err, eventstore.ErrBadDelivery) {
		t.Fatalf("scan error = %v, want ErrBadDelivery", err)
	}
	if deletions == tokens {
		t.Fatal("the tampering skipped nothing: the test did not test")
	}
}

// A scan whose consumer is narrowed to skip every deletion, and restored
// once it has stepped over them, fails too, though its config is right by
// then: it has delivered fewer events than it counted up to its cut, and
// either has nothing more to deliver, or delivers an event beyond the cut.
// (A consumer steps over what its filter skips only on its way to a later
// message it does deliver: here ten creations after the deletions.)
func TestAScanWhoseConsumerIsNarrowedAndRestoredFails(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after func(t *testing.T, st *eventstore.Store)
	}{
		{"nothing written after", func(*testing.T, *eventstore.Store) {}},
		{"an event written after", func(t *testing.T, st *eventstore.Store) {
			_, e := mustCreate(t, "acme")
			if _, err := st.Append(context.Background(), e, 0); err != nil {
				t.Error(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, js, _ := eventstoretest.MustStore(t)
			const tokens, more = 3000, 10
			fillCreatedThenDeleted(t, st, js, "acme", tokens)
			for range more {
				_, e := mustCreate(t, "acme")
				if _, err := st.Append(ctx(t), e, 0); err != nil {
					t.Fatal(err)
				}
			}
			n := 0
			err := st.Scan(ctx(t), eventstore.Range{OrganizationID: "acme"}, func(eventstore.ScanStart) {}, func(rec eventstore.Recorded) error {
				switch n++; n {
				case 100:
					eventstoretest.Tamper(t, js, anyConsumer, skipDeletions("acme"))
				case tokens + more: // the last creation: every deletion skipped
					eventstoretest.Tamper(t, js, anyConsumer, func(cfg *jetstream.ConsumerConfig) {
						cfg.FilterSubject, cfg.FilterSubjects = "ledger.tokens.acme.*.*", nil
					})
					tc.after(t, st)
				}
				return nil
			})
			if !errors.Is(err, eventstore.ErrBadDelivery) {
				t.Fatalf("scan error = %v after %d events, want ErrBadDelivery", err, n)
			}
			t.Logf("scan refused: %v", err)
		})
	}
}

// A scan whose consumer is made to send headers only fails, and hands no
// bodiless message on as if the stream held a bad event.
func TestAScanOnAHeadersOnlyConsumerFailsWithoutBlamingTheStream(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	fillCreatedThenDeleted(t, st, js, "acme", 3000)
	n := 0
	err := st.Scan(ctx(t), eventstore.Range{OrganizationID: "acme"}, func(eventstore.ScanStart) {}, func(rec eventstore.Recorded) error {
		if n++; n == 100 {
			eventstoretest.Tamper(t, js, anyConsumer, headersOnly)
		}
		if rec.Err != nil {
			t.Errorf("the scan handed on sequence %d as a bad event: %v", rec.Sequence, rec.Err)
			return rec.Err
		}
		return nil
	})
	if !errors.Is(err, eventstore.ErrBadDelivery) {
		t.Fatalf("scan error = %v after %d events, want ErrBadDelivery", err, n)
	}
}

// follow runs Follow from the stream's start in the background, handing
// every record to got; done receives what Follow returns.
func follow(t *testing.T, st *eventstore.Store) (got chan eventstore.Recorded, done chan error) {
	t.Helper()
	got, done = make(chan eventstore.Recorded, 100), make(chan error, 1)
	fctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { done <- st.Follow(fctx, 1, func(r eventstore.Recorded) error { got <- r; return nil }) }()
	return got, done
}

func receive(t *testing.T, got chan eventstore.Recorded, seq uint64) {
	t.Helper()
	select {
	case r := <-got:
		if r.Sequence != seq || r.Err != nil {
			t.Fatalf("followed sequence %d (%v), want %d", r.Sequence, r.Err, seq)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("sequence %d not delivered", seq)
	}
}

// A feed whose consumer is made to send headers only stops with
// ErrBadDelivery at the first bodiless message, rather than handing it on
// as a bad event (which the view would quarantine its token for).
func TestFollowStopsOnAHeadersOnlyConsumerWithoutBlamingTheEvent(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	tok, created := mustCreate(t, "acme")
	a, err := st.Append(ctx(t), created, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, done := follow(t, st)
	receive(t, got, a.Sequence)

	eventstoretest.Tamper(t, js, anyConsumer, headersOnly)
	rotated, _, _ := tok.Rotate(env())
	if _, err := st.Append(ctx(t), rotated, a.Sequence); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, eventstore.ErrBadDelivery) {
			t.Fatalf("Follow returned %v, want ErrBadDelivery", err)
		}
	case r := <-got:
		t.Fatalf("Follow handed on sequence %d (%v) from a headers-only consumer", r.Sequence, r.Err)
	case <-time.After(5 * time.Second):
		t.Fatal("Follow went on after a bodiless message")
	}
}

// A feed whose consumer's filter is narrowed notices it by itself, before
// any event it would skip has been written.
func TestFollowNoticesANarrowedFilterBeforeAnythingIsSkipped(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	_, created := mustCreate(t, "acme")
	a, err := st.Append(ctx(t), created, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, done := follow(t, st)
	receive(t, got, a.Sequence)

	eventstoretest.Tamper(t, js, anyConsumer, func(cfg *jetstream.ConsumerConfig) { cfg.FilterSubject = "ledger.tokens.*.*.TokenCreated" })
	select {
	case err := <-done:
		if !errors.Is(err, eventstore.ErrBadDelivery) {
			t.Fatalf("Follow returned %v, want ErrBadDelivery", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Follow did not notice its consumer's filter was narrowed")
	}
}

// What a writer that bypassed the ledger stores (a message without a body,
// one on a subject that is no event's) is the stream's: Follow hands it on
// as a bad event and goes on, it does not take it for a bad delivery (that
// would stop the feed at it for good).
func TestFollowHandsOnStoredOddMessagesAsBadEventsAndGoesOn(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	_, created := mustCreate(t, "acme")
	if _, err := st.Append(ctx(t), created, 0); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		subject string
		body    []byte
	}{
		{"ledger.tokens.acme." + created.TokenID + ".TokenDeleted", nil},
		{"ledger.tokens.acme", []byte(`{"not":"an event"}`)},
		{"ledger.tokens.acme.x.y.z", nil},
	} {
		if _, err := js.Publish(ctx(t), m.subject, m.body); err != nil {
			t.Fatal(err)
		}
	}
	_, next := mustCreate(t, "acme")
	last, err := st.Append(ctx(t), next, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, done := follow(t, st)
	for seq := uint64(1); seq <= last.Sequence; seq++ {
		select {
		case r := <-got:
			odd := seq > 1 && seq < last.Sequence
			if r.Sequence != seq || (r.Err != nil) != odd {
				t.Fatalf("followed sequence %d (%v), want %d (a bad event: %t)", r.Sequence, r.Err, seq, odd)
			}
		case err := <-done:
			t.Fatalf("Follow stopped at sequence %d: %v", seq, err)
		case <-time.After(5 * time.Second):
			t.Fatalf("sequence %d not delivered", seq)
		}
	}
}

// A scan counts what it must deliver without being thrown by writes going
// on meanwhile: as fast as they come to other organizations, every few
// milliseconds to its own. Each scan delivers exactly its organization's
// events up to its cut.
func TestScanCountsItsRangeExactlyWhileTheStreamIsWritten(t *testing.T) {
	st, _, _ := eventstoretest.MustStore(t)
	var mu sync.Mutex
	stored := map[uint64]string{} // sequence -> organization
	write := func(org string) error {
		_, e := mustCreate(t, org)
		a, err := st.Append(context.Background(), e, 0)
		if err == nil {
			mu.Lock()
			stored[a.Sequence] = org
			mu.Unlock()
		}
		return err
	}
	for range 20 {
		if err := write("acme"); err != nil {
			t.Fatal(err)
		}
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	stopWriting := func() { stop.Store(true); wg.Wait() }
	defer stopWriting()
	for _, org := range []string{"other", "other", "acme"} {
		wg.Go(func() {
			for !stop.Load() {
				if err := write(org); err != nil {
					t.Error(err)
					return
				}
				if org == "acme" {
					time.Sleep(10 * time.Millisecond) // pacing, not synchronisation
				}
			}
		})
	}
	type scanned struct {
		got []uint64
		cut uint64
	}
	var scans []scanned
	for range 20 {
		var s scanned
		err := st.Scan(ctx(t), eventstore.Range{OrganizationID: "acme"}, func(start eventstore.ScanStart) { s.cut = start.Cut }, func(rec eventstore.Recorded) error {
			s.got = append(s.got, rec.Sequence)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		scans = append(scans, s)
	}
	stopWriting() // every append is acknowledged and in stored
	for _, s := range scans {
		var want []uint64
		for seq, org := range stored {
			if org == "acme" && seq <= s.cut {
				want = append(want, seq)
			}
		}
		slices.Sort(want)
		if !slices.Equal(s.got, want) {
			t.Fatalf("scan up to %d delivered %d events, want %d", s.cut, len(s.got), len(want))
		}
	}
}
