package subscriber_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/subscriber"
)

func TestTwoDurablesEachGetEveryEventInOrderPerToken(t *testing.T) {
	h := newHarness(t)
	a, b := newCollector(), newCollector()
	h.start(t, subscriber.Config{Durable: "cache-a", Start: subscriber.StartFirst()}, func(s *subscriber.Subscriber) { s.OnAny(a.handle) })
	// b registers one typed handler per event type, and checks each gets
	// its own data.
	var mismatches atomic.Int32
	typed := func(want domain.EventType) func(context.Context, subscriber.Event) error {
		return func(ctx context.Context, e subscriber.Event) error {
			if e.Type != want {
				mismatches.Add(1)
			}
			return b.handle(ctx, e)
		}
	}
	h.start(t, subscriber.Config{Durable: "cache-b", Start: subscriber.StartFirst()}, func(s *subscriber.Subscriber) {
		subscriber.On(s, func(ctx context.Context, e subscriber.Event, d domain.CreatedData) error {
			if d.Fingerprint == "" || d.Name != e.TokenName {
				mismatches.Add(1)
			}
			return typed(domain.TokenCreated)(ctx, e)
		})
		subscriber.On(s, func(ctx context.Context, e subscriber.Event, d domain.UpdatedData) error {
			if d.Name == nil || *d.Name != e.TokenName {
				mismatches.Add(1)
			}
			return typed(domain.TokenUpdated)(ctx, e)
		})
		subscriber.On(s, func(ctx context.Context, e subscriber.Event, d domain.RotatedData) error {
			if d.Fingerprint == "" || d.PreviousFingerprint == "" || d.Fingerprint == d.PreviousFingerprint {
				mismatches.Add(1)
			}
			return typed(domain.TokenRotated)(ctx, e)
		})
		subscriber.On(s, func(ctx context.Context, e subscriber.Event, _ domain.DeletedData) error {
			return typed(domain.TokenDeleted)(ctx, e)
		})
	})

	const tokens = 12
	h.lifecycles(t, "svc", tokens, 6)
	last := h.last(t)
	if want := uint64(1 + tokens*eventsPerLifecycle); last != want {
		t.Fatalf("stream has %d events, want %d", last, want)
	}
	for name, c := range map[string]*collector{"cache-a": a, "cache-b": b} {
		got := c.waitFor(t, last)
		checkContiguous(t, name, got, 1, last)
		if n := checkOrderPerToken(t, name, got); n != tokens+1 {
			t.Fatalf("%s: events of %d tokens, want %d", name, n, tokens+1)
		}
		for _, e := range got {
			if e.Delivered != 1 {
				t.Fatalf("%s: sequence %d delivered %d times", name, e.Sequence, e.Delivered)
			}
		}
	}
	if n := mismatches.Load(); n > 0 {
		t.Fatalf("%d typed handlers got the wrong type or data", n)
	}
}

