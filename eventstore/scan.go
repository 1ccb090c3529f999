package eventstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
)

// Range is a part of one organization's history to read once, as an audit
// export does. The server does the selecting: the consumer starts at the
// given sequence or time and filters by subject (token, event types), so a
// narrow range never reads the whole stream.
type Range struct {
	OrganizationID string
	TokenID        string             // "": every token
	Types          []domain.EventType // none: every type
	// AfterSequence starts the read after this stream sequence (an
	// incremental export passes the previous export's stream sequence).
	AfterSequence uint64
	// Since starts the read at the first message stored at or after this
	// moment, less sinceMargin; used when AfterSequence is 0. The caller
	// filters on occurred_at; the read itself always runs to the cut, never
	// stopping early on a stored time, so a clock between the ledger and
	// NATS that disagrees cannot drop a row at the end.
	Since time.Time
}

// sinceMargin widens a time seek: an event's occurred_at is the ledger's
// clock when it decided, the stored time the NATS server's when it stored
// it. Callers filter exactly on occurred_at; the margin only has to cover
// the two clocks' disagreement (and the time between decision and store),
// and an hour more read is cheap beside a row lost.
const sinceMargin = time.Hour

// ScanStart is what a scan knows when it begins.
type ScanStart struct {
	// Cut is the stream's last sequence when the scan began: the scan reads
	// nothing after it, so what it returns is one consistent cut of history.
	Cut uint64
	// Pending is how many messages match the range's subjects from its start
	// up to Cut: exactly what the scan delivers when it succeeds.
	Pending uint64
}

var errScanDone = errors.New("scan done")

// Scan delivers the events of r in stream order, up to the stream's last
// sequence when it began, then returns. start is called once, before the
// first event. A message that is not a valid event is delivered with Err
// set, as Follow does.
//
// An audit export signs what Scan delivered as complete, so Scan proves it
// rather than trusting the server: it knows how many messages the range
// holds up to its cut (see countedConsumer), hands on only messages of the
// range, whole, in order and up to the cut, and returns nil only once it has
// delivered exactly that many. Anything else (a consumer narrowed, set to
// send headers only, or changed and changed back while the scan runs) is
// ErrBadDelivery.
func (s *Store) Scan(ctx context.Context, r Range, start func(ScanStart), handle func(Recorded) error) error {
	if !domain.ValidID(r.OrganizationID) {
		return fmt.Errorf("scan: organization %q is not a valid id", r.OrganizationID)
	}
	if r.TokenID != "" && !domain.ValidTokenID(r.TokenID) {
		return fmt.Errorf("scan: token %q is not a valid token id", r.TokenID)
	}
	last, err := s.LastSequence(ctx)
	if err != nil {
		return err
	}
	tok := "*"
	if r.TokenID != "" {
		tok = r.TokenID
	}
	var filters []string
	for _, t := range r.Types {
		filters = append(filters, fmt.Sprintf("%s.%s.%s.%s", s.cfg.SubjectPrefix, r.OrganizationID, tok, t))
	}
	if len(filters) == 0 {
		filters = []string{fmt.Sprintf("%s.%s.%s.*", s.cfg.SubjectPrefix, r.OrganizationID, tok)}
	}
	// A plain consumer, not an ordered one: a scan is short-lived, and one
	// consumer's delivered count is what proves, below, that it has sent
	// everything. One that fails (deleted, its server lost) fails the scan,
	// which its caller runs again.
	cfg := jetstream.ConsumerConfig{
		FilterSubjects:    filters,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: time.Minute,
	}
	switch {
	case r.AfterSequence >= last:
		start(ScanStart{Cut: last})
		return nil
	case r.AfterSequence > 0:
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = r.AfterSequence + 1
	case !r.Since.IsZero():
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		at := r.Since.Add(-sinceMargin)
		cfg.OptStartTime = &at
	}
	cons, cut, expected, err := s.countedConsumer(ctx, cfg, r, last)
	if err != nil {
		return err
	}
	defer s.dropConsumer(ctx, cons)
	start(ScanStart{Cut: cut, Pending: expected})
	if expected == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// handled is the handler's count, read by the watch too.
	var handled atomic.Uint64
	wantCfg := wantConsumer(filters, cfg.DeliverPolicy)
	w := watch{check: func(info *jetstream.ConsumerInfo) error {
		if err := wantCfg(info); err != nil {
			return err
		}
		// The consumer has nothing left and everything it sent is handled,
		// yet the count falls short: it skipped some (under a filter changed
		// and changed back, say), and the scan would otherwise wait for ever.
		if n := handled.Load(); info.NumPending == 0 && info.Delivered.Consumer == n && n < expected {
			return badDelivery("consumer %s has nothing more to deliver, but delivered %d of the %d events up to sequence %d", info.Name, n, expected, cut)
		}
		return nil
	}}
	prev := r.AfterSequence
	err = s.consume(ctx, cons, w, func(rec Recorded) error {
		switch {
		case rec.Sequence <= prev:
			return badDelivery("sequence %d delivered after %d", rec.Sequence, prev)
		case rec.Sequence > cut:
			return badDelivery("sequence %d delivered, beyond the cut at %d, with %d of the %d events up to it", rec.Sequence, cut, handled.Load(), expected)
		case !r.holds(rec.OrganizationID, rec.TokenID, rec.typ):
			return badDelivery("sequence %d, of organization %q, token %q, type %q, is outside the range", rec.Sequence, rec.OrganizationID, rec.TokenID, rec.typ)
		}
		prev = rec.Sequence
		if err := handle(rec); err != nil {
			return err
		}
		if handled.Add(1) == expected {
			return errScanDone
		}
		return nil
	}, true)
	if errors.Is(err, errScanDone) {
		return nil
	}
	return err
}

