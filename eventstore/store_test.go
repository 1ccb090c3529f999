package eventstore_test

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func env() domain.Env {
	return domain.Env{Now: t0, Rand: rand.Reader, Actor: domain.Actor{TokenID: "tok_test"}}
}

func mustCreate(t *testing.T, org string) (*domain.Token, domain.Event) {
	t.Helper()
	tok, e, _, err := domain.Create(domain.CreateToken{OrganizationID: org, Scope: "organization", Name: "ci"}, env())
	if err != nil {
		t.Fatal(err)
	}
	return tok, e
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestAppendThenLoadGivesTheTokensHistoryInOrder(t *testing.T) {
	st, _, _ := eventstoretest.MustStore(t)
	tok, created := mustCreate(t, "acme")
	a, err := st.Append(ctx(t), created, 0)
	if err != nil {
		t.Fatal(err)
	}
	rotated, _, err := tok.Rotate(env())
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.Append(ctx(t), rotated, a.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	// Another token's event in between must not show up in this history.
	_, other := mustCreate(t, "acme")
	if _, err := st.Append(ctx(t), other, 0); err != nil {
		t.Fatal(err)
	}

	got, err := st.Load(ctx(t), "acme", tok.ID())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Sequence != a.Sequence || got[1].Sequence != b.Sequence {
		t.Fatalf("history = %+v, want sequences %d, %d", got, a.Sequence, b.Sequence)
	}
	if got[1].Event.Type != domain.TokenRotated || got[1].Event.Version != 2 {
		t.Fatalf("second event = %s v%d, want TokenRotated v2", got[1].Event.Type, got[1].Event.Version)
	}
	replayed, err := domain.Replay([]domain.Event{got[0].Event, got[1].Event})
	if err != nil {
		t.Fatal(err)
	}
	if replayed.SecretHash() != tok.SecretHash() {
		t.Fatal("replayed token does not carry the rotated secret's hash")
	}

	// The same token id in another organization is another token: nothing there.
	none, err := st.Load(ctx(t), "globex", tok.ID())
	if err != nil || len(none) != 0 {
		t.Fatalf("load in another org = %v, %v; want nothing", none, err)
	}
}

func TestAppendWithAStaleExpectedSequenceIsAConflict(t *testing.T) {
	st, _, _ := eventstoretest.MustStore(t)
	tok, created := mustCreate(t, "acme")
	a, err := st.Append(ctx(t), created, 0)
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := tok.Clone().Rotate(env())
	second, _, _ := tok.Clone().Rotate(env())
	if _, err := st.Append(ctx(t), first, a.Sequence); err != nil {
		t.Fatal(err)
	}
	last, _ := st.LastSequence(ctx(t))
	_, err = st.Append(ctx(t), second, a.Sequence)
	if !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("second append on a stale sequence: err = %v, want ErrConflict", err)
	}
	if now, _ := st.LastSequence(ctx(t)); now != last {
		t.Fatalf("last sequence moved from %d to %d on a conflict", last, now)
	}
	// A second create of the same token id is a conflict too.
	if _, err := st.Append(ctx(t), created, 0); !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("re-create: err = %v, want ErrConflict", err)
	}
}

func TestConcurrentAppendsOnOneTokenHaveOneWinner(t *testing.T) {
	st, _, _ := eventstoretest.MustStore(t)
	tok, created := mustCreate(t, "acme")
	a, err := st.Append(ctx(t), created, 0)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for range n {
		e, _, err := tok.Clone().Rotate(env())
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			_, err := st.Append(context.Background(), e, a.Sequence)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, domain.ErrConflict):
				conflicts++
			default:
				t.Errorf("append: %v", err)
			}
		})
	}
	wg.Wait()
	if wins != 1 || conflicts != n-1 {
		t.Fatalf("wins=%d conflicts=%d, want 1 and %d", wins, conflicts, n-1)
	}
	hist, _ := st.Load(ctx(t), "acme", tok.ID())
	if len(hist) != 2 {
		t.Fatalf("history has %d events, want 2", len(hist))
	}
}

