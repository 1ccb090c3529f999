// Package eventstore keeps token events in a NATS JetStream stream, the ledger's
// only source of truth, and reads them back.
//
// Subject layout (one stream, default name TOKENS):
//
//	ledger.tokens.<organization_id>.<token_id>.<EventType>
//
// so a subscriber can filter by organization (ledger.tokens.acme.>), by token
// (ledger.tokens.acme.tok_x.*) or by event type (ledger.tokens.*.*.TokenRotated).
// A token's events are one ordered history: every append states the stream
// sequence of the token's last event, checked by JetStream against all subjects
// of that token (Nats-Expected-Last-Subject-Sequence with its -Subject header,
// nats-server 2.11 or later). Of two concurrent commands on one token only one
// is stored; the other gets domain.ErrConflict.
package eventstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
)

// Config names and shapes the stream.
type Config struct {
	Stream        string
	SubjectPrefix string
	Storage       jetstream.StorageType
	Replicas      int
	// DuplicateWindow is how long JetStream remembers event ids to drop a
	// retried command.
	DuplicateWindow time.Duration
}

// DefaultConfig is what `ledger serve` uses unless told otherwise.
func DefaultConfig() Config {
	return Config{
		Stream:          "TOKENS",
		SubjectPrefix:   "ledger.tokens",
		Storage:         jetstream.FileStorage,
		Replicas:        1,
		DuplicateWindow: 10 * time.Minute,
	}
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if c.Stream == "" {
		errs = append(errs, errors.New("stream name is required"))
	}
	if c.SubjectPrefix == "" {
		errs = append(errs, errors.New("subject prefix is required"))
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas must be 1-5, got %d", c.Replicas))
	}
	if c.DuplicateWindow <= 0 {
		errs = append(errs, errors.New("duplicate window must be positive"))
	}
	return errors.Join(errs...)
}

// Store appends and loads token events.
type Store struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cfg    Config
}

// Recorded is an event as stored, with its stream sequence. OrganizationID and
// TokenID come from the subject, which is what concurrency control is keyed
// on. Err is set when the message is not a valid event for that subject
// (undecodable, or its body names another token); Event is then empty. Only a
// writer that bypassed the ledger can store such a message. A message the
// server delivered otherwise than the stream holds it never comes as a
// Recorded: the read stops with ErrBadDelivery instead.
type Recorded struct {
	Sequence       uint64
	OrganizationID string
	TokenID        string
	Event          domain.Event
	Err            error
	// typ is the event type named by the subject.
	typ string
	// pending is how many messages the consumer had left after this one.
	pending uint64
}

// ErrBadDelivery: the NATS server delivered something other than what the
// ledger's consumer asked for, or other than the stream holds: a message
// without its body, one outside the consumer's subjects or out of order,
// fewer messages than the consumer counted, or a consumer whose config is
// no longer the one the ledger made. Anyone who can reach the JetStream API
// can update a consumer (CONSUMER.CREATE on an existing name is an update):
// headers_only makes it send every message without its body, a narrower
// filter makes it skip events. It says nothing about the events in the
// stream, so no message is refused or quarantined for it: the reader stops
// and reads again on a fresh consumer.
var ErrBadDelivery = errors.New("the NATS server delivered what the ledger's consumer did not ask for")

func badDelivery(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadDelivery, fmt.Sprintf(format, args...))
}

// Open creates the stream, or brings an existing one to cfg. The stream denies
// deleting messages and purging: it is the audit record. Several ledgers may
// open it at once (see EnsureStream); Open returns when it has the stream,
// on an error that asking again would not cure, or when ctx ends.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("event store config: %w", err)
	}
	stream, err := EnsureStream(ctx, js, jetstream.StreamConfig{
		Name:        cfg.Stream,
		Description: "TokenLedger token events: the source of truth; never deleted or purged",
		Subjects:    []string{cfg.SubjectPrefix + ".>"},
		Storage:     cfg.Storage,
		Replicas:    cfg.Replicas,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     -1,
		MaxBytes:    -1,
		MaxAge:      0,
		Duplicates:  cfg.DuplicateWindow,
		DenyDelete:  true,
		DenyPurge:   true,
		AllowDirect: true,
	})
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", cfg.Stream, err)
	}
	return &Store{js: js, stream: stream, cfg: cfg}, nil
}

// Config returns the store's configuration.
func (s *Store) Config() Config { return s.cfg }

