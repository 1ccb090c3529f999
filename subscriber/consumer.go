package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"
)

// Metadata keys the subscriber adds to each Watermill message (and so to
// each parked one), beside the message's headers (ce-* and the like).
const (
	MetadataSubject   = "nats_subject"
	MetadataSequence  = "stream_sequence"
	MetadataDelivered = "num_delivered"
)

// durable binds the durable consumer if it exists, else creates it. It
// never creates or changes the stream, and nothing ever deletes the durable,
// so a restart resumes where the last run stopped.
func (s *Subscriber) durable(ctx context.Context, js jetstream.JetStream, filters []string) (jetstream.Consumer, error) {
	stream, err := js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", s.cfg.Stream, err)
	}
	c, err := s.bind(ctx, stream, filters)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		cfg := s.consumerConfig(filters)
		s.cfg.Start.apply(&cfg)
		c, err = stream.CreateConsumer(ctx, cfg)
		if errors.Is(err, jetstream.ErrConsumerExists) {
			c, err = s.bind(ctx, stream, filters) // another instance created it first
		}
		if err == nil {
			s.cfg.Logger.Info("created durable consumer", watermill.LogFields{"durable": s.cfg.Durable, "start": s.cfg.Start.String(), "filters": strings.Join(filters, " ")})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("durable consumer %s on stream %s: %w", s.cfg.Durable, s.cfg.Stream, err)
	}
	return c, nil
}

// initializer is the ResourceInitializer handed to watermill-nats: the
// durable, bound before the router starts, behind the gate. It returns no
// closer: the durable outlives the subscriber.
func initializer(c jetstream.Consumer, g *gate, keepAlive time.Duration) wmjs.ResourceInitializer {
	return func(context.Context, jetstream.JetStream, string) (jetstream.Consumer, func(context.Context, watermill.LoggerAdapter), error) {
		return &gatedConsumer{Consumer: c, gate: g, keepAlive: keepAlive}, nil, nil
	}
}

// consumerConfig is the durable's configuration, but for where it starts.
// MaxAckPending 1: JetStream hands out the next event only once the last one
// is acked, so an event that comes again (its ack lost in a crash) comes
// before any later one, and per-token order holds across redeliveries.
// MaxDeliver is unlimited: a failing event is parked, not dropped.
func (s *Subscriber) consumerConfig(filters []string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        s.cfg.Durable,
		Description:    "TokenLedger subscriber",
		FilterSubjects: filters,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        s.cfg.AckWait,
		MaxAckPending:  1,
		MaxDeliver:     -1,
		ReplayPolicy:   jetstream.ReplayInstantPolicy,
	}
}

