package eventstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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
	// (an upper bound on what the scan will deliver): for progress reports.
	Pending uint64
}

var errScanDone = errors.New("scan done")

// Scan delivers the events of r in stream order, up to the stream's last
// sequence when it began, then returns. start is called once, before the
// first event. A message that is not a valid event is delivered with Err
// set, as Follow does.
func (s *Store) Scan(ctx context.Context, r Range, start func(ScanStart), handle func(Recorded) error) error {
	if !domain.ValidID(r.OrganizationID) {
		return fmt.Errorf("scan: organization %q is not a valid id", r.OrganizationID)
	}
	if r.TokenID != "" && !domain.ValidTokenID(r.TokenID) {
		return fmt.Errorf("scan: token %q is not a valid token id", r.TokenID)
	}
	cut, err := s.LastSequence(ctx)
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
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: filters, DeliverPolicy: jetstream.DeliverAllPolicy}
	switch {
	case r.AfterSequence >= cut:
		start(ScanStart{Cut: cut})
		return nil
	case r.AfterSequence > 0:
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = r.AfterSequence + 1
	case !r.Since.IsZero():
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		at := r.Since.Add(-sinceMargin)
		cfg.OptStartTime = &at
	}
	cons, err := s.js.OrderedConsumer(ctx, s.cfg.Stream, cfg)
	if err != nil {
		return fmt.Errorf("scan stream %s: %w", s.cfg.Stream, err)
	}
	defer s.dropConsumer(ctx, cons, true)
	pending := cons.CachedInfo().NumPending
	start(ScanStart{Cut: cut, Pending: pending})
	if pending == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	err = s.consume(ctx, cons, func(rec Recorded) error {
		if rec.Sequence > cut {
			return errScanDone
		}
		if err := handle(rec); err != nil {
			return err
		}
		if rec.Sequence == cut || rec.pending == 0 {
			return errScanDone
		}
		return nil
	}, true)
	if errors.Is(err, errScanDone) {
		return nil
	}
	return err
}

// dropConsumer removes a read's consumer at once rather than leaving it to
// time out: exports and history reads would otherwise pile them up to the
// server's limit. An ordered consumer named PREFIX_N replaced PREFIX_1 to
// PREFIX_N-1 on the way; nats.go deletes those in the background, and they
// are deleted here too, so that nothing of the read is left when it returns.
func (s *Store) dropConsumer(ctx context.Context, cons jetstream.Consumer, ordered bool) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	last := cons.CachedInfo()
	if last == nil {
		return
	}
	_ = s.js.DeleteConsumer(dctx, s.cfg.Stream, last.Name)
	if !ordered {
		return
	}
	cut := strings.LastIndexByte(last.Name, '_')
	serial, err := strconv.Atoi(last.Name[cut+1:])
	if cut < 0 || err != nil {
		return
	}
	for n := 1; n < serial; n++ {
		_ = s.js.DeleteConsumer(dctx, s.cfg.Stream, last.Name[:cut+1]+strconv.Itoa(n))
	}
}