// Subject is where an event is stored.
func (s *Store) Subject(e domain.Event) string {
	return s.tokenSubject(e.OrganizationID, e.TokenID) + "." + string(e.Type)
}

func (s *Store) tokenSubject(org, tokenID string) string {
	return s.cfg.SubjectPrefix + "." + org + "." + tokenID
}

// Appended is the outcome of an append.
type Appended struct {
	Sequence uint64
	// Duplicate: JetStream had already stored an event with this event id (a
	// retried command); Sequence is that earlier event's.
	Duplicate bool
}

// Append stores e, provided the token's last stored event is at stream sequence
// expectedLast (0 for a new token). The event id becomes Nats-Msg-Id, so a
// retried command with the same id is stored once. The message is a CloudEvent
// too (cloudevents.go).
func (s *Store) Append(ctx context.Context, e domain.Event, expectedLast uint64) (Appended, error) {
	return s.publish(ctx, e, jetstream.WithExpectLastSequenceForSubject(expectedLast, s.tokenSubject(e.OrganizationID, e.TokenID)+".*"))
}

// AppendInOrganization stores e provided the last event stored anywhere in
// e's organization is at stream sequence orgLast. A rule that spans tokens
// (an organization keeps a lasting owner; a deployment's tokens share one
// workspace) is judged on the organization as it stood at orgLast, and any
// event stored in the organization since, by whichever ledger, makes the
// append a domain.ErrConflict: the stream enforces the rule, not a lock one
// process holds. It implies Append's check (the token's events are the
// organization's).
func (s *Store) AppendInOrganization(ctx context.Context, e domain.Event, orgLast uint64) (Appended, error) {
	return s.publish(ctx, e, jetstream.WithExpectLastSequenceForSubject(orgLast, s.cfg.SubjectPrefix+"."+e.OrganizationID+".>"))
}

// AppendIfEmpty stores e only if the stream holds no event at all: the
// bootstrap token is written once, even if several ledgers start together.
func (s *Store) AppendIfEmpty(ctx context.Context, e domain.Event) (Appended, error) {
	return s.publish(ctx, e, jetstream.WithExpectLastSequence(0))
}

// Message is the NATS message that stores e: its JSON as the body, its
// CloudEvents attributes as headers. Append publishes it; benchmarks that
// fill a stream in bulk publish the same, so they read what the ledger
// writes.
func (s *Store) Message(e domain.Event) (*nats.Msg, error) {
	body, err := encodeEvent(e)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", e.Type, err)
	}
	return newEventMsg(s.Subject(e), e, body)
}

func (s *Store) publish(ctx context.Context, e domain.Event, expect jetstream.PublishOpt) (Appended, error) {
	msg, err := s.Message(e)
	if err != nil {
		return Appended{}, fmt.Errorf("append %s to token %s: %w", e.Type, e.TokenID, err)
	}
	var ack *jetstream.PubAck
	for try := 1; ; try++ {
		ack, err = s.js.PublishMsg(ctx, msg,
			jetstream.WithMsgID(e.ID),
			jetstream.WithExpectStream(s.cfg.Stream),
			expect,
		)
		// On a cluster, an event whose id another append (a retry of the
		// same keyed command, through another ledger) has in flight is
		// refused as "in process" rather than answered as a duplicate.
		// Asked again once that one is stored, the stream answers what it
		// did with it.
		if !duplicateInProcess(err) || try == 20 {
			break
		}
		select {
		case <-ctx.Done():
			return Appended{}, fmt.Errorf("append %s to token %s: %w", e.Type, e.TokenID, err)
		case <-time.After(time.Duration(try) * 10 * time.Millisecond):
		}
	}
	if err != nil {
		if isWrongLastSequence(err) {
			return Appended{}, fmt.Errorf("append %s to token %s: %w", e.Type, e.TokenID, domain.ErrConflict)
		}
		return Appended{}, fmt.Errorf("append %s to token %s: %w", e.Type, e.TokenID, err)
	}
	return Appended{Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// duplicateInProcess recognises JetStream's "duplicate message id is in
// process" (a clustered stream's answer to an event id already in flight).
func duplicateInProcess(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.ErrorCode(10158)
}

// isWrongLastSequence recognises JetStream's optimistic-concurrency failure.
// Replicated streams report it with a code of their own.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// Identity is what tells this stream from any other of the same name (its
// creation time) and how far it reaches.
type Identity struct {
	Created      time.Time
	LastSequence uint64
}

// Identity reads the stream's creation time and last sequence.
func (s *Store) Identity(ctx context.Context) (Identity, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return Identity{}, fmt.Errorf("stream %s info: %w", s.cfg.Stream, err)
	}
	return Identity{Created: info.Created, LastSequence: info.State.LastSeq}, nil
}

// LastSequence is the stream sequence of the newest event (0: none).
func (s *Store) LastSequence(ctx context.Context) (uint64, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s info: %w", s.cfg.Stream, err)
	}
	return info.State.LastSeq, nil
}

