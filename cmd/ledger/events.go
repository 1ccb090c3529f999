package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
)

// defaultNATSURL is where `ledger serve` lets services reach its embedded
// NATS server unless --nats-listen says otherwise.
const defaultNATSURL = "nats://127.0.0.1:4222"

func newEventsCmd(stdout, stderr io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	cmd := groupCmd("events", "Follow the token events as the ledger writes them")
	cmd.AddCommand(newEventsTailCmd(stdout, stderr, getenv, started))
	return cmd
}

type tailOptions struct {
	natsURL   string
	token     string
	stream    string
	org       string
	types     []string
	fromStart bool
	out       output
}

func newEventsTailCmd(stdout, stderr io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	var o tailOptions
	cmd := &cobra.Command{
		Use:   "tail [--nats-url URL] [--org ID] [--type T]... [--from-start] [-o json]",
		Short: "Print token events as they happen, one line each, until interrupted",
		Long: `Print token events as they happen, one line each, until interrupted
(Ctrl-C). It reads the stream straight from NATS, as a service does, logging
in with the token in LEDGER_API_TOKEN: an organization token reads every event
of its organization, a workspace or deployment token only its own token's.
It reads through a one-off consumer in one of the token's consumer names,
which the server removes 5 s after it stops reading, and changes nothing
else. By default it shows only events written after it
starts; --from-start shows the whole history first. Secret hashes are never
printed.

The NATS URL is --nats-url, else LEDGER_NATS_URL, else ` + defaultNATSURL + `
(where ` + "`ledger serve`" + ` listens for services by default).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.out.check(); err != nil {
				return err
			}
			if err := o.checkFilters(); err != nil {
				return err
			}
			*started = true
			o.token = strings.TrimSpace(getenv("LEDGER_API_TOKEN"))
			if o.token == "" {
				return usageError{errors.New("LEDGER_API_TOKEN is not set: events tail logs in to NATS with an API token (an organization token reads its organization's events, a workspace or deployment token only its own)")}
			}
			if o.natsURL == "" {
				o.natsURL = getenv("LEDGER_NATS_URL")
			}
			if o.natsURL == "" {
				o.natsURL = defaultNATSURL
			}
			return tail(cmd.Context(), o, stdout, stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.natsURL, "nats-url", "", "NATS server to read from (default: LEDGER_NATS_URL, else "+defaultNATSURL+")")
	f.StringVar(&o.stream, "stream", eventstore.DefaultConfig().Stream, "JetStream stream name, as given to `ledger serve --stream`")
	f.StringVar(&o.org, "org", "", "only this organization's events: the token's own, the only one it reads (the default)")
	f.StringArrayVar(&o.types, "type", nil, "only this event type ("+eventTypeList()+"); repeat for several")
	f.BoolVar(&o.fromStart, "from-start", false, "print the whole history first, then follow")
	o.out.register(cmd)
	return cmd
}

// checkFilters checks --org and --type before anything connects.
func (o tailOptions) checkFilters() error {
	// An id with a dot or a wildcard would widen a filter to other
	// organizations' subjects (which the server refuses anyway).
	if o.org != "" && !domain.ValidID(o.org) {
		return usageError{fmt.Errorf("--org %q: not an organization id (1-64 letters, digits, '-' or '_')", o.org)}
	}
	for _, t := range o.types {
		if !knownEventType(t) {
			return usageError{fmt.Errorf("--type %q: unknown event type; valid: %s", t, eventTypeList())}
		}
	}
	return nil
}

// filterSubject is the consumer's one subject filter (a service's consumer
// takes one, checked against what its token reads), so the server sends
// only what will be printed, or as little more as one subject allows: with
// one --type, that type's subject within what the token reads; otherwise
// all it reads, and want (nil: every type) says which types to print.
func (o tailOptions) filterSubject(id natsaccess.Identity) (filter string, want map[string]bool, err error) {
	if o.org != "" && o.org != id.OrganizationID {
		return "", nil, usageError{fmt.Errorf("--org %q: LEDGER_API_TOKEN belongs to organization %q and reads only its events", o.org, id.OrganizationID)}
	}
	if id.Stream != "" && id.Stream != o.stream {
		return "", nil, usageError{fmt.Errorf("--stream %q: LEDGER_API_TOKEN's consumers are on stream %q", o.stream, id.Stream)}
	}
	if len(o.types) == 0 {
		return id.Filter, nil, nil
	}
	want = map[string]bool{}
	for _, t := range o.types {
		want[t] = true
	}
	if len(want) > 1 {
		return id.Filter, want, nil
	}
	t := o.types[0]
	switch {
	case strings.HasSuffix(id.Filter, ".>"): // <prefix>.<org>.>
		return strings.TrimSuffix(id.Filter, ">") + "*." + t, want, nil
	case strings.HasSuffix(id.Filter, ".*"): // <prefix>.<org>.<token>.*
		return strings.TrimSuffix(id.Filter, "*") + t, want, nil
	}
	return id.Filter, want, nil
}

func knownEventType(t string) bool {
	for _, known := range domain.EventTypes {
		if string(known) == t {
			return true
		}
	}
	return false
}

func eventTypeList() string {
	names := make([]string, len(domain.EventTypes))
	for i, t := range domain.EventTypes {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// tailLine is one event as `events tail -o json` prints it: the shape of
// `token history -o json`, plus which token it is about.
type tailLine struct {
	httpapi.HistoryEvent
	OrganizationID string       `json:"organization_id"`
	TokenID        string       `json:"token_id"`
	TokenName      string       `json:"token_name"`
	Scope          domain.Scope `json:"scope"`
	WorkspaceID    string       `json:"workspace_id,omitempty"`
	DeploymentID   string       `json:"deployment_id,omitempty"`
}

func tail(ctx context.Context, o tailOptions, stdout, stderr io.Writer) error {
	var mu sync.Mutex // the consumer's callback and the connection's handlers both write
	warn := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stderr, "warning: "+format+"\n", args...)
	}
	opts := append([]nats.Option{nats.Name("ledger events tail"), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				warn("lost NATS at %s (%v); reconnecting", o.natsURL, err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { warn("reconnected to NATS at %s", o.natsURL) }),
		// Errors the server sends go through the command's own warnings,
		// not nats.go's default print to the process's stderr.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			warn("NATS: %v", err)
		}),
	}, natsaccess.Options(o.token)...)
	nc, err := nats.Connect(o.natsURL, opts...)
	if errors.Is(err, nats.ErrAuthorization) {
		return &exitError{code: exitFailed, msg: fmt.Sprintf("error: NATS at %s refused LEDGER_API_TOKEN: not an active token (rotated, deleted or expired?)", o.natsURL)}
	}
	if err != nil {
		return &exitError{code: exitNoReach, msg: fmt.Sprintf("error: NATS at %s: %v (is `ledger serve` running? set --nats-url or LEDGER_NATS_URL)", o.natsURL, err)}
	}
	closed := nc.StatusChanged(nats.CLOSED)
	defer nc.Close()
	js, err := natsaccess.JetStream(nc)
	if err != nil {
		return err
	}
	setup, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	id, err := natsaccess.WhoAmI(setup, nc)
	if err != nil {
		return fmt.Errorf("NATS at %s: %w", o.natsURL, err)
	}
	filter, want, err := o.filterSubject(id)
	if err != nil {
		return err
	}
	cfg := jetstream.ConsumerConfig{
		Description:   "ledger events tail",
		FilterSubject: filter,
		// Nothing to ack: a message lost on the way (a broken connection)
		// shows as a gap in the consumer's sequence, and tail then reads
		// again from the event after the last it had.
		AckPolicy:     jetstream.AckNonePolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		// Services cannot delete consumers (natsaccess.ClaimConsumer): the
		// server does once nobody has read from it for this long, which
		// frees the name for the token's next one-off read.
		InactiveThreshold: tailInactiveThreshold,
		MemoryStorage:     true,
	}
	if o.fromStart {
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	cons, err := natsaccess.ClaimConsumer(setup, js, o.stream, id, "", cfg)
	if err != nil {
		return fmt.Errorf("follow stream %s: %w", o.stream, err)
	}
	cancel()
	// last is the stream sequence of the last event tail had (printed or
	// passed over): where it is created, a consumer says where it starts.
	f := &follower{last: cons.CachedInfo().Delivered.Stream}

	prefix := eventstore.DefaultConfig().SubjectPrefix + "."
	enc := json.NewEncoder(stdout)
	show := func(m jetstream.Msg, seq uint64) {
		if want != nil && !want[m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:]] {
			return
		}
		line, err := decodeTailed(m.Subject(), prefix, m.Data(), seq)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			fmt.Fprintf(stderr, "warning: stream sequence %d (%s): not a ledger event, skipped: %v\n", seq, m.Subject(), err)
		case o.out.json():
			_ = enc.Encode(line)
		default:
			fmt.Fprintln(stdout, textLine(line))
		}
	}
	for first := true; ; first = false {
		broken := make(chan struct{})
		cc, err := f.consume(cons, show, broken, warn)
		if err != nil {
			return fmt.Errorf("follow stream %s: %w", o.stream, err)
		}
		if first {
			from := "new events"
			if o.fromStart {
				from = "the first event"
			}
			what := filter
			if want != nil {
				what += " (" + strings.Join(o.types, ", ") + ")"
			}
			mu.Lock()
			fmt.Fprintf(stderr, "following %s on %s from %s (Ctrl-C to stop)\n", what, o.natsURL, from)
			mu.Unlock()
		}
		select {
		case <-ctx.Done():
			cc.Stop()
			<-cc.Closed()
			return nil
		case <-closed:
			cc.Stop()
			err := nc.LastError()
			if err == nil {
				err = nats.ErrConnectionClosed
			}
			return &exitError{code: exitFailed, msg: fmt.Sprintf("error: NATS at %s closed the connection: %v (was LEDGER_API_TOKEN rotated or deleted?)", o.natsURL, err)}
		case <-broken:
		}
		// A message lost on the way, or the consumer gone: read again, with
		// a new consumer, from the event after the last tail had.
		cc.Stop()
		<-cc.Closed()
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, f.position()+1
		for {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			cons, err = natsaccess.ClaimConsumer(rctx, js, o.stream, id, "", cfg)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() == nil && !nc.IsClosed() {
				warn("follow again from stream sequence %d: %v", cfg.OptStartSeq, err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-closed:
				return &exitError{code: exitFailed, msg: fmt.Sprintf("error: NATS at %s closed the connection: %v (was LEDGER_API_TOKEN rotated or deleted?)", o.natsURL, nc.LastError())}
			case <-time.After(2 * time.Second):
			}
		}
	}
}

// follower keeps tail's place in the stream across the consumers it reads
// through.
type follower struct {
	mu   sync.Mutex
	last uint64 // the stream sequence of the last event had
}

func (f *follower) position() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// consume reads cons, handing each event after the last one had to print,
// and closes broken once the consumer's sequence skips one (a message lost
// while the connection was down) or the consumer is gone.
func (f *follower) consume(cons jetstream.Consumer, show func(jetstream.Msg, uint64), broken chan struct{}, warn func(string, ...any)) (jetstream.ConsumeContext, error) {
	var once sync.Once
	brk := func() { once.Do(func() { close(broken) }) }
	delivered := cons.CachedInfo().Delivered.Consumer
	return cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		if md.Sequence.Consumer != delivered+1 {
			brk()
			return
		}
		delivered = md.Sequence.Consumer
		f.mu.Lock()
		seen := md.Sequence.Stream <= f.last
		if !seen {
			f.last = md.Sequence.Stream
		}
		f.mu.Unlock()
		if !seen {
			show(m, md.Sequence.Stream)
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		switch {
		case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound):
			brk()
		case errors.Is(err, jetstream.ErrNoHeartbeat), errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, jetstream.ErrConnectionClosed):
			// Missed heartbeats come with every disconnect, which the
			// connection's handlers already report; a closed connection
			// is tail's to report.
		default:
			warn("%v", err)
		}
	}))
}

// tailInactiveThreshold is how long a consumer tail is done with stays.
const tailInactiveThreshold = 5 * time.Second

// decodeTailed reads a message's body as an event and checks it belongs on
// its subject, as the ledger's own view does: only a writer bypassing the
// ledger could store anything else.
func decodeTailed(subject, prefix string, body []byte, seq uint64) (tailLine, error) {
	var e domain.Event
	if err := json.Unmarshal(body, &e); err != nil {
		return tailLine{}, err
	}
	parts := strings.Split(strings.TrimPrefix(subject, prefix), ".")
	if len(parts) != 3 || parts[0] != e.OrganizationID || parts[1] != e.TokenID || parts[2] != string(e.Type) {
		return tailLine{}, fmt.Errorf("the body is a %s of %s/%s, not what its subject says", e.Type, e.OrganizationID, e.TokenID)
	}
	hist, err := httpapi.HistoryEventOf(seq, e)
	if err != nil {
		return tailLine{}, err
	}
	return tailLine{
		HistoryEvent:   hist,
		OrganizationID: e.OrganizationID,
		TokenID:        e.TokenID,
		TokenName:      e.TokenName,
		Scope:          e.Scope,
		WorkspaceID:    e.WorkspaceID,
		DeploymentID:   e.DeploymentID,
	}, nil
}

// textLine is one event for a person: when, where in the stream, what, to
// which token, by whom, and the same summary `token history` gives. The
// name is quoted so that no name can break the line.
func textLine(l tailLine) string {
	return fmt.Sprintf("%s  #%d  %-18s  org=%s  token=%s  name=%q  actor=%s  %s",
		l.OccurredAt.UTC().Format("2006-01-02T15:04:05.000Z07:00"), l.Sequence, l.EventType,
		l.OrganizationID, l.TokenID, clipText(l.TokenName), l.ActorTokenID, changes(l.HistoryEvent))
}
