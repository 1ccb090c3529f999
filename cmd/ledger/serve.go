package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenledger/tokenledger/console"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/node"
)

type serveOptions struct {
	dataDir    string
	httpAddr   string
	natsListen string
	natsURL    string
	// natsCredentials is the file `ledger nats setup` wrote, for --nats-url.
	natsCredentials string
	org             string
	stream          string
	replicas        int
	memory          bool
	rebuild         bool
	// snapshotEvery is how often the token view is saved while it changes (0:
	// only at shutdown).
	snapshotEvery time.Duration
	// The failed-authentication limit per source address, and the proxies
	// whose X-Forwarded-For names that address.
	authFailureBurst    int
	authFailureInterval time.Duration
	trustedProxies      []string
	// natsSync is when the embedded server fsyncs ("always" or a duration;
	// empty: the server's default, every two minutes).
	natsSync string
	// metricsListen is the operator's metrics address: every series,
	// those that tell a rotated-away secret from an unknown one included
	// (empty: not served).
	metricsListen string
	// auditKey is the operator's signing key file (node.Config.AuditKeyFile).
	auditKey string
	// maxStaleness: see node.Config.MaxStaleness.
	maxStaleness time.Duration
}

func newServeCmd(stdout, stderr io.Writer, started *bool) *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the ledger: embedded NATS JetStream (or --nats-url), the HTTP API and the token views",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			*started = true
			if cmd.Flags().Changed("nats-listen") && o.natsURL != "" {
				return usageError{errors.New("--nats-listen and --nats-url exclude each other: the first runs an embedded server, the second uses yours")}
			}
			if o.natsURL != "" && o.natsCredentials == "" {
				return usageError{errors.New("--nats-url needs --nats-credentials: the file `ledger nats setup` wrote for your servers (the ledger never uses a server that lets anyone in)")}
			}
			if o.natsURL == "" && o.natsCredentials != "" {
				return usageError{errors.New("--nats-credentials goes with --nats-url; the embedded server makes its own")}
			}
			if o.natsSync != "" && o.natsURL != "" {
				return usageError{errors.New("--nats-sync sets the embedded server's fsync; with --nats-url set sync_interval in your servers' configuration")}
			}
			if o.natsSync != "" {
				if _, err := eventstore.ParseSync(o.natsSync); err != nil {
					return usageError{fmt.Errorf("--nats-sync: %w", err)}
				}
			}
			if _, err := httpapi.ParseTrustedProxies(strings.Join(o.trustedProxies, ",")); err != nil {
				return usageError{fmt.Errorf("--trusted-proxy: %w", err)}
			}
			if o.authFailureBurst < 0 || o.authFailureInterval < 0 {
				return usageError{errors.New("--auth-failure-burst and --auth-failure-interval cannot be negative")}
			}
			if o.maxStaleness < 100*time.Millisecond {
				// No way to turn it off: a ledger that may answer from any
				// old view could accept a secret rotated away elsewhere. And
				// not below what a round trip to the stream can show.
				return usageError{errors.New("--max-staleness must be at least 100ms, such as 2s")}
			}
			if err := checkMetricsListen(o.metricsListen, o.httpAddr); err != nil {
				return usageError{err}
			}
			log := slog.New(slog.NewTextHandler(stderr, nil))
			n, err := startLedger(cmd.Context(), o, log)
			if err != nil {
				return &exitError{code: exitFailed, msg: "error: " + err.Error()}
			}
			fmt.Fprintf(stdout, "ledger serving on http://%s (organization %s, data in %s)\n", n.HTTPAddr(), o.org, o.dataDir)
			fmt.Fprintf(stdout, "web console on http://%s%s\n", n.HTTPAddr(), console.Path)
			if n.NATSClientURL() != "" {
				fmt.Fprintf(stdout, "NATS for services on %s\n", n.NATSClientURL())
			}
			if n.BootstrapPath() != "" {
				fmt.Fprintf(stdout, "bootstrap ORGANIZATION_OWNER token written to %s (mode 0600)\n", n.BootstrapPath())
			}
			<-cmd.Context().Done()
			log.Info("shutting down")
			return n.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data", "./ledger-data", "directory for the embedded JetStream store, the view's snapshot and the bootstrap token; one ledger at a time (it is locked)")
	f.StringVar(&o.httpAddr, "http", "127.0.0.1:8080", "address of the HTTP API")
	f.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222", "address where the embedded NATS server listens for services")
	f.StringVar(&o.natsURL, "nats-url", "", "use this NATS server or cluster instead of an embedded one (a cluster: its URLs, comma-separated); the first token is then made by `ledger bootstrap`")
	f.StringVar(&o.natsCredentials, "nats-credentials", "", "with --nats-url: the credentials file `ledger nats setup` wrote")
	f.StringVar(&o.natsSync, "nats-sync", "", `when the embedded server fsyncs: "always" (each event, before it is acknowledged) or a duration (default: every 2m)`)
	f.StringVar(&o.org, "org", "default", "organization of the bootstrap token made on the first start (embedded NATS)")
	f.StringVar(&o.stream, "stream", "TOKENS", "JetStream stream name")
	f.IntVar(&o.replicas, "replicas", 1, "stream replicas (3 on a cluster)")
	f.BoolVar(&o.rebuild, "rebuild", false, "discard the view's snapshot and rebuild it from the first event")
	f.DurationVar(&o.snapshotEvery, "snapshot-every", time.Minute, "how often to save the view's snapshot while it changes (0: only at shutdown)")
	f.IntVar(&o.authFailureBurst, "auth-failure-burst", httpapi.DefaultFailureBurst, "failed authentications a source address may make in a row before it gets 429 (0: no limit)")
	f.DurationVar(&o.authFailureInterval, "auth-failure-interval", httpapi.DefaultFailureInterval, "after the burst, a source earns one more attempt every this long")
	f.StringSliceVar(&o.trustedProxies, "trusted-proxy", nil, "CIDR or address of a reverse proxy whose X-Forwarded-For names the client (repeatable; default: trust none, the source is the TCP peer)")
	f.BoolVar(&o.memory, "memory-storage", false, "keep the stream in memory (tests and benchmarks only: nothing survives a restart)")
	f.StringVar(&o.metricsListen, "metrics-listen", defaultMetricsListen, `operator address for GET /metrics with every series, the reuse detector's included, which the API's /metrics leaves out because they tell a rotated-away secret from an unknown one; keep it private ("": not served)`)
	f.StringVar(&o.auditKey, "audit-key", "", "Ed25519 private key (PEM PKCS#8, e.g. `openssl genpkey -algorithm ed25519`) that signs audit export manifests; give every ledger the same file (default: the stream's own key, shared by every ledger through JetStream)")
	f.DurationVar(&o.maxStaleness, "max-staleness", node.DefaultMaxStaleness, "authenticate and verify only while this instance knows it is within this of the stream's head; past it answer 503 with Retry-After")
	return cmd
}