// ErrNoQuorum: the stream's answer came from a server that cannot show it
// is the leader of a quorum now (see Head).
var ErrNoQuorum = errors.New("the stream's answer is not a leader's with a quorum")

// headPeerSilence is how long a replica may have been silent and still
// count towards the leader's quorum in Head: Raft heartbeats come every
// second (three missed, not one late, under load), and the survivors of a
// partition elect a new leader no sooner than an election timeout (4 s or
// more in nats-server) after they last heard the old one, so a leader cut
// off from its followers is refused before another could store anything.
const headPeerSilence = 3 * time.Second

// Head is the stream's last sequence, as a leader with a quorum knows it.
// On a cluster, a server cut off from the others still answers for the
// stream: once leaderless, from its own state; while it still thinks
// itself the leader (up to 10 s), from its own state too. Either may be
// behind what the rest of the cluster has stored. Head refuses both: the
// answer must name a leader, and that leader must have heard from enough
// replicas within headPeerSilence to make a quorum with itself.
func (s *Store) Head(ctx context.Context) (uint64, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s info: %w", s.cfg.Stream, err)
	}
	if c := info.Cluster; c != nil {
		if c.Leader == "" {
			return 0, fmt.Errorf("stream %s: %w (no leader)", s.cfg.Stream, ErrNoQuorum)
		}
		heard := 1 // the leader
		for _, p := range c.Replicas {
			if p != nil && !p.Offline && p.Active <= headPeerSilence {
				heard++
			}
		}
		if total := len(c.Replicas) + 1; heard < total/2+1 {
			return 0, fmt.Errorf("stream %s: %w (leader %s heard from %d of %d within %s)", s.cfg.Stream, ErrNoQuorum, c.Leader, heard, total, headPeerSilence)
		}
	}
	return info.State.LastSeq, nil
}

// Load returns one token's events, oldest first; none if there is no such token
// in that organization.
//
// On a cluster a read can fail for a moment without anything being wrong
// (a consumer just made has no leader answering yet: "no responders"; a
// server busy electing a leader): such a failure is tried again, a few
// times, a little later. A bad delivery never is.
func (s *Store) Load(ctx context.Context, org, tokenID string) ([]Recorded, error) {
	if !domain.ValidID(org) || !domain.ValidTokenID(tokenID) {
		return nil, nil
	}
	for try := 1; ; try++ {
		recs, err := s.load(ctx, org, tokenID)
		if err == nil || try == loadTries || !transient(err) || ctx.Err() != nil {
			return recs, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Duration(try) * 100 * time.Millisecond):
		}
	}
}

// loadTries bounds Load's tries: 1.5 s of waits in all, within any read's
// bound.
const loadTries = 6

// transient: a failure of the cluster's plumbing, which a later try may not
// meet, as opposed to a refusal or a bad delivery.
func transient(err error) bool {
	if errors.Is(err, ErrBadDelivery) {
		return false
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == 503 // "JetStream system temporarily unavailable"
	}
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrNoHeartbeat) ||
		errors.Is(err, context.DeadlineExceeded)
}

