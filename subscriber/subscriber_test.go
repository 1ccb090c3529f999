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
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/natsaccess"
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
	if want := uint64(base + tokens*eventsPerLifecycle); last != want {
		t.Fatalf("stream has %d events, want %d", last, want)
	}
	for name, c := range map[string]*collector{"cache-a": a, "cache-b": b} {
		got := c.waitFor(t, last)
		checkContiguous(t, name, got, 1, last)
		if n := checkOrderPerToken(t, name, got); n != tokens+base {
			t.Fatalf("%s: events of %d tokens, want %d", name, n, tokens+base)
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
	s1, err := subscriber.New(subscriber.Config{URL: h.url, Token: h.secret, Durable: durable, Start: subscriber.StartFirst()})
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
	if want := uint64(base + (20+4+3)*eventsPerLifecycle); last != want {
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
	stuck := uint64(base + eventsPerLifecycle + 1) // the second token's creation
	reached := make(chan struct{})
	s1, err := subscriber.New(subscriber.Config{URL: h.url, Token: h.secret, Durable: durable, Start: subscriber.StartFirst(),
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
	r := h.start(t, subscriber.Config{Durable: "ids", Start: subscriber.StartAtSequence(base + 1), MaxRetries: -1}, func(s *subscriber.Subscriber) {
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

func TestFiltersByTypeAndWhatTheTokenReads(t *testing.T) {
	// A subscriber gets what its token may read (an organization token: its
	// organization's events; a workspace token: its own token's), through
	// one filter: one type's subject when the handlers take one type, else
	// all the token reads, the other types acked without a handler seeing
	// them.
	h := newHarness(t)
	globexSecret := h.otherOrgToken(t, "globex")
	wsID, wsSecret := h.token(t, domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "ws-service"})
	only := func(types ...domain.EventType) func(c *collector) func(*subscriber.Subscriber) {
		return func(c *collector) func(*subscriber.Subscriber) {
			return func(s *subscriber.Subscriber) {
				for _, typ := range types {
					switch typ {
					case domain.TokenRotated:
						subscriber.On(s, func(ctx context.Context, e subscriber.Event, _ domain.RotatedData) error { return c.handle(ctx, e) })
					case domain.TokenDeleted:
						subscriber.On(s, func(ctx context.Context, e subscriber.Event, _ domain.DeletedData) error { return c.handle(ctx, e) })
					case domain.TokenUpdated:
						subscriber.On(s, func(ctx context.Context, e subscriber.Event, _ domain.UpdatedData) error { return c.handle(ctx, e) })
					}
				}
				if len(types) == 0 {
					s.OnAny(c.handle)
				}
			}
		}
	}
	subs := []struct {
		durable, secret, org string
		register             func(*collector) func(*subscriber.Subscriber)
		filter               string
		c                    *collector
	}{
		{durable: "rotations", secret: h.secret, register: only(domain.TokenRotated), filter: "ledger.tokens.acme.*.TokenRotated"},
		{durable: "rotations-deletions", secret: h.secret, register: only(domain.TokenRotated, domain.TokenDeleted), filter: "ledger.tokens.acme.>"},
		{durable: "acme-only", secret: h.secret, org: "acme", register: only(), filter: "ledger.tokens.acme.>"},
		{durable: "globex", secret: globexSecret, register: only(), filter: "ledger.tokens.globex.>"},
		{durable: "own", secret: wsSecret, register: only(), filter: "ledger.tokens.acme." + wsID + ".*"},
		{durable: "own-updates", secret: wsSecret, register: only(domain.TokenUpdated), filter: "ledger.tokens.acme." + wsID + ".TokenUpdated"},
	}
	for i := range subs {
		s := &subs[i]
		s.c = newCollector()
		h.start(t, subscriber.Config{Token: s.secret, Durable: s.durable, OrganizationID: s.org, Start: subscriber.StartFirst()}, s.register(s.c))
		if f := h.consumerOf(t, s.secret, s.durable).Config.FilterSubject; f != s.filter {
			t.Errorf("%s: filter %q, want %q", s.durable, f, s.filter)
		}
	}
	h.lifecycles(t, "f", 2, 2)
	_, _ = h.appendCreated(t, "globex")
	_, lastGlobex := h.appendCreated(t, "globex")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	renamed := "ws-service-2"
	upd, err := h.ledger.UpdateToken(ctx, h.owner, wsID, domain.UpdateToken{Name: &renamed}, "")
	if err != nil {
		t.Fatal(err)
	}
	h.lifecycles(t, "g", 1, 1)
	last := h.last(t)

	byName := map[string]*collector{}
	for _, s := range subs {
		byName[s.durable] = s.c
	}
	count := func(es []subscriber.Event, keep func(subscriber.Event) bool) int {
		n := 0
		for _, e := range es {
			if keep(e) {
				n++
			}
		}
		return n
	}
	acme := byName["acme-only"].waitFor(t, last)
	if n := count(acme, func(e subscriber.Event) bool { return e.OrganizationID == "acme" }); n != len(acme) || n != int(last)-3 {
		t.Fatalf("acme-only: %d events, %d of acme; want the %d of acme", len(acme), n, last-3)
	}
	checkOrderPerToken(t, "acme-only", acme)
	globex := byName["globex"].waitFor(t, lastGlobex)
	if n := count(globex, func(e subscriber.Event) bool { return e.OrganizationID == "globex" }); n != 3 || len(globex) != 3 {
		t.Fatalf("globex: %d events, %d of globex; want its token's creation and the two written", len(globex), n)
	}
	rot := byName["rotations"].waitFor(t, last-1) // the last event is a deletion
	if n := count(rot, func(e subscriber.Event) bool { return e.Type == domain.TokenRotated && e.OrganizationID == "acme" }); n != 3*2 || len(rot) != n {
		t.Fatalf("rotations: %d events, %d rotations of acme; want 6", len(rot), n)
	}
	rd := byName["rotations-deletions"].waitFor(t, last)
	if n := count(rd, func(e subscriber.Event) bool { return e.Type == domain.TokenRotated || e.Type == domain.TokenDeleted }); n != 3*3 || len(rd) != n {
		t.Fatalf("rotations-deletions: %d events, %d rotations or deletions; want 9", len(rd), n)
	}
	// The events of other types were acked all the same: nothing is left.
	h.waitAcked(t, h.secret, "rotations-deletions", last)
	own := byName["own"].waitFor(t, upd.Sequence)
	if len(own) != 2 || own[0].TokenID != wsID || own[0].Type != domain.TokenCreated || own[1].TokenID != wsID || own[1].Type != domain.TokenUpdated {
		t.Fatalf("own: %v, want the workspace token's creation and rename", own)
	}
	if ups := byName["own-updates"].waitFor(t, upd.Sequence); len(ups) != 1 || ups[0].TokenID != wsID {
		t.Fatalf("own-updates: %v", ups)
	}
	// Nothing else arrives: the stream is ordered and every one of them has
	// taken the last event it may read... but for the workspace token, whose
	// last is the rename: its durable is acked up to it.
	h.waitAcked(t, wsSecret, "own", upd.Sequence)
	if n, _ := byName["own"].tail(); n != 2 {
		t.Fatalf("own: %d events", n)
	}
}

func TestRunRefusesATokenOrAnOrganizationItCannotRead(t *testing.T) {
	h := newHarness(t)
	run := func(cfg subscriber.Config) error {
		t.Helper()
		cfg.URL = h.url
		s, err := subscriber.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		s.OnAny(func(context.Context, subscriber.Event) error { return nil })
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		return s.Run(ctx)
	}
	const bogus = "tlo_thisisnotasecretthatthe1edgerknows"
	err := run(subscriber.Config{Token: bogus, Durable: "d"})
	if err == nil || !strings.Contains(err.Error(), "refused Token") || strings.Contains(err.Error(), bogus) {
		t.Fatalf("Run with a token the ledger does not know: %v", err)
	}
	err = run(subscriber.Config{Token: h.secret, Durable: "d", OrganizationID: "globex"})
	if err == nil || !strings.Contains(err.Error(), `OrganizationID "globex": the token belongs to organization "acme"`) || strings.Contains(err.Error(), h.secret) {
		t.Fatalf("Run for an organization the token does not read: %v", err)
	}
}

func TestServicesWithDifferentTokensKeepTheirDurablesApart(t *testing.T) {
	// Two services pick the same durable name, each with its own token:
	// each gets a consumer of its own token and every event (they do not
	// split them), neither can read or delete the other's, and one going
	// away leaves the other where it was.
	h := newHarness(t)
	idA, secretA := h.token(t, domain.CreateToken{Scope: "organization", Name: "service-a", Role: string(domain.RoleOrganizationMember)})
	idB, secretB := h.token(t, domain.CreateToken{Scope: "organization", Name: "service-b", Role: string(domain.RoleOrganizationMember)})
	a, b := newCollector(), newCollector()
	ra := h.start(t, subscriber.Config{Token: secretA, Durable: "cache", Start: subscriber.StartFirst()}, func(s *subscriber.Subscriber) { s.OnAny(a.handle) })
	h.start(t, subscriber.Config{Token: secretB, Durable: "cache", Start: subscriber.StartFirst()}, func(s *subscriber.Subscriber) { s.OnAny(b.handle) })
	h.lifecycles(t, "x", 4, 2)
	last := h.last(t)
	checkContiguous(t, "service a", a.waitFor(t, last), 1, last)
	checkContiguous(t, "service b", b.waitFor(t, last), 1, last)
	infoA, infoB := h.consumerOf(t, secretA, "cache"), h.consumerOf(t, secretB, "cache")
	if !strings.HasPrefix(infoA.Name, idA+"-") || !strings.HasPrefix(infoB.Name, idB+"-") {
		t.Fatalf("consumers %s and %s, want one of each token's names", infoA.Name, infoB.Name)
	}

	// A stops; B's connection tries A's consumer, which the server refuses.
	if err := ra.stop(); err != nil {
		t.Fatal(err)
	}
	floorA := h.consumerOf(t, secretA, "cache").AckFloor.Stream
	if floorA != last {
		t.Fatalf("service a stopped at ack floor %d, want %d", floorA, last)
	}
	b2 := connectWatched(t, h.url, secretB)
	b2.refused(t, natsaccess.APIPrefix+".CONSUMER.INFO.TOKENS."+infoA.Name, func(ctx context.Context) error {
		_, err := b2.js.Consumer(ctx, "TOKENS", infoA.Name)
		return err
	})
	b2.refused(t, natsaccess.APIPrefix+".CONSUMER.DELETE.TOKENS."+infoA.Name, func(ctx context.Context) error {
		return b2.js.DeleteConsumer(ctx, "TOKENS", infoA.Name)
	})
	// Nor may it make a consumer in A's name to read from A's position.
	b2.refused(t, natsaccess.APIPrefix+".CONSUMER.CREATE.TOKENS."+infoA.Name, func(ctx context.Context) error {
		_, err := b2.js.CreateOrUpdateConsumer(ctx, "TOKENS", jetstream.ConsumerConfig{Name: infoA.Name, FilterSubject: "ledger.tokens.acme.>"})
		return err
	})

	// B goes on alone; A's durable is where A left it, and A, back, resumes
	// there.
	h.lifecycles(t, "y", 1, 1)
	last2 := h.last(t)
	checkContiguous(t, "service b", b.waitFor(t, last2), 1, last2)
	if info := h.consumerOf(t, secretA, "cache"); info.Name != infoA.Name || info.AckFloor.Stream != floorA || info.NumPending != last2-last {
		t.Fatalf("service a's durable after b went on: %s, ack floor %d, pending %d; want %s, %d, %d", info.Name, info.AckFloor.Stream, info.NumPending, infoA.Name, floorA, last2-last)
	}
	again := newCollector()
	h.start(t, subscriber.Config{Token: secretA, Durable: "cache"}, func(s *subscriber.Subscriber) { s.OnAny(again.handle) })
	checkContiguous(t, "service a, back", again.waitFor(t, last2), last+1, last2)
}

func TestADurableSurvivesARotationOfItsToken(t *testing.T) {
	// The ledger cuts the connections of a rotated token, and the server
	// refuses its old secret: Run returns and says why. Started again with
	// the new secret, the service finds the same consumer (the names are the
	// token's) and resumes right after the last event it acked.
	h := newHarness(t)
	id, secret := h.token(t, domain.CreateToken{Scope: "organization", Name: "rotating-service", Role: string(domain.RoleOrganizationMember)})
	first := newCollector()
	r := h.start(t, subscriber.Config{Token: secret, Durable: "cache", Start: subscriber.StartFirst()}, func(s *subscriber.Subscriber) { s.OnAny(first.handle) })
	h.lifecycles(t, "before", 2, 2)
	checkContiguous(t, "before the rotation", first.waitFor(t, h.last(t)), 1, h.last(t))
	before := h.consumerOf(t, secret, "cache")

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	rot, err := h.ledger.RotateToken(ctx, h.owner, id, "")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		r.once.Do(func() {})
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization violation") || !strings.Contains(err.Error(), "current secret") || strings.Contains(err.Error(), secret) {
			t.Fatalf("Run after the rotation returned %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Run went on after its token was rotated")
	}
	if _, err := h.l.Service(t, secret); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("the old secret connects: %v", err)
	}
	// Events while the service is away.
	h.lifecycles(t, "away", 2, 2)
	last := h.last(t)

	fresh := rot.Secret.Reveal()
	after := h.consumerOf(t, fresh, "cache")
	if after.Name != before.Name {
		t.Fatalf("consumer %s after the rotation, %s before", after.Name, before.Name)
	}
	second := newCollector()
	h.start(t, subscriber.Config{Token: fresh, Durable: "cache", Start: subscriber.StartNew()}, func(s *subscriber.Subscriber) { s.OnAny(second.handle) })
	got := second.waitFor(t, last)
	// The first run may have handled its own token's rotation before the
	// cut, and its ack may have been lost with the connection: the second
	// run starts right after the last acked event, whichever it was.
	checkContiguous(t, "after the rotation", got, after.AckFloor.Stream+1, last)
	if after.AckFloor.Stream+1 < rot.Sequence {
		t.Fatalf("the durable's ack floor went back to %d (the rotation is at %d)", after.AckFloor.Stream, rot.Sequence)
	}
	all := append(first.snapshot(), got...)
	seen := map[uint64]bool{}
	for _, e := range all {
		seen[e.Sequence] = true
	}
	for seq := uint64(1); seq <= last; seq++ {
		if !seen[seq] {
			t.Fatalf("sequence %d reached neither run", seq)
		}
	}
	if h.consumerOf(t, fresh, "cache").Name != before.Name {
		t.Fatal("the durable moved to another consumer")
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	if _, err := subscriber.New(subscriber.Config{}); err == nil || !strings.Contains(err.Error(), "Durable is required") || !strings.Contains(err.Error(), "Token is required") {
		t.Fatalf("no durable and no token: %v", err)
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
		{subscriber.Config{Token: "t", Durable: "d", Start: subscriber.StartAtTime(time.Time{})}, "Start: StartAtTime"},
		// 3 retries from 100ms: 100+200+400ms; 10 from 1s: 1+2+4+7×5s
		{subscriber.Config{Token: "t", Durable: "d", AckWait: 700 * time.Millisecond}, "AckWait 700ms: must exceed the retry budget of 700ms"},
		{subscriber.Config{Token: "t", Durable: "d", MaxRetries: 10, RetryInterval: time.Second, AckWait: 30 * time.Second}, "retry budget of 42s"},
		{subscriber.Config{Durable: "d"}, "Token is required"},
	} {
		if _, err := subscriber.New(c.cfg); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%+v: got %v, want it to name %q", c.cfg, err, c.field)
		}
	}
	for _, ok := range []subscriber.Config{
		{Token: "t", Durable: "billing-cache"},
		{Token: "t", Durable: "d", AckWait: 701 * time.Millisecond},
		{Token: "t", Durable: "d", MaxRetries: -1, AckWait: time.Millisecond},
		{Token: "t", Durable: "d", OrganizationID: "acme", Start: subscriber.StartAtTime(time.Now())},
	} {
		if _, err := subscriber.New(ok); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}

func TestMisuseIsRefused(t *testing.T) {
	s, err := subscriber.New(subscriber.Config{Token: "t", Durable: "d", URL: "nats://127.0.0.1:1"})
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

	s, _ = subscriber.New(subscriber.Config{Token: "t", Durable: "d", URL: "nats://127.0.0.1:1"})
	mustPanic(t, "a pointer data type", func() {
		subscriber.On(s, func(context.Context, subscriber.Event, *domain.RotatedData) error { return nil })
	})
	subscriber.On(s, func(context.Context, subscriber.Event, domain.ReuseDetectedData) error { return nil })
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "connect to NATS at nats://127.0.0.1:1") {
		t.Fatalf("Run with no server: %v", err)
	}

	// A stream the token has no consumers on: the subscriber never creates
	// it, and says which one the token reads.
	h := newHarness(t)
	s, _ = subscriber.New(subscriber.Config{Token: h.secret, Durable: "d", URL: h.url, Stream: "NOPE"})
	s.OnAny(func(context.Context, subscriber.Event) error { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), `Stream "NOPE": this token's consumers are on stream "TOKENS"`) {
		t.Fatalf("Run on a missing stream: %v", err)
	}

	// A custom poison queue: Poisoned is nil.
	s, _ = subscriber.New(subscriber.Config{Token: "t", Durable: "d", PoisonQueue: discard{}})
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
	if info := h.consumerInfo(t, "evolving"); info.Config.FilterSubject != "ledger.tokens.acme.*.TokenRotated" {
		t.Fatalf("filter for rotations alone: %q", info.Config.FilterSubject)
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
	// One filter: two types take all the token reads, and the others are
	// acked unseen.
	if info := h.consumerInfo(t, "evolving"); info.Config.FilterSubject != "ledger.tokens.acme.>" || len(info.Config.FilterSubjects) != 0 {
		t.Fatalf("filter after the upgrade: %q %v", info.Config.FilterSubject, info.Config.FilterSubjects)
	}
}

func TestRunFailsWhenItsDurableIsDeleted(t *testing.T) {
	// A service may delete its own token's consumers (to free a name, say).
	// The subscriber does not quietly make a new one (which would start
	// over from Start): Run says so and returns.
	h := newHarness(t)
	r := h.start(t, subscriber.Config{Durable: "doomed"}, func(s *subscriber.Subscriber) {
		s.OnAny(func(context.Context, subscriber.Event) error { return nil })
	})
	name := h.consumerInfo(t, "doomed").Name
	// The operator deletes it (services cannot).
	js, _ := jetstream.NewWithAPIPrefix(h.l.Conns.Ledger, natsaccess.ServicesAPIPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := js.DeleteConsumer(ctx, "TOKENS", name); err != nil {
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
