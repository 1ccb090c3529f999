package node

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/projections"
)

// While app.Run has marked the view's feed faulty (the server delivered what
// its consumer did not ask for; app's TestAHeadersOnlyFeedQuarantinesNothing
// AndRecoversByItself and TestAFeedWhoseFilterIsNarrowedIsNoticedBeforeAnEvent
// IsMissed check when Run marks and clears it), readiness names the fault on
// the view, even with the view caught up; once cleared, it is ready again.
func TestReadinessNamesAFeedFault(t *testing.T) {
	ns := eventstoretest.MustServer(t)
	nc, js := eventstoretest.MustConnect(t, ns)
	store, err := eventstore.Open(context.Background(), js, eventstore.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	view := projections.NewTokens()
	check := healthOf(nc, store, view, &lagWatch{}, func() error { return nil })
	viewErr := func() error {
		for _, c := range check(context.Background()) {
			if c.Name == "view" {
				return c.Err
			}
		}
		t.Fatal("no view component")
		return nil
	}
	if err := viewErr(); err != nil {
		t.Fatalf("view before any fault: %v", err)
	}
	fault := errors.New("reading the stream stopped at sequence 0, following again: " + eventstore.ErrBadDelivery.Error() + ": consumer X is not as the ledger made it: headers only")
	view.SetFeedFault(fault)
	if err := viewErr(); !errors.Is(err, fault) || !strings.Contains(err.Error(), "feed fault") {
		t.Fatalf("view with a feed fault: %v", err)
	}
	view.SetFeedFault(nil)
	if err := viewErr(); err != nil {
		t.Fatalf("view once the fault is cleared: %v", err)
	}
}

func TestHealthReportsAViewStuckBehindTheStream(t *testing.T) {
	w := &lagWatch{}
	t0 := time.Now()
	if err := w.check(10, 10, t0); err != nil {
		t.Fatalf("caught up: %v", err)
	}
	// Under a steady load the view is always a little behind, yet keeps up.
	for i := range uint64(20) {
		if err := w.check(10+i, 11+i, t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("keeping up under load, second %d: %v", i, err)
		}
	}
	// Stuck: it never reaches what the stream held when it fell behind.
	w = &lagWatch{}
	w.check(9, 10, t0)
	if err := w.check(9, 12, t0.Add(maxLag+time.Second)); err == nil || !strings.Contains(err.Error(), "stuck at sequence 9") {
		t.Fatalf("stuck behind: %v", err)
	}
	if err := w.check(12, 12, t0.Add(maxLag+2*time.Second)); err != nil {
		t.Fatalf("caught up again: %v", err)
	}
}

// Liveness never waits for a check: while one hangs (NATS frozen), it
// answers at once with the last state known, says the state is unknown once
// the check has hung for stuckAfter, and reports the check's answer once it
// comes.
func TestLivenessAnswersAtOnceWhileAReadinessCheckHangs(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	release := make(chan struct{})
	calls := make(chan struct{}, 10)
	hang := false
	down := errors.New("connection reconnecting")
	m := newMonitor(func(context.Context) []httpapi.Component {
		calls <- struct{}{}
		mu.Lock()
		h := hang
		mu.Unlock()
		if h {
			<-release
			return []httpapi.Component{{Name: "nats", Err: down}}
		}
		return []httpapi.Component{{Name: "nats"}}
	})
	m.now = clock
	m.ready(context.Background())
	<-calls

	mu.Lock()
	hang = true
	mu.Unlock()
	advance(refreshAfter)
	live := func() []httpapi.Component {
		t.Helper()
		done := make(chan []httpapi.Component, 1)
		go func() { done <- m.live(context.Background()) }()
		select {
		case c := <-done:
			return c
		case <-time.After(time.Second):
			t.Fatal("liveness waited for the hanging check")
			return nil
		}
	}
	if c := live(); len(c) != 1 || c[0].Err != nil {
		t.Fatalf("liveness while the check hangs, at first: %+v; want the last state, nats ok", c)
	}
	<-calls // the refresh it asked for, now hanging
	advance(stuckAfter)
	if c := live(); len(c) != 1 || c[0].Err == nil || !strings.Contains(c[0].Err.Error(), "not known") {
		t.Fatalf("liveness once the check has hung for %s: %+v; want nats not known", stuckAfter, c)
	}
	select {
	case <-calls:
		t.Fatal("liveness started a second check while one hangs")
	default:
	}
	close(release)
	waitFor := time.Now().Add(5 * time.Second)
	for {
		if c := live(); len(c) == 1 && errors.Is(c[0].Err, down) {
			break
		}
		if time.Now().After(waitFor) {
			t.Fatal("liveness does not report the check's answer once it came")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