// holds says whether an event subject's parts are in the range.
func (r Range) holds(org, tokenID, typ string) bool {
	return org == r.OrganizationID && (r.TokenID == "" || tokenID == r.TokenID) &&
		typ != "" && (len(r.Types) == 0 || slices.Contains(r.Types, domain.EventType(typ)))
}

// countAttempts bounds how often countedConsumer starts again; each attempt
// waits a millisecond longer than the last, so that writes that come in
// bursts or at a steady pace do not keep landing in the same window.
const countAttempts = 10

// countedConsumer makes the scan's consumer and says up to which sequence
// (cut) it reads and exactly how many messages it must deliver up to there.
// A consumer's NumPending when it is made counts the matching messages
// stored by then; that is the count up to cut when no message of the range
// was stored while the consumer was being made. So the stream's last
// sequence is read before (last, the caller's first read) and after: when
// they are equal, nothing was; when not, the messages in between are read
// by sequence, as direct gets (an API path apart from the consumer's), and
// when none of them is in the range, the count still holds. Otherwise the
// range's own organization was writing just then, and it starts again on a
// fresh consumer. (No JetStream request gives a count of a filter's
// messages bounded by a sequence, or together with the stream's last
// sequence, so an organization that writes in every window fails the scan;
// it says to try again.)
func (s *Store) countedConsumer(ctx context.Context, cfg jetstream.ConsumerConfig, r Range, last uint64) (cons jetstream.Consumer, cut, expected uint64, err error) {
	before := last
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			select {
			case <-ctx.Done():
				return nil, 0, 0, ctx.Err()
			case <-time.After(time.Duration(attempt) * time.Millisecond):
			}
			if before, err = s.LastSequence(ctx); err != nil {
				return nil, 0, 0, err
			}
		}
		cons, err = s.js.CreateConsumer(ctx, s.cfg.Stream, cfg)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("scan stream %s: %w", s.cfg.Stream, err)
		}
		expected = cons.CachedInfo().NumPending
		cut, err = s.LastSequence(ctx)
		quiet := false
		if err == nil {
			quiet, err = s.noneInRange(ctx, r, before, cut)
		}
		if err == nil && quiet {
			return cons, cut, expected, nil
		}
		s.dropConsumer(ctx, cons)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("scan stream %s: %w", s.cfg.Stream, err)
		}
		if attempt == countAttempts {
			return nil, 0, 0, fmt.Errorf("scan stream %s: the range's own events kept arriving while its consumer was made (%d attempts); try again", s.cfg.Stream, attempt)
		}
	}
}

// noneInRange says whether no message after sequence from up to to is in r.
func (s *Store) noneInRange(ctx context.Context, r Range, from, to uint64) (bool, error) {
	for seq := from + 1; seq <= to; seq++ {
		raw, err := s.stream.GetMsg(ctx, seq)
		if err != nil {
			return false, fmt.Errorf("get sequence %d: %w", seq, err)
		}
		if r.holds(s.parseSubject(raw.Subject)) {
			return false, nil
		}
	}
	return true, nil
}

// dropConsumer removes a read's consumer at once rather than leaving it to
// time out: exports and history reads would otherwise pile them up to the
// server's limit.
func (s *Store) dropConsumer(ctx context.Context, cons jetstream.Consumer) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if info := cons.CachedInfo(); info != nil {
		_ = s.js.DeleteConsumer(dctx, s.cfg.Stream, info.Name)
	}
}
