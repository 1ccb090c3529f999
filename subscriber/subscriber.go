package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/natsaccess"
)

// Event is one delivered event.
type Event struct {
	domain.Event
	// Sequence is the event's stream sequence.
	Sequence uint64
	// Delivered is JetStream's delivery count: 1 the first time, more when
	// the event comes again (after a crash, or a stop while it was on its
	// way). Retries within one delivery do not count.
	Delivered uint64
}

// Subscriber delivers the ledger's token events to handlers. Create it with
// New, register handlers with On and OnAny, then call Run once.
type Subscriber struct {
	cfg      Config
	poisoned chan *message.Message // nil unless the default poison queue is used
	poison   message.Publisher
	running  chan struct{}

	mu       sync.Mutex
	started  bool
	handlers []entry
}

// entry is one registered handler; typ "" takes every type.
type entry struct {
	typ    domain.EventType
	handle func(ctx context.Context, e Event) error
}

// New checks cfg and returns a Subscriber. It does not connect: Run does.
func New(cfg Config) (*Subscriber, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Subscriber{cfg: cfg, poison: cfg.PoisonQueue, running: make(chan struct{})}
	if s.poison == nil {
		s.poisoned = make(chan *message.Message, PoisonBuffer)
		s.poison = &memoryQueue{ch: s.poisoned}
	}
	return s, nil
}

// dataTypes maps each event data type to its event type, learnt from
// domain.Event's own decoder so that a new event type is known here at once.
var dataTypes = func() map[reflect.Type]domain.EventType {
	m := make(map[reflect.Type]domain.EventType, len(domain.EventTypes))
	for _, t := range domain.EventTypes {
		var e domain.Event
		if err := json.Unmarshal([]byte(`{"event_type":"`+string(t)+`"}`), &e); err != nil || e.Data == nil {
			panic(fmt.Sprintf("subscriber: cannot learn the data type of %s: %v", t, err))
		}
		m[reflect.TypeOf(e.Data)] = t
	}
	return m
}()

// On registers a handler for the event type whose data is D (e.g.
// domain.RotatedData for TokenRotated). Register before Run; handlers run
// one event at a time, in registration order, and all of them run again when
// an event is retried. A handler's error makes the event retried, then
// parked; Permanent(err) parks it at once. On panics if D is not an event
// data type (a pointer, say) or if Run has started.
func On[D domain.EventData](s *Subscriber, handle func(ctx context.Context, e Event, data D) error) {
	typ, ok := dataTypes[reflect.TypeFor[D]()]
	if !ok {
		panic(fmt.Sprintf("subscriber: On[%v]: not an event data type; use one of domain.CreatedData, domain.RotatedData, ... (not a pointer)", reflect.TypeFor[D]()))
	}
	s.add(entry{typ: typ, handle: func(ctx context.Context, e Event) error {
		data, ok := e.Data.(D)
		if !ok {
			return Permanent(fmt.Errorf("%s event %s has data of type %T", e.Type, e.ID, e.Data))
		}
		return handle(ctx, e, data)
	}})
}

// OnAny registers a handler for every event type. It panics if Run has
// started.
func (s *Subscriber) OnAny(handle func(ctx context.Context, e Event) error) {
	s.add(entry{handle: handle})
}

func (s *Subscriber) add(e entry) {
	if e.handle == nil {
		panic("subscriber: nil handler")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		panic("subscriber: handlers must be registered before Run")
	}
	s.handlers = append(s.handlers, e)
}

// Running is closed once consuming has started: the durable exists and
// events flow to the handlers. It is never closed if Run fails to start, so
// wait on it together with Run's result.
func (s *Subscriber) Running() <-chan struct{} { return s.running }

// Poisoned delivers the messages parked in the default in-memory poison
// queue: events that failed every retry, or could not be decoded, and were
// then acked. It is nil when Config.PoisonQueue is set, and closed when Run
// has returned. The queue holds PoisonBuffer messages; when it is full an
// event that fails is not acked but offered again a few seconds later, so
// a parked event is never dropped, and the subscriber waits on it until
// Poisoned is read.
func (s *Subscriber) Poisoned() <-chan *message.Message {
	if s.poisoned == nil {
		return nil
	}
	return s.poisoned
}

// Permanent marks a handler's error as one that retrying cannot fix: the
// event is parked in the poison queue at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

func isPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Run consumes events until ctx ends, then stops taking new ones, lets the
// event in flight finish (for at most ShutdownTimeout), acks it, and returns
// nil. It returns an error if it cannot start (the server unreachable, the
// token refused, an OrganizationID or Stream the token does not read, all
// of the token's consumer names taken, no handler registered) or if
// consuming fails for good (the durable was deleted, the connection closed:
// after a rotation or deletion of the token the ledger cuts it and the
// server refuses it from then on). Run may be called once.
//
// Delivery is at least once: an event is acked after its handlers return
// nil, or after it was parked. Events come one at a time in stream order,
// so each token's events arrive in order (versions 1, 2, 3, ...), also when
// one is delivered again: the durable lets one event at a time be
// unacknowledged (MaxAckPending 1).
func (s *Subscriber) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("subscriber: Run may be called only once")
	}
	s.started = true
	handlers := s.handlers
	s.mu.Unlock()
	if q, ok := s.poison.(*memoryQueue); ok {
		defer q.close()
	}
	if len(handlers) == 0 {
		return errors.New("subscriber: no handlers: register some with On or OnAny before Run")
	}
	if ctx.Err() != nil {
		return nil
	}
	log := s.cfg.Logger.With(watermill.LogFields{"durable": s.cfg.Durable})

	opts := append([]nats.Option{
		nats.Name("tokenledger subscriber " + s.cfg.Durable),
		nats.MaxReconnects(-1),
		// What the server refuses goes to the Logger, not to the process's
		// stderr (nats.go's default).
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Error("NATS", err, nil)
		}),
	}, s.cfg.NATSOptions...)
	opts = append(opts, natsaccess.Options(s.cfg.Token)...)
	nc, err := nats.Connect(s.cfg.URL, opts...)
	if errors.Is(err, nats.ErrAuthorization) {
		return fmt.Errorf("subscriber %s: NATS at %s refused Token: %w (not an active TokenLedger token: rotated, deleted or expired?)", s.cfg.Durable, s.cfg.URL, err)
	}
	if err != nil {
		return fmt.Errorf("subscriber %s: connect to NATS at %s: %w", s.cfg.Durable, s.cfg.URL, err)
	}
	connClosed := nc.StatusChanged(nats.CLOSED)
	defer nc.Close()
	js, err := natsaccess.JetStream(nc)
	if err != nil {
		return fmt.Errorf("subscriber %s: %w", s.cfg.Durable, err)
	}
	setup, cancelSetup := context.WithTimeout(ctx, setupTimeout)
	defer cancelSetup()
	id, err := natsaccess.WhoAmI(setup, nc)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("subscriber %s: %w", s.cfg.Durable, err)
	}
	want, filter, err := s.filter(id, handlers)
	if err != nil {
		return fmt.Errorf("subscriber %s: %w", s.cfg.Durable, err)
	}
	consumer, err := s.durable(setup, js, id, filter)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("subscriber %s: %w", s.cfg.Durable, err)
	}
	cancelSetup()

	// The router and the messages run on a context of their own, so that
	// handlers in flight are not cancelled the moment ctx ends.
	runCtx, cancelRun := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRun()

	g := &gate{idle: make(chan struct{})}
	fatal := make(chan error, 1)
	failed := func(err error) {
		select {
		case fatal <- err:
		default:
		}
	}
	var checking atomic.Bool
	consumeErr := func(_ jetstream.ConsumeContext, err error) {
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConnectionClosed) {
			failed(err)
			return
		}
		log.Error("consuming", err, nil)
		// A pull that found no consumer (deleted before the pull reached
		// it) or a missed heartbeat: is the durable still there?
		if checking.CompareAndSwap(false, true) {
			go func() {
				defer checking.Store(false)
				ctx, cancel := context.WithTimeout(runCtx, 10*time.Second)
				defer cancel()
				if _, err := consumer.Info(ctx); errors.Is(err, jetstream.ErrConsumerNotFound) {
					failed(jetstream.ErrConsumerDeleted)
				}
			}()
		}
	}
	wmSub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
		Conn:   nc, // its own: watermill-nats drains it on Close
		Logger: quietLogger{log},
		// watermill-nats stops waiting for a handler after this and moves
		// on to the next event; never, so that handling stays serial.
		AckWaitTimeout:      100 * 365 * 24 * time.Hour,
		ResourceInitializer: initializer(consumer, g, max(s.cfg.AckWait/3, time.Millisecond)),
		// Only a failed park (the poison queue refused the event) nacks
		// while running: offer the event again a while later.
		NakDelay: nakDelay{ctx: runCtx, d: s.cfg.maxRetryInterval()},
		ConsumeOptions: []jetstream.PullConsumeOpt{
			jetstream.ConsumeErrHandler(consumeErr),
			// A silent server is noticed after two missed heartbeats.
			jetstream.PullHeartbeat(5 * time.Second),
		},
		AckAsync:    false, // DoubleAck: the ack is confirmed before the next event
		Unmarshaler: unmarshaler{},
	})
	if err != nil {
		return fmt.Errorf("subscriber %s: %w", s.cfg.Durable, err)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, log)
	if err != nil {
		return fmt.Errorf("subscriber %s: %w", s.cfg.Durable, err)
	}
	// A stop that cancelled a handler must not park its event: it is
	// nacked and comes again.
	pq, err := middleware.PoisonQueueWithFilter(s.poison, s.cfg.PoisonTopic, func(error) bool { return runCtx.Err() == nil })
	if err != nil {
		return fmt.Errorf("subscriber %s: PoisonTopic: %w", s.cfg.Durable, err)
	}
	router.AddMiddleware(
		pq,
		middleware.Retry{
			MaxRetries:      s.cfg.MaxRetries,
			InitialInterval: s.cfg.RetryInterval,
			MaxInterval:     s.cfg.maxRetryInterval(),
			Multiplier:      2,
			ShouldRetry:     func(p middleware.RetryParams) bool { return !isPermanent(p.Err) },
			Logger:          log,
		}.Middleware,
		middleware.Recoverer,
	)
	router.AddConsumerHandler(s.cfg.Durable, s.cfg.Stream, wmSub, s.dispatch(handlers, want))

	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(runCtx) }()

	var runErr error
	closed := false
	select {
	case <-router.Running():
		close(s.running)
		select {
		case <-ctx.Done():
		case <-connClosed:
			closed = true
			runErr = s.closedErr(nc)
		case err := <-fatal:
			runErr = fmt.Errorf("subscriber %s: consuming stopped: %w", s.cfg.Durable, err)
			if nc.IsClosed() {
				runErr = s.closedErr(nc)
			}
		case err := <-routerDone:
			routerDone <- err
			runErr = fmt.Errorf("subscriber %s: router stopped: %v", s.cfg.Durable, err)
		}
	case err := <-routerDone:
		// Subscribing failed.
		routerDone <- err
		runErr = fmt.Errorf("subscriber %s: %w", s.cfg.Durable, err)
	case <-ctx.Done():
	}

	// Stop: no new events; the one in flight finishes and is acked.
	select {
	case <-g.stop():
	case <-time.After(s.cfg.ShutdownTimeout):
		log.Error("shutting down: the handler did not finish in time; cancelling it", nil, watermill.LogFields{"timeout": s.cfg.ShutdownTimeout})
		cancelRun()
	}
	if err := router.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("subscriber %s: a handler did not return after shutdown: %w", s.cfg.Durable, err)
	}
	if err := wmSub.Close(); err != nil {
		log.Error("closing", err, nil)
	}
	if err := <-routerDone; err != nil && runErr == nil {
		runErr = fmt.Errorf("subscriber %s: %w", s.cfg.Durable, err)
	}
	if !closed {
		select {
		case <-connClosed:
		case <-time.After(5 * time.Second):
		}
	}
	return runErr
}

