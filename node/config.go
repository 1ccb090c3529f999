package node

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/console"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
)

// Config is one ledger's configuration: what `ledger serve`'s flags say, and
// what tests set beyond them. Start from DefaultConfig: the zero value of a
// field means what its comment says, not "the default" (a burst of 0 turns
// the failed-authentication limit off).
type Config struct {
	// DataDir holds the view's snapshot, the audit signing key, the
	// bootstrap token (embedded NATS), the embedded server's JetStream
	// files, and LOCK, which keeps a second ledger off it. Required.
	DataDir string

	// NATSURL is a NATS server or cluster (its URLs, comma-separated) the
	// ledger uses as it is; empty, the ledger runs an embedded server.
	NATSURL string
	// Credentials, with NATSURL, are what `ledger nats setup` made for the
	// servers (natsaccess.LoadCredentials). The embedded server makes its
	// own at each start.
	Credentials *natsaccess.Credentials
	// NATSListen is where the embedded server listens for services
	// (port 0: any free port; empty: nowhere, in-process only).
	NATSListen string
	// NATSSync is when the embedded server fsyncs (zero: its default, every
	// two minutes).
	NATSSync eventstore.Sync

	// Stream and Replicas name and shape the stream; MemoryStorage keeps it
	// (and the services' mirror) in memory: tests and benchmarks only,
	// nothing survives a restart.
	Stream        string
	Replicas      int
	MemoryStorage bool

	// Org is the organization of the bootstrap token the embedded server's
	// first start makes. With NATSURL no start makes one: `ledger
	// bootstrap` does (Bootstrap), exactly once for the stream whichever
	// instance runs it.
	Org string

	// Snapshot keeps the view's snapshot under DataDir: the view starts
	// from it and replays only the stream's tail, it is saved every
	// SnapshotEvery while the view changes (0: only at Close) and at Close.
	// Without it the view replays the whole stream at each start.
	Snapshot      bool
	SnapshotEvery time.Duration
	// Rebuild discards the snapshot and replays the stream from the first
	// event.
	Rebuild bool

	// HTTPAddr is the API's (and the web console's) address; port 0 picks a
	// free one. Empty: the node does not listen, and whoever started it
	// serves Handler (a test's httptest server).
	HTTPAddr string
	// MetricsListen is the operator's metrics address (empty: not served).
	MetricsListen string
	// AuthFailureBurst and AuthFailureInterval are the failed-authentication
	// limit per source address (burst 0: no limit); TrustedProxies are the
	// proxies whose X-Forwarded-For names the source.
	AuthFailureBurst    int
	AuthFailureInterval time.Duration
	TrustedProxies      []netip.Prefix

	// MaxStaleness is how far behind the stream's head this instance may
	// be while it authenticates and verifies (app.WithMaxStaleness); 0
	// turns the check off.
	MaxStaleness time.Duration
	// AuditKeyFile is the operator's Ed25519 key (PEM PKCS#8) that signs
	// export manifests, the same file on every ledger; empty: the stream's
	// shared key (exporters.SharedKey).
	AuditKeyFile string
	// LocalSessions keeps console sessions in this process's memory rather
	// than in the bucket every ledger shares (tests of that store only).
	LocalSessions bool

	// RevokeEvery is how often the revoker looks for service connections
	// whose token changed (zero: natsaccess.RevokeEvery).
	RevokeEvery time.Duration

	// AppOptions, ServerOptions and ConsoleOptions come after the node's own
	// (tests pin clocks and randomness with them).
	AppOptions     []app.Option
	ServerOptions  []httpapi.ServerOption
	ConsoleOptions []console.Option
}

// DefaultConfig is `ledger serve` without flags, but for DataDir and the
// operator's metrics address, which two ledgers in one test would share.
func DefaultConfig() Config {
	es := eventstore.DefaultConfig()
	return Config{
		NATSListen:          "127.0.0.1:4222",
		Stream:              es.Stream,
		Replicas:            es.Replicas,
		Org:                 "default",
		Snapshot:            true,
		SnapshotEvery:       time.Minute,
		HTTPAddr:            "127.0.0.1:8080",
		AuthFailureBurst:    httpapi.DefaultFailureBurst,
		AuthFailureInterval: httpapi.DefaultFailureInterval,
		MaxStaleness:        DefaultMaxStaleness,
	}
}

// DefaultMaxStaleness is MaxStaleness unless told otherwise.
const DefaultMaxStaleness = 2 * time.Second

// check reports every problem with the configuration at once.
func (c Config) check() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("a data directory is required"))
	}
	if c.NATSURL != "" && c.Credentials == nil {
		errs = append(errs, errors.New("NATS credentials are required with a NATS URL: the ledger never uses a server that lets anyone in"))
	}
	if c.NATSURL == "" && c.Credentials != nil {
		errs = append(errs, errors.New("NATS credentials go with a NATS URL; the embedded server makes its own"))
	}
	if c.AuthFailureBurst < 0 || c.AuthFailureInterval < 0 {
		errs = append(errs, errors.New("the failed-authentication burst and interval cannot be negative"))
	}
	if c.MaxStaleness < 0 {
		errs = append(errs, errors.New("the maximum staleness cannot be negative"))
	}
	if err := c.streamConfig().Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ledger configuration: %w", err)
	}
	return nil
}

// streamConfig is the event store's configuration.
func (c Config) streamConfig() eventstore.Config {
	cfg := eventstore.DefaultConfig()
	cfg.Stream, cfg.Replicas = c.Stream, c.Replicas
	if c.MemoryStorage {
		cfg.Storage = jetstream.MemoryStorage
	}
	return cfg
}