func TestAStoppedDurableCatchesUpWithNothingLostOrSkipped(t *testing.T) {
	h := newHarness(t)
	// Another service, with a durable of its own, runs throughout: one
	// stopping does not hold it back.
	steady := newCollector()
	h.start(t, subscriber.Config{Durable: "steady", Start: subscriber.StartFirst()}, func(s *subscriber.Subscriber) { s.OnAny(steady.handle) })
	const durable = "restarts"
	first := newCollector()
	stopAt := 30 // the handler stops the subscriber while handling this event
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	var (
		inFlight    subscriber.Event
		ctxAlive    bool
		handlerDone atomic.Bool
	)
	s1, err := subscriber.New(subscriber.Config{URL: h.url, Durable: durable, Start: subscriber.StartFirst()})
	if err != nil {
		t.Fatal(err)
	}
	s1.OnAny(func(ctx context.Context, e subscriber.Event) error {
		first.add(e)
		if n, _ := first.tail(); n == stopAt {
			// Stop while this event is in flight: Run must let it finish,
			// without cancelling its context, and ack it.
			cancel1()
			inFlight = e
			ctxAlive = ctx.Err() == nil
			handlerDone.Store(true)
		}
		return nil
	})
	run1 := make(chan error, 1)
	go func() { run1 <- s1.Run(ctx1) }()

	// Events keep flowing while it runs, while it stops and while it is down.
	writing := make(chan []string, 1)
	go func() {
		ids := make([]string, 0, 20)
		for i := range 20 {
			id, err := h.lifecycle(fmt.Sprintf("during-%d", i))
			if err != nil {
				t.Error(err)
				break
			}
			ids = append(ids, id)
		}
		writing <- ids
	}()
	select {
	case err := <-run1:
		if err != nil {
			t.Fatalf("first run: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("the first run did not stop")
	}
	if !handlerDone.Load() || !ctxAlive {
		t.Fatalf("Run returned before the handler in flight finished (%v), or cancelled its context (alive: %v)", handlerDone.Load(), ctxAlive)
	}
	got1 := first.snapshot()
	checkContiguous(t, "first run", got1, 1, uint64(len(got1)))
	if got1[len(got1)-1].Sequence != inFlight.Sequence {
		t.Fatalf("the first run handled sequence %d after the one in flight at the stop (%d)", got1[len(got1)-1].Sequence, inFlight.Sequence)
	}
	info := h.consumerInfo(t, durable)
	if info.AckFloor.Stream != inFlight.Sequence {
		t.Fatalf("after a graceful stop the durable's ack floor is %d, want %d (the event in flight, acked)", info.AckFloor.Stream, inFlight.Sequence)
	}
	// More while nobody consumes.
	h.lifecycles(t, "down", 4, 2)
	var ids []string
	select {
	case ids = <-writing:
	case <-time.After(wait):
		t.Fatal("writer did not finish")
	}
	if len(ids) != 20 {
		t.FailNow()
	}

	// Restarted with the same durable (and a Start that only a new durable
	// would use), it resumes right after the last acked event.
	second := newCollector()
	h.start(t, subscriber.Config{Durable: durable, Start: subscriber.StartNew()}, func(s *subscriber.Subscriber) { s.OnAny(second.handle) })
	h.lifecycles(t, "after", 3, 3)
	last := h.last(t)
	if want := uint64(1 + (20+4+3)*eventsPerLifecycle); last != want {
		t.Fatalf("stream has %d events, want %d", last, want)
	}
	got2 := second.waitFor(t, last)
	// At least once, precisely: every event once, across both runs, in
	// order. A graceful stop acks the event in flight, so nothing comes
	// twice; only an event that reached the stopping subscriber unhandled
	// comes again (handed back, so Delivered 2).
	checkContiguous(t, "second run", got2, inFlight.Sequence+1, last)
	all := append(got1, got2...)
	checkContiguous(t, "both runs", all, 1, last)
	checkOrderPerToken(t, "both runs", all)
	gotSteady := steady.waitFor(t, last)
	checkContiguous(t, "the durable that kept running", gotSteady, 1, last)
	checkOrderPerToken(t, "the durable that kept running", gotSteady)
	for _, e := range got2[1:] {
		if e.Delivered != 1 {
			t.Fatalf("sequence %d delivered %d times; only the first after the restart may have reached the stopping subscriber", e.Sequence, e.Delivered)
		}
	}
	t.Logf("stopped at sequence %d of %d; the first event after the restart was delivered %d time(s)", inFlight.Sequence, last, got2[0].Delivered)
}

func TestAStopThatMustCancelAHandlerHandsTheEventBack(t *testing.T) {
	h := newHarness(t)
	const durable = "stuck"
	h.lifecycles(t, "x", 2, 1)
	stuck := uint64(1 + eventsPerLifecycle + 1) // the second token's creation
	reached := make(chan struct{})
	s1, err := subscriber.New(subscriber.Config{URL: h.url, Durable: durable, Start: subscriber.StartFirst(),
		MaxRetries: -1, AckWait: 2 * time.Second, ShutdownTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var cancelledErr error
	s1.OnAny(func(ctx context.Context, e subscriber.Event) error {
		if e.Sequence == stuck {
			close(reached)
			<-ctx.Done() // a handler that only a cancelled context stops
			cancelledErr = ctx.Err()
			return ctx.Err()
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	run1 := make(chan error, 1)
	go func() { run1 <- s1.Run(ctx) }()
	select {
	case <-reached:
	case err := <-run1:
		t.Fatalf("Run: %v", err)
	case <-time.After(wait):
		t.Fatal("the stuck event never came")
	}
	cancel()
	select {
	case err := <-run1:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return")
	}
	if !errors.Is(cancelledErr, context.Canceled) {
		t.Fatalf("the handler's context ended with %v", cancelledErr)
	}
	select {
	case m, ok := <-s1.Poisoned():
		if ok {
			t.Fatalf("a stop parked event %s", m.UUID)
		}
	default:
		t.Fatal("Poisoned is not closed after Run returned")
	}

	// The event comes again, first, when the durable runs again.
	again := newCollector()
	h.start(t, subscriber.Config{Durable: durable, AckWait: 2 * time.Second}, func(s *subscriber.Subscriber) { s.OnAny(again.handle) })
	got := again.waitFor(t, h.last(t))
	checkContiguous(t, "restart", got, stuck, h.last(t))
	if got[0].Delivered < 2 || got[0].Type != domain.TokenCreated {
		t.Fatalf("the handed-back event came as %+v", got[0])
	}
}

// errBoom is the failing handler's error.
var errBoom = errors.New("boom: downstream cache unavailable")

func TestAFailingEventIsRetriedThenParkedAndTheRestFlow(t *testing.T) {
	h := newHarness(t)
	ids := h.lifecycles(t, "p", 3, 1)
	failTok, panicTok, permTok := ids[0], ids[1], ids[2]
	const retries = 2
	var (
		mu       sync.Mutex
		attempts = map[string][]subscriber.Event{} // by token, rotations only
	)
	got := newCollector()
	r := h.start(t, subscriber.Config{Durable: "failing", Start: subscriber.StartFirst(), MaxRetries: retries, RetryInterval: time.Millisecond},
		func(s *subscriber.Subscriber) {
			subscriber.On(s, func(_ context.Context, e subscriber.Event, d domain.RotatedData) error {
				if e.Version != 3 { // the first rotation of each token fails
					return nil
				}
				mu.Lock()
				attempts[e.TokenID] = append(attempts[e.TokenID], e)
				mu.Unlock()
				switch e.TokenID {
				case failTok:
					return fmt.Errorf("drop %s: %w", d.PreviousFingerprint, errBoom)
				case panicTok:
					panic("cache corrupted")
				case permTok:
					return subscriber.Permanent(errors.New("never retry this"))
				}
				return nil
			})
			s.OnAny(got.handle)
		})
	if r.Poisoned() == nil {
		t.Fatal("no in-memory poison queue by default")
	}

	// A message no ledger writes: parked at once, without a handler seeing
	// it, and the rest keep flowing.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	garbage, err := h.ledgerJ.PublishMsg(ctx, &nats.Msg{Subject: "ledger.tokens.acme.tok_garbage.TokenRotated", Data: []byte("{not json"),
		Header: nats.Header{"ce-id": []string{"garbage-1"}}})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := h.appendCreated(t, "acme")
	last := h.last(t)

	events := got.waitFor(t, last)
	// Every event but the three failing rotations and the garbage reached
	// OnAny (which runs after the typed handler, so not for those).
	if want := int(last) - 4; len(events) != want {
		t.Fatalf("%d events handled, want %d: %v", len(events), want, sequences(events))
	}
	if events[len(events)-1].ID != after.ID {
		t.Fatalf("the last event handled is %s, want %s", events[len(events)-1].ID, after.ID)
	}

	parked := map[string]*message.Message{}
	for range 4 {
		select {
		case m := <-r.Poisoned():
			parked[m.Metadata.Get(subscriber.MetadataSubject)] = m
		case <-time.After(wait):
			t.Fatalf("only %d parked messages", len(parked))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for tok, want := range map[string]struct {
		attempts int
		reason   string
	}{
		failTok:  {1 + retries, errBoom.Error()},
		panicTok: {1 + retries, "panic occurred"},
		permTok:  {1, "never retry this"},
	} {
		tries := attempts[tok]
		if len(tries) != want.attempts {
			t.Fatalf("token %s: %d attempts, want %d", tok, len(tries), want.attempts)
		}
		for _, e := range tries {
			if e.Delivered != 1 {
				t.Fatalf("token %s: a retry came as delivery %d: retries happen within one delivery", tok, e.Delivered)
			}
		}
		m := parked["ledger.tokens.acme."+tok+".TokenRotated"]
		if m == nil {
			t.Fatalf("token %s: rotation not parked; parked: %v", tok, parked)
		}
		if m.UUID != tries[0].ID {
			t.Fatalf("token %s: parked UUID %q, want the event id %s", tok, m.UUID, tries[0].ID)
		}
		if reason := m.Metadata.Get(middleware.ReasonForPoisonedKey); !strings.Contains(reason, want.reason) {
			t.Fatalf("token %s: reason_poisoned %q, want it to say %q", tok, reason, want.reason)
		}
		if m.Metadata.Get(middleware.PoisonedHandlerKey) != "failing" || m.Metadata.Get(middleware.PoisonedTopicKey) != "TOKENS" {
			t.Fatalf("token %s: parked metadata %v", tok, m.Metadata)
		}
		if seq := m.Metadata.Get(subscriber.MetadataSequence); seq != strconv.FormatUint(tries[0].Sequence, 10) {
			t.Fatalf("token %s: parked at sequence %s, want %d", tok, seq, tries[0].Sequence)
		}
		var body domain.Event
		if err := json.Unmarshal(m.Payload, &body); err != nil || body.ID != tries[0].ID {
			t.Fatalf("token %s: parked payload is not the event: %v", tok, err)
		}
	}
	g := parked["ledger.tokens.acme.tok_garbage.TokenRotated"]
	if g == nil || g.UUID != "garbage-1" || !strings.Contains(g.Metadata.Get(middleware.ReasonForPoisonedKey), "undecodable event at stream sequence "+strconv.FormatUint(garbage.Sequence, 10)) {
		t.Fatalf("garbage parked as %+v", g)
	}
	// Parked means acked: nothing is left for the durable (once stopped: the
	// last event's ack is confirmed by then).
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if info := h.consumerInfo(t, "failing"); info.AckFloor.Stream != last || info.NumAckPending != 0 || info.NumPending != 0 {
		t.Fatalf("durable after parking: ack floor %d (want %d), ack pending %d, pending %d", info.AckFloor.Stream, last, info.NumAckPending, info.NumPending)
	}
}

func TestTheMessageIDIsTheEventID(t *testing.T) {
	// Events stored before the CloudEvents headers existed have none: the id
	// then comes from the body. Headers win when present.
	h := newHarness(t)
	_, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "raw", Role: string(domain.RoleOrganizationMember)},
		domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(e)
	subject := "ledger.tokens.acme." + e.TokenID + ".TokenCreated"
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for _, hdr := range []nats.Header{
		{},
		{"ce-id": []string{"from-ce-id"}},
		{"ce-id": []string{"from-ce-id"}, "_watermill_message_uuid": []string{"from-watermill"}},
	} {
		if _, err := h.ledgerJ.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: body, Header: hdr}); err != nil {
			t.Fatal(err)
		}
	}
	r := h.start(t, subscriber.Config{Durable: "ids", Start: subscriber.StartAtSequence(2), MaxRetries: -1}, func(s *subscriber.Subscriber) {
		s.OnAny(func(context.Context, subscriber.Event) error { return errBoom })
	})
	var uuids []string
	for range 3 {
		select {
		case m := <-r.Poisoned():
			uuids = append(uuids, m.UUID)
		case <-time.After(wait):
			t.Fatalf("parked: %v", uuids)
		}
	}
	if want := []string{e.ID, "from-ce-id", "from-watermill"}; strings.Join(uuids, " ") != strings.Join(want, " ") {
		t.Fatalf("UUIDs %v, want %v", uuids, want)
	}
}

func TestStartPositions(t *testing.T) {
	h := newHarness(t)
	h.lifecycles(t, "old", 3, 3)
	history := h.last(t)
	at := time.Now() // JetStream stores the next events at or after this
	h.lifecycles(t, "mid", 1, 1)
	mid := h.last(t)

	type sub struct {
		start subscriber.Start
		from  uint64
		c     *collector
	}
	subs := map[string]*sub{
		"first":       {start: subscriber.StartFirst(), from: 1},
		"zero-value":  {from: mid + 1}, // StartNew
		"new":         {start: subscriber.StartNew(), from: mid + 1},
		"at-seq-3":    {start: subscriber.StartAtSequence(3), from: 3},
		"at-seq-next": {start: subscriber.StartAtSequence(history + 1), from: history + 1},
		"at-time":     {start: subscriber.StartAtTime(at), from: history + 1},
	}
	for name, s := range subs {
		s.c = newCollector()
		h.start(t, subscriber.Config{Durable: name, Start: s.start}, func(sub *subscriber.Subscriber) { sub.OnAny(s.c.handle) })
	}
	h.lifecycles(t, "new", 2, 2)
	last := h.last(t)
	for name, s := range subs {
		checkContiguous(t, name+" ("+s.start.String()+")", s.c.waitFor(t, last), s.from, last)
	}
}

func TestFiltersByTypeAndOrganization(t *testing.T) {
	h := newHarness(t)
	rotations, acme, globex := newCollector(), newCollector(), newCollector()
	h.start(t, subscriber.Config{Durable: "rotations", Start: subscriber.StartFirst()}, func(s *subscriber.Subscriber) {
		subscriber.On(s, func(ctx context.Context, e subscriber.Event, _ domain.RotatedData) error {
			return rotations.handle(ctx, e)
		})
	})
	h.start(t, subscriber.Config{Durable: "acme-only", Start: subscriber.StartFirst(), OrganizationID: "acme"}, func(s *subscriber.Subscriber) { s.OnAny(acme.handle) })
	h.start(t, subscriber.Config{Durable: "globex-only", Start: subscriber.StartFirst(), OrganizationID: "globex"}, func(s *subscriber.Subscriber) { s.OnAny(globex.handle) })
	h.lifecycles(t, "f", 2, 2)
	g1, _ := h.appendCreated(t, "globex")
	g2, lastGlobex := h.appendCreated(t, "globex")
	h.lifecycles(t, "g", 1, 1)
	last := h.last(t)

	for _, e := range acme.waitFor(t, last) {
		if e.OrganizationID != "acme" {
			t.Fatalf("acme-only got %s's event", e.OrganizationID)
		}
	}
	if n := len(acme.snapshot()); n != int(last)-2 {
		t.Fatalf("acme-only got %d events, want %d", n, last-2)
	}
	gs := globex.waitFor(t, lastGlobex)
	if len(gs) != 2 || gs[0].ID != g1.ID || gs[1].ID != g2.ID {
		t.Fatalf("globex-only got %v", gs)
	}
	rs := rotations.waitFor(t, last-1) // the last event is a deletion
	if len(rs) != 3*2 {
		t.Fatalf("rotations got %d events, want 6", len(rs))
	}
	for _, e := range rs {
		if e.Type != domain.TokenRotated {
			t.Fatalf("rotations got a %s", e.Type)
		}
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	if _, err := subscriber.New(subscriber.Config{}); err == nil || !strings.Contains(err.Error(), "Durable is required") {
		t.Fatalf("no durable: %v", err)
	}
	_, err := subscriber.New(subscriber.Config{
		Durable:         "a.b",
		Stream:          "TO KENS",
		SubjectPrefix:   "ledger..tokens",
		OrganizationID:  "not an id!",
		Start:           subscriber.StartAtSequence(0),
		RetryInterval:   -time.Second,
		ShutdownTimeout: -time.Second,
		AckWait:         -time.Second,
	})
	if err == nil {
		t.Fatal("a bad config was accepted")
	}
	for _, field := range []string{"Durable \"a.b\"", "Stream \"TO KENS\"", "SubjectPrefix", "OrganizationID", "Start: StartAtSequence", "RetryInterval", "ShutdownTimeout", "AckWait"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s:\n%v", field, err)
		}
	}
	for _, c := range []struct {
		cfg   subscriber.Config
		field string
	}{
		{subscriber.Config{Durable: "d", Start: subscriber.StartAtTime(time.Time{})}, "Start: StartAtTime"},
		// 3 retries from 100ms: 100+200+400ms; 10 from 1s: 1+2+4+7×5s
		{subscriber.Config{Durable: "d", AckWait: 700 * time.Millisecond}, "AckWait 700ms: must exceed the retry budget of 700ms"},
		{subscriber.Config{Durable: "d", MaxRetries: 10, RetryInterval: time.Second, AckWait: 30 * time.Second}, "retry budget of 42s"},
	} {
		if _, err := subscriber.New(c.cfg); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%+v: got %v, want it to name %q", c.cfg, err, c.field)
		}
	}
	for _, ok := range []subscriber.Config{
		{Durable: "billing-cache"},
		{Durable: "d", AckWait: 701 * time.Millisecond},
		{Durable: "d", MaxRetries: -1, AckWait: time.Millisecond},
		{Durable: "d", OrganizationID: "acme", Start: subscriber.StartAtTime(time.Now())},
	} {
		if _, err := subscriber.New(ok); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}

func TestMisuseIsRefused(t *testing.T) {
	s, err := subscriber.New(subscriber.Config{Durable: "d", URL: "nats://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "no handlers") {
		t.Fatalf("Run without handlers: %v", err)
	}
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "once") {
		t.Fatalf("Run twice: %v", err)
	}
	mustPanic(t, "On after Run", func() { s.OnAny(func(context.Context, subscriber.Event) error { return nil }) })

	s, _ = subscriber.New(subscriber.Config{Durable: "d", URL: "nats://127.0.0.1:1"})
	mustPanic(t, "a pointer data type", func() {
		subscriber.On(s, func(context.Context, subscriber.Event, *domain.RotatedData) error { return nil })
	})
	subscriber.On(s, func(context.Context, subscriber.Event, domain.ReuseDetectedData) error { return nil })
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "connect to NATS at nats://127.0.0.1:1") {
		t.Fatalf("Run with no server: %v", err)
	}

	// No such stream: the subscriber never creates it.
	h := newHarness(t)
	s, _ = subscriber.New(subscriber.Config{Durable: "d", URL: h.url, Stream: "NOPE"})
	s.OnAny(func(context.Context, subscriber.Event) error { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), "stream NOPE") {
		t.Fatalf("Run on a missing stream: %v", err)
	}

	// A custom poison queue: Poisoned is nil.
	s, _ = subscriber.New(subscriber.Config{Durable: "d", PoisonQueue: discard{}})
	if s.Poisoned() != nil {
		t.Fatal("Poisoned is not nil with a custom poison queue")
	}
}

type discard struct{}

func (discard) Publish(string, ...*message.Message) error { return nil }
func (discard) Close() error                              { return nil }

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
}

func TestADurableGetsTheTypesOfANewRelease(t *testing.T) {
	// The durable exists with a filter for rotations; the next release also
	// handles deletions: the filter follows the code, from where the durable
	// is (earlier events of the new type are not replayed: a new Durable
	// with StartFirst does that).
	h := newHarness(t)
	v1 := newCollector()
	r := h.start(t, subscriber.Config{Durable: "evolving", Start: subscriber.StartFirst()}, func(s *subscriber.Subscriber) {
		subscriber.On(s, func(ctx context.Context, e subscriber.Event, _ domain.RotatedData) error { return v1.handle(ctx, e) })
	})
	a := h.lifecycles(t, "a", 1, 1)[0]
	v1.waitFor(t, h.last(t)-1)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	v2 := newCollector()
	h.start(t, subscriber.Config{Durable: "evolving"}, func(s *subscriber.Subscriber) {
		subscriber.On(s, func(ctx context.Context, e subscriber.Event, _ domain.RotatedData) error { return v2.handle(ctx, e) })
		subscriber.On(s, func(ctx context.Context, e subscriber.Event, _ domain.DeletedData) error { return v2.handle(ctx, e) })
	})
	b := h.lifecycles(t, "b", 1, 1)[0]
	got := v2.waitFor(t, h.last(t))
	var seen []string
	for _, e := range got {
		seen = append(seen, string(e.Type)+"@"+e.TokenID)
	}
	want := []string{"TokenRotated@" + b, "TokenRotated@" + b, "TokenDeleted@" + b}
	// Token a's deletion, stored while v1 ran, is past the durable's
	// position unless v1 stopped before JetStream moved it there.
	if len(seen) == 4 && seen[0] == "TokenDeleted@"+a {
		seen = seen[1:]
	}
	if strings.Join(seen, " ") != strings.Join(want, " ") {
		t.Fatalf("after the upgrade: %v, want %v", seen, want)
	}
	if info := h.consumerInfo(t, "evolving"); len(info.Config.FilterSubjects) != 2 {
		t.Fatalf("filters after the upgrade: %v", info.Config.FilterSubjects)
	}
}

func TestRunFailsWhenItsDurableIsDeleted(t *testing.T) {
	// Services cannot delete consumers on the ledger's server; its operator
	// can. The subscriber does not quietly make a new one (which would start
	// over from Start): Run says so and returns.
	h := newHarness(t)
	r := h.start(t, subscriber.Config{Durable: "doomed"}, func(s *subscriber.Subscriber) {
		s.OnAny(func(context.Context, subscriber.Event) error { return nil })
	})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := h.ledgerJ.DeleteConsumer(ctx, "TOKENS", "doomed"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		if err == nil || !strings.Contains(err.Error(), "deleted") {
			t.Fatalf("Run returned %v", err)
		}
		r.once.Do(func() {})
	case <-time.After(wait):
		t.Fatal("Run did not notice its durable was deleted")
	}
}

func TestASlowHandlerIsNotRedeliveredUnderIt(t *testing.T) {
	// The handler takes longer than AckWait; the subscriber keeps telling
	// JetStream the event is in progress, so it is not delivered again.
	h := newHarness(t)
	c := newCollector()
	const ackWait = time.Second
	h.start(t, subscriber.Config{Durable: "slow", Start: subscriber.StartFirst(), AckWait: ackWait, MaxRetries: -1}, func(s *subscriber.Subscriber) {
		s.OnAny(func(ctx context.Context, e subscriber.Event) error {
			if e.Sequence == 1 {
				time.Sleep(ackWait * 8 / 5) // slow work, not synchronisation
			}
			return c.handle(ctx, e)
		})
	})
	h.lifecycles(t, "s", 1, 1)
	last := h.last(t)
	checkContiguous(t, "slow", c.waitFor(t, last), 1, last)
	if info := h.consumerInfo(t, "slow"); info.NumRedelivered != 0 {
		t.Fatalf("%d events were delivered again", info.NumRedelivered)
	}
}