// bind looks the durable up and brings what the subscriber relies on
// (filters, ack wait, one pending ack) to this configuration, so that a
// handler added in a new release gets its events; where it starts is never
// changed (JetStream refuses that anyway).
func (s *Subscriber) bind(ctx context.Context, stream jetstream.Stream, filters []string) (jetstream.Consumer, error) {
	c, err := stream.Consumer(ctx, s.cfg.Durable)
	if err != nil {
		return nil, err
	}
	have := c.CachedInfo().Config
	if have.AckPolicy != jetstream.AckExplicitPolicy {
		return nil, fmt.Errorf("it exists with ack policy %s, not explicit: choose another Durable", have.AckPolicy)
	}
	current := have.FilterSubjects
	if have.FilterSubject != "" {
		current = []string{have.FilterSubject}
	}
	want := s.consumerConfig(filters)
	if sameSet(current, filters) && have.AckWait == want.AckWait && have.MaxAckPending == want.MaxAckPending && have.MaxDeliver == want.MaxDeliver {
		return c, nil
	}
	upd := have
	upd.FilterSubject, upd.FilterSubjects = "", filters
	upd.AckWait, upd.MaxAckPending, upd.MaxDeliver = want.AckWait, want.MaxAckPending, want.MaxDeliver
	c, err = stream.UpdateConsumer(ctx, upd)
	if err != nil {
		return nil, fmt.Errorf("update to filters %v: %w", filters, err)
	}
	s.cfg.Logger.Info("updated durable consumer", watermill.LogFields{"durable": s.cfg.Durable, "filters": strings.Join(filters, " ")})
	return c, nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// gatedConsumer wraps the durable so that a stop can be graceful:
// watermill-nats' own Close drops the event in flight unacked, which then
// waits out AckWait. Here a stop first drains the pull subscription (no new
// events), nacks whatever arrives after that (so it comes again at once on
// restart), and waits for the event in flight to be handled and acked.
// While a handler runs, JetStream is told the event is in progress.
type gatedConsumer struct {
	jetstream.Consumer
	gate      *gate
	keepAlive time.Duration
}

func (c *gatedConsumer) Consume(handle jetstream.MessageHandler, opts ...jetstream.PullConsumeOpt) (jetstream.ConsumeContext, error) {
	cc, err := c.Consumer.Consume(func(m jetstream.Msg) {
		if !c.gate.enter() {
			_ = m.Nak()
			return
		}
		defer c.gate.leave()
		done := make(chan struct{})
		defer close(done)
		go func() {
			t := time.NewTicker(c.keepAlive)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					_ = m.InProgress()
				case <-done:
					return
				}
			}
		}()
		handle(m) // watermill-nats: hands it to the router, waits for its ack, acks
		// Unless a stop cancelled the handler: hand the event back at once
		// rather than after AckWait (a no-op for an acked event).
		_ = m.Nak()
	}, opts...)
	if err != nil {
		return nil, err
	}
	c.gate.started(cc)
	return cc, nil
}

// gate tracks the event in flight and stops consuming.
type gate struct {
	mu       sync.Mutex
	stopping bool
	busy     int
	idle     chan struct{} // closed once stopping with nothing in flight
	cc       jetstream.ConsumeContext
}

func (g *gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopping {
		return false
	}
	g.busy++
	return true
}

func (g *gate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.busy--
	if g.stopping && g.busy == 0 {
		close(g.idle)
	}
}

func (g *gate) started(cc jetstream.ConsumeContext) {
	g.mu.Lock()
	g.cc = cc
	stopping := g.stopping
	g.mu.Unlock()
	if stopping {
		cc.Drain()
	}
}

// stop takes no more events and returns a channel closed when the one in
// flight is done.
func (g *gate) stop() <-chan struct{} {
	g.mu.Lock()
	cc := g.cc
	if !g.stopping {
		g.stopping = true
		if g.busy == 0 {
			close(g.idle)
		}
	}
	g.mu.Unlock()
	if cc != nil {
		cc.Drain()
	}
	return g.idle
}

// unmarshaler turns a stored event into a Watermill message. It never fails
// (watermill-nats v2.1.3 dereferences the message even when Unmarshal
// returns an error): a body that is not an event is the dispatcher's to
// park. The UUID is the event id: the _watermill_message_uuid header, else
// ce-id, else the body's event_id (events stored before the headers existed
// have neither header).
type unmarshaler struct{}

func (unmarshaler) Unmarshal(m jetstream.Msg) (*message.Message, error) {
	h := m.Headers()
	id := h.Get(wmnats.WatermillUUIDHdr)
	if id == "" {
		id = h.Get("ce-id")
	}
	if id == "" {
		var body struct {
			ID string `json:"event_id"`
		}
		if json.Unmarshal(m.Data(), &body) == nil {
			id = body.ID
		}
	}
	wm := message.NewMessage(id, m.Data())
	for k, v := range h {
		if len(v) == 0 || k == wmnats.WatermillUUIDHdr || strings.HasPrefix(k, "Nats-") {
			continue
		}
		wm.Metadata.Set(k, v[0])
	}
	wm.Metadata.Set(MetadataSubject, m.Subject())
	if md, err := m.Metadata(); err == nil {
		wm.Metadata.Set(MetadataSequence, strconv.FormatUint(md.Sequence.Stream, 10))
		wm.Metadata.Set(MetadataDelivered, strconv.FormatUint(md.NumDelivered, 10))
	}
	return wm, nil
}
