package subscriber

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
)

// Start says where a durable consumer begins when it is first created (an
// existing durable resumes where it stopped). The zero Start is StartNew.
type Start struct {
	kind startKind
	seq  uint64
	t    time.Time
}

type startKind uint8

const (
	startNew startKind = iota
	startFirst
	startSequence
	startTime
)

// StartNew delivers only events stored after the durable is created (the
// default). Services read a mirror of the ledger's stream, which follows it
// within milliseconds: "after" is after the mirror has them.
func StartNew() Start { return Start{} }

// StartFirst delivers the whole history.
func StartFirst() Start { return Start{kind: startFirst} }

// StartAtSequence delivers from this stream sequence (1 is the first event).
func StartAtSequence(seq uint64) Start { return Start{kind: startSequence, seq: seq} }

// StartAtTime delivers from the first event stored at or after t (the time
// JetStream stored it, which is within milliseconds of its occurred_at).
func StartAtTime(t time.Time) Start { return Start{kind: startTime, t: t} }

// String describes the start, e.g. "new", "first", "sequence 42".
func (s Start) String() string {
	switch s.kind {
	case startFirst:
		return "first"
	case startSequence:
		return fmt.Sprintf("sequence %d", s.seq)
	case startTime:
		return "time " + s.t.UTC().Format(time.RFC3339Nano)
	default:
		return "new"
	}
}

func (s Start) validate() error {
	switch s.kind {
	case startSequence:
		if s.seq == 0 {
			return errors.New("Start: StartAtSequence needs a sequence of 1 or more (stream sequences start at 1)")
		}
	case startTime:
		if s.t.IsZero() {
			return errors.New("Start: StartAtTime needs a non-zero time")
		}
	}
	return nil
}

// apply sets the deliver policy of a consumer being created.
func (s Start) apply(c *jetstream.ConsumerConfig) {
	switch s.kind {
	case startFirst:
		c.DeliverPolicy = jetstream.DeliverAllPolicy
	case startSequence:
		c.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		c.OptStartSeq = s.seq
	case startTime:
		c.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		t := s.t
		c.OptStartTime = &t
	default:
		c.DeliverPolicy = jetstream.DeliverNewPolicy
	}
}

// Defaults for the zero values of Config.
const (
	DefaultStream        = "TOKENS"
	DefaultSubjectPrefix = "ledger.tokens"
	DefaultAckWait       = 30 * time.Second
	DefaultMaxRetries    = 3
	DefaultRetryInterval = 100 * time.Millisecond
	// MaxRetryInterval caps the doubling retry interval (unless RetryInterval
	// itself is longer, which then is the cap).
	MaxRetryInterval   = 5 * time.Second
	DefaultPoisonTopic = "tokenledger.poison"
	// PoisonBuffer is how many parked messages the default in-memory poison
	// queue holds before it refuses more (see Subscriber.Poisoned).
	PoisonBuffer = 1024
)

// Config configures a Subscriber. Token and Durable are required.
type Config struct {
	// URL is the NATS server; default nats.DefaultURL, where `ledger serve`'s
	// embedded server listens (--nats-listen 127.0.0.1:4222).
	URL string
	// Token is the service's TokenLedger API token (its secret), with which
	// it logs in to the ledger's NATS servers: they let no service in
	// without one. Required. What the token may read bounds what the
	// subscriber gets: an organization token, all of its organization's
	// events; a workspace or deployment token, only its own token's. The
	// subscriber never logs or prints it.
	Token string
	// NATSOptions are extra connection options (TLS, a name, handlers). The
	// subscriber reconnects forever unless one of them says otherwise. The
	// token and its inbox prefix (natsaccess.Options) are applied after
	// them: credentials given here are overridden.
	NATSOptions []nats.Option
	// Stream is the ledger's stream; default "TOKENS". Services read the
	// mirror of it that has the same name. The subscriber never creates or
	// changes it.
	Stream string
	// SubjectPrefix is the stream's subject prefix; default "ledger.tokens".
	SubjectPrefix string
	// Durable names the durable consumer, which keeps this service's position
	// in the stream across restarts. Required. Each token has its own
	// consumers, so the name is the token's: services with different tokens
	// never share a durable, whatever they call it, and each gets every
	// event it may read. Instances with the same token and name split the
	// events (and then lose per-token order across instances: run one). A
	// token has room for natsaccess.MaxConsumers durables.
	Durable string
	// Start is where the durable begins when it is first created; ignored
	// when it exists.
	Start Start
	// OrganizationID, if set, must be the token's organization (Run checks
	// it when it connects): a token reads only its own organization's
	// events, and "" means just that.
	OrganizationID string
	// AckWait is how long JetStream waits for an event's ack before it
	// delivers the event again (after a crash); default 30s. It must exceed
	// the retry budget (the sum of the retry intervals). While a handler runs
	// the subscriber keeps telling JetStream it is in progress, so a slow
	// handler is not redelivered under it.
	AckWait time.Duration
	// MaxRetries is how many times a failed event is retried, after the first
	// failure, before it is parked in the poison queue; default 3, negative
	// for none.
	MaxRetries int
	// RetryInterval is the wait before the first retry; default 100ms,
	// doubling each retry, at most MaxRetryInterval (5s).
	RetryInterval time.Duration
	// ShutdownTimeout is how long Run, once its context ends, lets the event
	// in flight finish (its retries included) before cancelling the handler's
	// context; default AckWait.
	ShutdownTimeout time.Duration
	// PoisonQueue is where an event that failed every retry, or cannot be
	// decoded, is parked (and then acked). Default: an in-memory queue read
	// through Subscriber.Poisoned. The message keeps the event's id as UUID,
	// its JSON as payload, and its headers as metadata, plus
	// middleware.ReasonForPoisonedKey ("reason_poisoned") and the Metadata*
	// keys of this package.
	PoisonQueue message.Publisher
	// PoisonTopic is the topic parked messages are published to; default
	// "tokenledger.poison".
	PoisonTopic string
	// Logger receives the router's and the subscriber's logs; default none.
	// Per-message logs of watermill-nats are lowered from info to debug.
	Logger watermill.LoggerAdapter
}