func (s *Store) load(ctx context.Context, org, tokenID string) ([]Recorded, error) {
	// A plain consumer, not an ordered one: nats.go's ordered consumer creates
	// a second consumer on its first Fetch and deletes the first in the
	// background, which doubles the round trips of a short read and leaves a
	// consumer behind for a moment after Load returns.
	cons, err := s.js.CreateConsumer(ctx, s.cfg.Stream, jetstream.ConsumerConfig{
		FilterSubject:     s.tokenSubject(org, tokenID) + ".*",
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("load token %s: %w", tokenID, err)
	}
	info := cons.CachedInfo()
	defer s.dropConsumer(ctx, cons)
	// The history is exactly the consumer's count when it was made (it
	// fetches no more), each message on this token's subjects, in order:
	// a consumer changed under the read cannot pass off fewer events, or
	// another token's, as the history.
	pending := info.NumPending
	out := make([]Recorded, 0, pending)
	dec := &eventDecoder{}
	var prev uint64
	for uint64(len(out)) < pending {
		batch, err := cons.Fetch(int(pending)-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("load token %s: %w", tokenID, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			rec, err := s.decode(ctx, dec, msg)
			if err == nil && (rec.OrganizationID != org || rec.TokenID != tokenID || rec.Sequence <= prev) {
				err = badDelivery("sequence %d of organization %s, token %s, after sequence %d", rec.Sequence, rec.OrganizationID, rec.TokenID, prev)
			}
			if err == nil {
				err = rec.Err
			}
			if err != nil {
				return nil, fmt.Errorf("load token %s: %w", tokenID, err)
			}
			prev = rec.Sequence
			out = append(out, rec)
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("load token %s: %w", tokenID, err)
		}
		if n == 0 {
			return nil, fmt.Errorf("load token %s: %w", tokenID, badDelivery("%d of the %d events counted were delivered", len(out), pending))
		}
	}
	return out, nil
}

// Follow delivers every message from stream sequence from (1: the beginning)
// in order, then keeps delivering new ones until ctx ends. A message that is
// not a valid event is delivered too, with Err set, so the reader can count it
// and move on. handle runs on one goroutine; an error from it stops Follow and
// is returned. Follow returns ctx's error when ctx ends, ErrBadDelivery when
// the server delivers what its consumer did not ask for (a message without
// its body, say) or the consumer is found changed (it is asked every
// consumerCheckEvery), and any other error when the stream cannot be read;
// the caller may follow again, on a fresh consumer, from where it got to.
func (s *Store) Follow(ctx context.Context, from uint64, handle func(Recorded) error, opts ...FollowOption) error {
	var o followOptions
	for _, opt := range opts {
		opt(&o)
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if from > 1 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = from
	}
	cons, err := s.js.OrderedConsumer(ctx, s.cfg.Stream, cfg)
	if err != nil {
		return fmt.Errorf("follow stream %s: %w", s.cfg.Stream, err)
	}
	return s.consume(ctx, cons, watch{check: wantConsumer(nil, cfg.DeliverPolicy), passed: o.checked}, handle, false)
}

// FollowOption changes how Follow runs.
type FollowOption func(*followOptions)

type followOptions struct{ checked func() }

// WhenConsumerChecked makes Follow call f each time it has asked the server
// about its consumer and found it as it made it: the feed has been sound
// since it began, or since the last check.
func WhenConsumerChecked(f func()) FollowOption {
	return func(o *followOptions) { o.checked = f }
}

// consumerCheckEvery is how often a read running on a consumer asks the
// server what the consumer now is: one request a second, never one a
// message, which would halve a replay's speed.
const consumerCheckEvery = time.Second

// watch is how a read checks its consumer while it runs (see watchConsumer).
type watch struct {
	// check says whether the consumer, as the server describes it now, is
	// still the one the read made; its error stops the read.
	check func(*jetstream.ConsumerInfo) error
	// passed, if not nil, is called after each check that passes.
	passed func()
}

// watchConsumer asks the server about cons every consumerCheckEvery until
// ctx ends or a check fails, and sends each check's outcome (nil: passed)
// to checks. A question the server does not answer (a consumer being
// re-created by nats.go, a server away) is asked again at the next tick: a
// read that stops delivering meanwhile is its caller's to notice (app.Run's
// stall watchdog, a scan's count).
func watchConsumer(ctx context.Context, cons jetstream.Consumer, w watch, checks chan<- error) {
	tick := time.NewTicker(consumerCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		askCtx, cancel := context.WithTimeout(ctx, consumerCheckEvery)
		info, err := cons.Info(askCtx)
		cancel()
		if err != nil {
			continue
		}
		err = w.check(info)
		select {
		case checks <- err:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// wantConsumer checks that a consumer is still configured as a read made
// it, in each field that decides which messages it delivers, whole, in
// order and promptly: its filters, headers_only, its deliver, ack and
// replay policies, and that it is not paused. Besides the deliver policy
// asked for, by start sequence is right too: nats.go's ordered consumer
// re-creates its consumer so, after the last message it delivered.
func wantConsumer(filters []string, deliver jetstream.DeliverPolicy) func(*jetstream.ConsumerInfo) error {
	want := slices.Sorted(slices.Values(filters))
	return func(info *jetstream.ConsumerInfo) error {
		c := info.Config
		got := slices.Clone(c.FilterSubjects)
		if c.FilterSubject != "" {
			got = append(got, c.FilterSubject)
		}
		slices.Sort(got)
		var changed []string
		if !slices.Equal(got, want) {
			changed = append(changed, fmt.Sprintf("filters %q, not %q", got, want))
		}
		if c.HeadersOnly {
			changed = append(changed, "headers only")
		}
		if c.DeliverPolicy != deliver && c.DeliverPolicy != jetstream.DeliverByStartSequencePolicy {
			changed = append(changed, fmt.Sprintf("deliver policy %v", c.DeliverPolicy))
		}
		if c.AckPolicy != jetstream.AckNonePolicy {
			changed = append(changed, fmt.Sprintf("ack policy %v", c.AckPolicy))
		}
		if c.ReplayPolicy != jetstream.ReplayInstantPolicy {
			changed = append(changed, fmt.Sprintf("replay policy %v", c.ReplayPolicy))
		}
		if info.Paused {
			changed = append(changed, "paused")
		}
		if len(changed) > 0 {
			return badDelivery("consumer %s is not as the ledger made it: %s", info.Name, strings.Join(changed, ", "))
		}
		return nil
	}
}

// consume hands every message cons delivers to handle until ctx ends,
// handle fails, or w finds the consumer changed. With waitStop, it returns
// only once the reader has stopped, so the caller may delete the consumer
// with nothing reading from it (deleted under a running iterator, an
// ordered consumer would create a new one, left for its 5 minutes).
func (s *Store) consume(ctx context.Context, cons jetstream.Consumer, w watch, handle func(Recorded) error, waitStop bool) error {
	iter, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return fmt.Errorf("read stream %s: %w", s.cfg.Stream, err)
	}
	stop := context.AfterFunc(ctx, iter.Stop)
	defer stop()
	// The watch's outcomes are taken here, between batches: w.passed then
	// runs only while the read does, never after it has returned.
	watchCtx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	checks := make(chan error)
	go watchConsumer(watchCtx, cons, w, checks)

	// Reading and decoding run on their own goroutine, handling on this one,
	// with batches between them: a replay then uses both cores. A batch goes
	// as soon as the consumer has nothing more pending, so a live event is
	// handed on at once.
	// Batch buffers go round between the two goroutines rather than being
	// allocated afresh: a replay of a million events would otherwise make
	// hundreds of megabytes of garbage. handle gets each Recorded by value, so
	// reusing the buffer cannot change what it was given.
	const buffers = 4
	batches := make(chan followBatch, buffers)
	free := make(chan []Recorded, buffers)
	for range buffers {
		free <- make([]Recorded, 0, followBatchSize)
	}
	go s.read(ctx, iter, batches, free)
	// The reader is let finish in the background: stopping the iterator can
	// take seconds, since nats.go's ordered consumer holds its lock while it
	// re-creates its consumer (up to 10 s an attempt, as when a cluster has
	// just lost the server the consumer was on), and a caller following
	// again on a fresh consumer (app.Run's watchdog) must not wait for that.
	defer func() {
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			iter.Stop()
			for b := range batches {
				free <- b.recs
			}
		}()
		if waitStop {
			<-stopped
		}
	}()
	for {
		var b followBatch
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-checks:
			if err != nil {
				return fmt.Errorf("read stream %s: %w", s.cfg.Stream, err)
			}
			if w.passed != nil {
				w.passed()
			}
			continue
		case next, ok := <-batches:
			if !ok {
				return ctx.Err()
			}
			b = next
		}
		for _, rec := range b.recs {
			if err := handle(rec); err != nil {
				return err
			}
		}
		clear(b.recs) // drop references to the events, for the collector
		free <- b.recs[:0]
		if b.err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read stream %s: %w", s.cfg.Stream, b.err)
		}
	}
}

type followBatch struct {
	recs []Recorded
	err  error // reading stopped after recs
}

const followBatchSize = 256

func (s *Store) read(ctx context.Context, iter jetstream.MessagesContext, out chan<- followBatch, free chan []Recorded) {
	defer close(out)
	dec := &eventDecoder{}
	recs := <-free
	for {
		msg, err := iter.Next()
		if err != nil {
			out <- followBatch{recs: recs, err: err}
			return
		}
		rec, err := s.decode(ctx, dec, msg)
		if err != nil {
			out <- followBatch{recs: recs, err: err}
			return
		}
		recs = append(recs, rec)
		if rec.pending == 0 || len(recs) == followBatchSize {
			out <- followBatch{recs: recs}
			recs = <-free
		}
	}
}

// Get reads the event at one stream sequence.
func (s *Store) Get(ctx context.Context, seq uint64) (Recorded, error) {
	raw, err := s.stream.GetMsg(ctx, seq)
	if err != nil {
		return Recorded{}, fmt.Errorf("get event at sequence %d: %w", seq, err)
	}
	var e domain.Event
	if err := json.Unmarshal(raw.Data, &e); err != nil {
		return Recorded{}, fmt.Errorf("decode event at sequence %d: %w", seq, err)
	}
	return Recorded{Sequence: raw.Sequence, Event: e}, nil
}

// decode reads a stream message. Its error (ErrBadDelivery, or a failure to
// check the message against the stream) means the message is not as the
// stream holds it, or not known to be: the server's doing, not the event's.
// A message the stream does hold that is not a valid event comes back with
// Recorded.Err.
func (s *Store) decode(ctx context.Context, dec *eventDecoder, msg jetstream.Msg) (rec Recorded, err error) {
	meta, err := msg.Metadata()
	if err != nil {
		return Recorded{}, badDelivery("a message without stream metadata: %v", err)
	}
	rec = Recorded{Sequence: meta.Sequence.Stream, pending: meta.NumPending}
	subject, data := msg.Subject(), msg.Data()
	rec.OrganizationID, rec.TokenID, rec.typ = s.parseSubject(subject)
	if len(data) == 0 || rec.OrganizationID == "" || rec.TokenID == "" || rec.typ == "" {
		if err := s.checkStored(ctx, rec.Sequence, subject, data); err != nil {
			return Recorded{}, err
		}
	}
	e, err := dec.decode(data)
	switch {
	case err != nil:
		rec.Err = fmt.Errorf("message at sequence %d on %s is not an event: %w", rec.Sequence, subject, err)
	case e.OrganizationID != rec.OrganizationID || e.TokenID != rec.TokenID || string(e.Type) != rec.typ:
		rec.Err = fmt.Errorf("event %s at sequence %d is stored on %s but is about %s", e.ID, rec.Sequence, subject, s.Subject(e))
	default:
		rec.Event = e
	}
	return rec, nil
}

// checkStored asks the stream whether it holds the message at seq as it was
// delivered: on subject, with data. It is asked for a message the ledger
// never writes (no body, or a subject that is no event's), which is either
// the stream's (a writer that bypassed the ledger stored it so: a bad event,
// for the reader to refuse and move on) or the consumer's doing (a
// headers_only consumer sends every message without its body, with a
// Nats-Msg-Size header). The question goes by sequence, as a direct get: an
// API path apart from the consumer's. Such messages are rare, so the round
// trip costs a replay nothing.
func (s *Store) checkStored(ctx context.Context, seq uint64, subject string, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := s.stream.GetMsg(ctx, seq)
	if err != nil {
		return fmt.Errorf("check the message at sequence %d against the stream: %w", seq, err)
	}
	if raw.Subject != subject || !bytes.Equal(raw.Data, data) {
		return badDelivery("sequence %d came on %s with %d bytes, but the stream holds it on %s with %d bytes", seq, subject, len(data), raw.Subject, len(raw.Data))
	}
	return nil
}

// parseSubject takes organization, token id and event type out of a message
// subject, without allocating; all empty if it is not an event subject.
func (s *Store) parseSubject(subject string) (org, tokenID, typ string) {
	rest, ok := strings.CutPrefix(subject, s.cfg.SubjectPrefix)
	rest, ok2 := strings.CutPrefix(rest, ".")
	ok = ok && ok2
	if !ok {
		return "", "", ""
	}
	org, rest, ok1 := strings.Cut(rest, ".")
	tokenID, typ, ok3 := strings.Cut(rest, ".")
	if !ok1 || !ok3 || strings.Contains(typ, ".") {
		return "", "", ""
	}
	return org, tokenID, typ
}