func TestARetriedEventIdIsStoredOnce(t *testing.T) {
	st, _, _ := eventstoretest.MustStore(t)
	e := env()
	e.EventID = domain.IdempotentEventID("acme", "create-ci-1")
	_, first, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "ci"}, e)
	if err != nil {
		t.Fatal(err)
	}
	a, err := st.Append(ctx(t), first, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The retry makes a new token id and secret, but keeps the event id.
	_, retry, _, _ := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "ci"}, e)
	b, err := st.Append(ctx(t), retry, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Duplicate || b.Sequence != a.Sequence {
		t.Fatalf("retry = %+v, want duplicate of sequence %d", b, a.Sequence)
	}
	if last, _ := st.LastSequence(ctx(t)); last != a.Sequence {
		t.Fatalf("last sequence %d, want %d", last, a.Sequence)
	}
}

func TestTheStreamRefusesDeleteAndPurge(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	_, e := mustCreate(t, "acme")
	a, err := st.Append(ctx(t), e, 0)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx(t), st.Config().Stream)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx(t), a.Sequence); err == nil {
		t.Fatal("deleting an event succeeded; the stream must deny it")
	}
	if err := stream.Purge(ctx(t)); err == nil {
		t.Fatal("purging the stream succeeded; it must deny it")
	}
	if _, err := st.Get(ctx(t), a.Sequence); err != nil {
		t.Fatalf("event gone after refused delete/purge: %v", err)
	}
}

func TestSubjectsFilterByOrganizationAndEventType(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	acme, c1 := mustCreate(t, "acme")
	a, _ := st.Append(ctx(t), c1, 0)
	_, c2 := mustCreate(t, "globex")
	st.Append(ctx(t), c2, 0)
	r, _, _ := acme.Rotate(env())
	st.Append(ctx(t), r, a.Sequence)

	count := func(filter string) uint64 {
		t.Helper()
		cons, err := js.OrderedConsumer(ctx(t), st.Config().Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
		if err != nil {
			t.Fatal(err)
		}
		return cons.CachedInfo().NumPending
	}
	if n := count("ledger.tokens.acme.>"); n != 2 {
		t.Errorf("acme events = %d, want 2", n)
	}
	if n := count("ledger.tokens.*.*.TokenCreated"); n != 2 {
		t.Errorf("TokenCreated events = %d, want 2", n)
	}
	if n := count("ledger.tokens.acme.*.TokenRotated"); n != 1 {
		t.Errorf("acme TokenRotated events = %d, want 1", n)
	}
}

func TestFollowDeliversHistoryThenLiveEvents(t *testing.T) {
	st, _, _ := eventstoretest.MustStore(t)
	tok, c := mustCreate(t, "acme")
	a, _ := st.Append(ctx(t), c, 0)

	got := make(chan eventstore.Recorded, 10)
	fctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- st.Follow(fctx, 1, func(r eventstore.Recorded) error { got <- r; return nil })
	}()
	if r := <-got; r.Sequence != a.Sequence || r.Event.Type != domain.TokenCreated {
		t.Fatalf("first followed event = %d %s", r.Sequence, r.Event.Type)
	}
	r, _, _ := tok.Rotate(env())
	b, _ := st.Append(ctx(t), r, a.Sequence)
	select {
	case rec := <-got:
		if rec.Sequence != b.Sequence || rec.Event.Type != domain.TokenRotated {
			t.Fatalf("live event = %d %s", rec.Sequence, rec.Event.Type)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("live event not delivered")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow returned %v after cancel", err)
	}
}

func TestLoadingHistoriesLeavesNoConsumersBehind(t *testing.T) {
	st, js, _ := eventstoretest.MustStore(t)
	tok, e := mustCreate(t, "acme")
	if _, err := st.Append(ctx(t), e, 0); err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if h, err := st.Load(ctx(t), "acme", tok.ID()); err != nil || len(h) != 1 {
			t.Fatalf("load: %d events, %v", len(h), err)
		}
	}
	stream, err := js.Stream(ctx(t), "TOKENS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers != 0 {
		t.Fatalf("%d consumers left after 50 loads", info.State.Consumers)
	}
}