// withDefaults validates cfg and fills in its zero values. Every problem is
// reported at once, each naming its field.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.URL == "" {
		c.URL = nats.DefaultURL
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	} else if err := checkName(c.Stream); err != nil {
		errs = append(errs, fmt.Errorf("Stream %q: %w", c.Stream, err))
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	} else if err := checkSubjectPrefix(c.SubjectPrefix); err != nil {
		errs = append(errs, fmt.Errorf("SubjectPrefix %q: %w", c.SubjectPrefix, err))
	}
	if c.Token == "" {
		errs = append(errs, errors.New("Token is required: the service's TokenLedger API token (its secret), which the ledger's NATS servers ask of every service"))
	}
	if c.Durable == "" {
		errs = append(errs, errors.New("Durable is required: the durable consumer's name, one per service (e.g. \"billing-cache\")"))
	} else if err := checkName(c.Durable); err != nil {
		errs = append(errs, fmt.Errorf("Durable %q: %w", c.Durable, err))
	}
	if err := c.Start.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.OrganizationID != "" && !domain.ValidID(c.OrganizationID) {
		errs = append(errs, fmt.Errorf("OrganizationID %q: must be 1-64 characters of letters, digits, '-' or '_', starting with a letter or digit", c.OrganizationID))
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	} else if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	switch {
	case c.RetryInterval < 0:
		errs = append(errs, fmt.Errorf("RetryInterval %v: must not be negative", c.RetryInterval))
	case c.RetryInterval == 0:
		c.RetryInterval = DefaultRetryInterval
	}
	switch {
	case c.AckWait < 0:
		errs = append(errs, fmt.Errorf("AckWait %v: must not be negative", c.AckWait))
	case c.AckWait == 0:
		c.AckWait = DefaultAckWait
	}
	if c.AckWait > 0 && c.RetryInterval > 0 {
		if budget := c.retryBudget(); c.AckWait <= budget {
			errs = append(errs, fmt.Errorf("AckWait %v: must exceed the retry budget of %v (MaxRetries %d, RetryInterval %v doubling up to %v), or JetStream delivers the event again while it is still being retried",
				c.AckWait, budget, c.MaxRetries, c.RetryInterval, c.maxRetryInterval()))
		}
	}
	switch {
	case c.ShutdownTimeout < 0:
		errs = append(errs, fmt.Errorf("ShutdownTimeout %v: must not be negative", c.ShutdownTimeout))
	case c.ShutdownTimeout == 0:
		c.ShutdownTimeout = c.AckWait
	}
	if c.PoisonTopic == "" {
		c.PoisonTopic = DefaultPoisonTopic
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("subscriber config: %w", errors.Join(errs...))
	}
	return c, nil
}

func (c Config) maxRetryInterval() time.Duration { return max(MaxRetryInterval, c.RetryInterval) }

// retryBudget is the time the retries of one event wait in all.
func (c Config) retryBudget() time.Duration {
	var sum time.Duration
	d, top := c.RetryInterval, c.maxRetryInterval()
	for range c.MaxRetries {
		sum += d
		d = min(2*d, top)
	}
	return sum
}

// checkName checks a stream or consumer name as JetStream does.
func checkName(s string) error {
	if len(s) > 255 {
		return errors.New("at most 255 characters")
	}
	if i := strings.IndexAny(s, " \t\r\n.*>/\\"); i >= 0 {
		return fmt.Errorf("must not contain %q (no whitespace, '.', '*', '>', '/' or '\\')", s[i])
	}
	return nil
}

func checkSubjectPrefix(s string) error {
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" {
			return errors.New("must be dot-separated tokens, none of them empty")
		}
		if strings.ContainsAny(tok, " \t\r\n*>") {
			return errors.New("must not contain whitespace or wildcards")
		}
	}
	return nil
}