// setupTimeout bounds what Run asks the server before it consumes.
const setupTimeout = 30 * time.Second

// closedErr says why the connection closed for good: most often the ledger
// cut it because the token was rotated or deleted, and the server then
// refused it. The durable is the token's: started again with the token's
// current secret, the subscriber resumes where it was.
func (s *Subscriber) closedErr(nc *nats.Conn) error {
	err := nc.LastError()
	if err == nil {
		err = nats.ErrConnectionClosed
	}
	if errors.Is(err, nats.ErrAuthorization) {
		return fmt.Errorf("subscriber %s: the NATS connection closed: %w (the ledger refuses Token: rotated, deleted or expired? Run again with the token's current secret: the durable resumes where it was)", s.cfg.Durable, err)
	}
	return fmt.Errorf("subscriber %s: the NATS connection closed: %w", s.cfg.Durable, err)
}

// dispatch decodes an event and hands it to the handlers of its type. An
// event of a type no handler takes (want is nil when some handler takes
// every type) is acked without being decoded: the durable's one filter may
// be wider than the handlers' types.
func (s *Subscriber) dispatch(handlers []entry, want map[domain.EventType]bool) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		subject := msg.Metadata.Get(MetadataSubject)
		if want != nil && !want[domain.EventType(subject[strings.LastIndexByte(subject, '.')+1:])] {
			return nil
		}
		seq, _ := strconv.ParseUint(msg.Metadata.Get(MetadataSequence), 10, 64)
		delivered, _ := strconv.ParseUint(msg.Metadata.Get(MetadataDelivered), 10, 64)
		var e domain.Event
		if err := json.Unmarshal(msg.Payload, &e); err != nil {
			return Permanent(fmt.Errorf("undecodable event at stream sequence %d: %w", seq, err))
		}
		if err := s.checkSubject(subject, e); err != nil {
			return Permanent(fmt.Errorf("event %s at stream sequence %d: %w", e.ID, seq, err))
		}
		ev := Event{Event: e, Sequence: seq, Delivered: delivered}
		ctx := msg.Context()
		for _, h := range handlers {
			if h.typ == "" || h.typ == e.Type {
				if err := h.handle(ctx, ev); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

// checkSubject refuses an event whose body disagrees with its subject: only
// a writer that bypassed the ledger can store one.
func (s *Subscriber) checkSubject(subject string, e domain.Event) error {
	rest, ok := strings.CutPrefix(subject, s.cfg.SubjectPrefix+".")
	parts := strings.Split(rest, ".")
	if !ok || len(parts) != 3 {
		return fmt.Errorf("subject %q is not %s.<organization>.<token>.<type>", subject, s.cfg.SubjectPrefix)
	}
	if parts[0] != e.OrganizationID || parts[1] != e.TokenID || parts[2] != string(e.Type) {
		return fmt.Errorf("subject %q does not match the event (%s.%s.%s)", subject, e.OrganizationID, e.TokenID, e.Type)
	}
	return nil
}

// filter is the durable's one subject filter: the narrowest subject that
// covers the registered types within what the token may read. One type:
// that type's events of the token's organization (an organization token)
// or of the token itself (a workspace or deployment token). Several, or
// OnAny: everything the token may read; want then names the types to hand
// on (nil: all of them), and the others are acked unseen.
func (s *Subscriber) filter(id natsaccess.Identity, handlers []entry) (want map[domain.EventType]bool, filter string, err error) {
	if id.Stream != "" && id.Stream != s.cfg.Stream {
		return nil, "", fmt.Errorf("Stream %q: this token's consumers are on stream %q", s.cfg.Stream, id.Stream)
	}
	if !strings.HasPrefix(id.Filter, s.cfg.SubjectPrefix+".") {
		return nil, "", fmt.Errorf("SubjectPrefix %q: this token reads %s", s.cfg.SubjectPrefix, id.Filter)
	}
	if org := s.cfg.OrganizationID; org != "" && org != id.OrganizationID {
		return nil, "", fmt.Errorf("OrganizationID %q: the token belongs to organization %q and reads only its events; leave OrganizationID empty or set it to %q", org, id.OrganizationID, id.OrganizationID)
	}
	want = map[domain.EventType]bool{}
	for _, h := range handlers {
		if h.typ == "" {
			return nil, id.Filter, nil
		}
		want[h.typ] = true
	}
	if len(want) > 1 {
		return want, id.Filter, nil
	}
	var typ string
	for t := range want {
		typ = string(t)
	}
	switch {
	case strings.HasSuffix(id.Filter, ".>"): // <prefix>.<org>.>
		return want, strings.TrimSuffix(id.Filter, ">") + "*." + typ, nil
	case strings.HasSuffix(id.Filter, ".*"): // <prefix>.<org>.<token>.*
		return want, strings.TrimSuffix(id.Filter, "*") + typ, nil
	}
	return want, id.Filter, nil
}

// memoryQueue is the default poison queue: a bounded channel.
type memoryQueue struct {
	mu     sync.Mutex
	closed bool
	ch     chan *message.Message
}

// ErrPoisonQueueFull is the default poison queue's refusal when nobody reads
// Subscriber.Poisoned.
var ErrPoisonQueueFull = errors.New("subscriber: in-memory poison queue is full: read Subscriber.Poisoned")

func (q *memoryQueue) Publish(_ string, msgs ...*message.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return errors.New("subscriber: in-memory poison queue is closed")
	}
	if len(q.ch)+len(msgs) > cap(q.ch) {
		return ErrPoisonQueueFull
	}
	for _, m := range msgs {
		q.ch <- m.Copy()
	}
	return nil
}

func (q *memoryQueue) Close() error { return nil }

func (q *memoryQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
}

// nakDelay is how long a nacked event waits before it comes again: a
// while when the poison queue refused it, none when a stop cancelled its
// handler (it is then for the next start).
type nakDelay struct {
	ctx context.Context
	d   time.Duration
}

func (n nakDelay) WaitTime(uint64) time.Duration {
	if n.ctx.Err() != nil {
		return 0
	}
	return n.d
}

// quietLogger lowers watermill-nats' per-message info logs to debug.
type quietLogger struct{ watermill.LoggerAdapter }

func (q quietLogger) Info(msg string, fields watermill.LogFields) { q.LoggerAdapter.Debug(msg, fields) }
func (q quietLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return quietLogger{q.LoggerAdapter.With(fields)}
}
