package subscriber

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/natsaccess"
)

// Metadata keys the subscriber adds to each Watermill message (and so to
// each parked one), beside the message's headers (ce-* and the like).
const (
	MetadataSubject   = "nats_subject"
	MetadataSequence  = "stream_sequence"
	MetadataDelivered = "num_delivered"
)

// durable claims the service's durable consumer among its token's consumer
// names (natsaccess.ClaimConsumer): the one that holds Config.Durable,
// brought to filter and to what the subscriber relies on, or else a new one
// that begins where Config.Start says. It never creates or changes the
// stream, and nothing deletes the durable, so a restart resumes where the
// last run stopped, also with a rotated secret of the same token (the
// consumer names are the token's, not the secret's).
func (s *Subscriber) durable(ctx context.Context, js jetstream.JetStream, id natsaccess.Identity, filter string) (jetstream.Consumer, error) {
	cfg := s.consumerConfig(filter)
	s.cfg.Start.apply(&cfg)
	c, err := natsaccess.ClaimConsumer(ctx, js, s.cfg.Stream, id, s.cfg.Durable, cfg)
	if err != nil {
		return nil, fmt.Errorf("durable consumer %s on stream %s: %w", s.cfg.Durable, s.cfg.Stream, err)
	}
	info := c.CachedInfo()
	s.cfg.Logger.Info("durable consumer ready", watermill.LogFields{
		"durable": s.cfg.Durable, "consumer": info.Name, "filter": filter, "start": s.cfg.Start.String(),
		"ack_floor": info.AckFloor.Stream, "pending": info.NumPending,
	})
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
// One FilterSubject: the server checks it against what the token may read.
// MaxAckPending 1: JetStream hands out the next event only once the last one
// is acked, so an event that comes again (its ack lost in a crash) comes
// before any later one, and per-token order holds across redeliveries.
// MaxDeliver is unlimited: a failing event is parked, not dropped.
func (s *Subscriber) consumerConfig(filter string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Description:   "TokenLedger subscriber " + s.cfg.Durable,
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.AckWait,
		MaxAckPending: 1,
		MaxDeliver:    -1,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
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