// config is the ledger these flags describe. Its errors are the flags'
// (serve checked their syntax before) or the credentials file's.
func (o serveOptions) config() (node.Config, error) {
	cfg := node.DefaultConfig()
	cfg.DataDir, cfg.HTTPAddr, cfg.NATSListen, cfg.NATSURL = o.dataDir, o.httpAddr, o.natsListen, o.natsURL
	cfg.Org, cfg.Stream, cfg.Replicas, cfg.MemoryStorage = o.org, o.stream, o.replicas, o.memory
	cfg.Rebuild, cfg.SnapshotEvery = o.rebuild, o.snapshotEvery
	cfg.AuthFailureBurst, cfg.AuthFailureInterval = o.authFailureBurst, o.authFailureInterval
	cfg.MetricsListen, cfg.MaxStaleness, cfg.AuditKeyFile = o.metricsListen, o.maxStaleness, o.auditKey
	if o.maxStaleness == 0 {
		cfg.MaxStaleness = node.DefaultMaxStaleness // the flag refuses 0; options built in code may leave it out
	}
	if o.natsSync != "" {
		sync, err := eventstore.ParseSync(o.natsSync)
		if err != nil {
			return cfg, fmt.Errorf("--nats-sync: %w", err)
		}
		cfg.NATSSync = sync
	}
	trusted, err := httpapi.ParseTrustedProxies(strings.Join(o.trustedProxies, ","))
	if err != nil {
		return cfg, fmt.Errorf("--trusted-proxy: %w", err)
	}
	cfg.TrustedProxies = trusted
	if o.natsCredentials != "" {
		creds, err := natsaccess.LoadCredentials(o.natsCredentials)
		if err != nil {
			return cfg, fmt.Errorf("--nats-credentials: %w", err)
		}
		cfg.Credentials = &creds
	}
	return cfg, nil
}

// startLedger runs the ledger o describes (node.Start).
func startLedger(ctx context.Context, o serveOptions, log *slog.Logger) (*node.Node, error) {
	cfg, err := o.config()
	if err != nil {
		return nil, err
	}
	return node.Start(ctx, cfg, log)
}

// defaultMetricsListen is loopback, and not 9090: a Prometheus scraping a
// loopback address runs on the same host, and 9090 is its own port.
const defaultMetricsListen = "127.0.0.1:9464"

// checkMetricsListen accepts "" or a host:port (the host may be empty: every
// interface) other than the API's.
func checkMetricsListen(addr, httpAddr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--metrics-listen %q: want host:port, such as %s", addr, defaultMetricsListen)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("--metrics-listen %q: the port must be a number from 0 to 65535", addr)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("--metrics-listen %q: the host must be an IP address or localhost", addr)
	}
	if addr == httpAddr && port != "0" {
		return fmt.Errorf("--metrics-listen %q is the API's address (--http): the operator's metrics need one of their own", addr)
	}
	return nil
}
