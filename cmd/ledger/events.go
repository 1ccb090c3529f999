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
(Ctrl-C). It reads the stream straight from NATS, as a service would, with an
ephemeral consumer: it needs no API token and changes nothing. By default it
shows only events written after it starts; --from-start shows the whole
history first. Secret hashes are never printed.

The NATS URL is --nats-url, else LEDGER_NATS_URL, else ` + defaultNATSURL + `
(where ` + "`ledger serve`" + ` listens for services by default).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.out.check(); err != nil {
				return err
			}
			filters, err := o.filterSubjects()
			if err != nil {
				return err
			}
			*started = true
			if o.natsURL == "" {
				o.natsURL = getenv("LEDGER_NATS_URL")
			}
			if o.natsURL == "" {
				o.natsURL = defaultNATSURL
			}
			return tail(cmd.Context(), o, filters, stdout, stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.natsURL, "nats-url", "", "NATS server to read from (default: LEDGER_NATS_URL, else "+defaultNATSURL+")")
	f.StringVar(&o.stream, "stream", eventstore.DefaultConfig().Stream, "JetStream stream name, as given to `ledger serve --stream`")
	f.StringVar(&o.org, "org", "", "only this organization's events")
	f.StringArrayVar(&o.types, "type", nil, "only this event type ("+eventTypeList()+"); repeat for several")
	f.BoolVar(&o.fromStart, "from-start", false, "print the whole history first, then follow")
	o.out.register(cmd)
	return cmd
}

// filterSubjects turns --org and --type into the consumer's subject
// filters, so the server sends only what will be printed.
func (o tailOptions) filterSubjects() ([]string, error) {
	prefix := eventstore.DefaultConfig().SubjectPrefix
	org := "*"
	if o.org != "" {
		// An id with a dot or a wildcard would widen the filter to other
		// organizations' subjects.
		if !domain.ValidID(o.org) {
			return nil, usageError{fmt.Errorf("--org %q: not an organization id (1-64 letters, digits, '-' or '_')", o.org)}
		}
		org = o.org
	}
	if len(o.types) == 0 {
		return []string{prefix + "." + org + ".>"}, nil
	}
	var subjects []string
	seen := map[string]bool{}
	for _, t := range o.types {
		if !knownEventType(t) {
			return nil, usageError{fmt.Errorf("--type %q: unknown event type; valid: %s", t, eventTypeList())}
		}
		if !seen[t] {
			seen[t] = true
			subjects = append(subjects, prefix+"."+org+".*."+t)
		}
	}
	return subjects, nil
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

func tail(ctx context.Context, o tailOptions, filters []string, stdout, stderr io.Writer) error {
	var mu sync.Mutex // the consumer's callback and the connection's handlers both write
	warn := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stderr, "warning: "+format+"\n", args...)
	}
	nc, err := nats.Connect(o.natsURL, nats.Name("ledger events tail"), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				warn("lost NATS at %s (%v); reconnecting", o.natsURL, err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { warn("reconnected to NATS at %s", o.natsURL) }),
		// Errors the server sends (a service may not delete the consumer
		// an ordered consumer replaces, say) go through the command's own
		// warnings, not nats.go's default print to the process's stderr.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			warn("NATS: %v", err)
		}),
	)
	if err != nil {
		return &exitError{code: exitNoReach, msg: fmt.Sprintf("error: NATS at %s: %v (is `ledger serve` running? set --nats-url or LEDGER_NATS_URL)", o.natsURL, err)}
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	setup, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := js.Stream(setup, o.stream)
	if err != nil {
		return fmt.Errorf("stream %s on %s: %w", o.stream, o.natsURL, err)
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: filters,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		// The service user may not delete consumers: the server removes
		// this one soon after tail stops pulling.
		InactiveThreshold: 30 * time.Second,
	}
	if !o.fromStart {
		// Rather than DeliverNew: an ordered consumer that resets before its
		// first message would otherwise start at "new" again and skip what
		// came in between.
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = stream.CachedInfo().State.LastSeq + 1
	}
	cons, err := js.OrderedConsumer(setup, o.stream, cfg)
	if err != nil {
		return fmt.Errorf("follow stream %s: %w", o.stream, err)
	}

	prefix := eventstore.DefaultConfig().SubjectPrefix + "."
	enc := json.NewEncoder(stdout)
	handle := func(m jetstream.Msg) {
		var seq uint64
		if md, err := m.Metadata(); err == nil {
			seq = md.Sequence.Stream
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
	cc, err := cons.Consume(handle, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		// Missed heartbeats come with every disconnect, which the
		// connection's handlers already report, and the consumer recovers
		// from them on its own.
		if errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, nats.ErrConnectionClosed) {
			return
		}
		warn("%v", err)
	}))
	if err != nil {
		return fmt.Errorf("follow stream %s: %w", o.stream, err)
	}
	from := "new events"
	if o.fromStart {
		from = "the first event"
	}
	mu.Lock()
	fmt.Fprintf(stderr, "following %s on %s from %s (Ctrl-C to stop)\n", strings.Join(filters, ", "), o.natsURL, from)
	mu.Unlock()

	<-ctx.Done()
	cc.Stop()
	<-cc.Closed()
	return nil
}

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
