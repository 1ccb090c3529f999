package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/console"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
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
			if err := checkMetricsListen(o.metricsListen, o.httpAddr); err != nil {
				return usageError{err}
			}
			log := slog.New(slog.NewTextHandler(stderr, nil))
			n, err := startLedger(cmd.Context(), o, log)
			if err != nil {
				return &exitError{code: exitFailed, msg: "error: " + err.Error()}
			}
			fmt.Fprintf(stdout, "ledger serving on http://%s (organization %s, data in %s)\n", n.httpAddr, o.org, o.dataDir)
			fmt.Fprintf(stdout, "web console on http://%s%s\n", n.httpAddr, console.Path)
			if n.natsClientURL != "" {
				fmt.Fprintf(stdout, "NATS for services on %s\n", n.natsClientURL)
			}
			if n.bootstrapPath != "" {
				fmt.Fprintf(stdout, "bootstrap ORGANIZATION_OWNER token written to %s (mode 0600)\n", n.bootstrapPath)
			}
			<-cmd.Context().Done()
			log.Info("shutting down")
			return n.close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data", "./ledger-data", "directory for the embedded JetStream store and the bootstrap token")
	f.StringVar(&o.httpAddr, "http", "127.0.0.1:8080", "address of the HTTP API")
	f.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222", "address where the embedded NATS server listens for services")
	f.StringVar(&o.natsURL, "nats-url", "", "use this NATS server or cluster instead of an embedded one (a cluster: its URLs, comma-separated)")
	f.StringVar(&o.natsCredentials, "nats-credentials", "", "with --nats-url: the credentials file `ledger nats setup` wrote")
	f.StringVar(&o.natsSync, "nats-sync", "", `when the embedded server fsyncs: "always" (each event, before it is acknowledged) or a duration (default: every 2m)`)
	f.StringVar(&o.org, "org", "default", "organization of the bootstrap token made on the first start")
	f.StringVar(&o.stream, "stream", "TOKENS", "JetStream stream name")
	f.IntVar(&o.replicas, "replicas", 1, "stream replicas (3 on a cluster)")
	f.BoolVar(&o.rebuild, "rebuild", false, "discard the view's snapshot and rebuild it from the first event")
	f.DurationVar(&o.snapshotEvery, "snapshot-every", time.Minute, "how often to save the view's snapshot while it changes (0: only at shutdown)")
	f.IntVar(&o.authFailureBurst, "auth-failure-burst", httpapi.DefaultFailureBurst, "failed authentications a source address may make in a row before it gets 429 (0: no limit)")
	f.DurationVar(&o.authFailureInterval, "auth-failure-interval", httpapi.DefaultFailureInterval, "after the burst, a source earns one more attempt every this long")
	f.StringSliceVar(&o.trustedProxies, "trusted-proxy", nil, "CIDR or address of a reverse proxy whose X-Forwarded-For names the client (repeatable; default: trust none, the source is the TCP peer)")
	f.BoolVar(&o.memory, "memory-storage", false, "keep the stream in memory (tests and benchmarks only: nothing survives a restart)")
	f.StringVar(&o.metricsListen, "metrics-listen", defaultMetricsListen, `operator address for GET /metrics with every series, the reuse detector's included, which the API's /metrics leaves out because they tell a rotated-away secret from an unknown one; keep it private ("": not served)`)
	return cmd
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

// node is a running ledger.
type node struct {
	httpAddr      string
	metricsAddr   string // "" when not served
	natsClientURL string
	bootstrapPath string
	// mirrorJS is JetStream on the services' mirror, as the ledger reaches
	// it (tests play the operator with it).
	mirrorJS jetstream.JetStream
	close    func() error
}

// startLedger brings a ledger up and returns once its views have caught up
// with the stream and the API is listening.
func startLedger(ctx context.Context, o serveOptions, log *slog.Logger) (*node, error) {
	started := time.Now()
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data %s: %w", o.dataDir, err)
	}
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	n := &node{}
	var conns *natsaccess.Conns
	var creds natsaccess.Credentials
	var err error
	if o.natsURL == "" {
		// Fresh credentials each start: the embedded server lives and dies
		// with this process, and services authenticate with their tokens.
		if creds, err = natsaccess.NewCredentials(); err != nil {
			return nil, err
		}
		accounts, err := creds.EmbeddedConfig(o.stream)
		if err != nil {
			return nil, err
		}
		var fsync eventstore.Sync
		if o.natsSync != "" {
			if fsync, err = eventstore.ParseSync(o.natsSync); err != nil {
				return nil, fmt.Errorf("--nats-sync: %w", err)
			}
		}
		var ns *server.Server
		ns, err = eventstore.StartEmbedded(eventstore.EmbeddedConfig{
			StoreDir:   filepath.Join(o.dataDir, "jetstream"),
			Listen:     o.natsListen,
			ServerName: "ledger",
			Config:     accounts,
			Sync:       fsync,
		})
		if err != nil {
			return nil, err
		}
		closers = append(closers, func() { ns.Shutdown(); ns.WaitForShutdown() })
		n.natsClientURL = ns.ClientURL()
		conns, err = natsaccess.Connect("", ns, creds)
	} else {
		if creds, err = natsaccess.LoadCredentials(o.natsCredentials); err != nil {
			return nil, fmt.Errorf("--nats-credentials: %w", err)
		}
		// No reconnect buffer: a command published while the connection is
		// down must fail now, not be stored minutes later after its caller
		// was told 503 (a rotation's secret would then be lost).
		//
		// A server that vanished without closing its sockets (power loss, a
		// partition, a hung process) is noticed by pings: with the default
		// (two missed pings 2 minutes apart) the ledger would wait minutes
		// on a dead connection while the rest of the cluster serves.
		conns, err = natsaccess.Connect(o.natsURL, nil, creds, nats.MaxReconnects(-1), nats.ReconnectBufSize(-1),
			nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	nc := conns.Ledger
	closers = append(closers, conns.Close)
	if n.mirrorJS, err = jetstream.NewWithAPIPrefix(conns.Ledger, natsaccess.ServicesAPIPrefix); err != nil {
		closeAll()
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		closeAll()
		return nil, err
	}
	cfg := eventstore.DefaultConfig()
	cfg.Stream, cfg.Replicas = o.stream, o.replicas
	if o.memory {
		cfg.Storage = jetstream.MemoryStorage
	}
	openCtx, cancelOpen := context.WithTimeout(ctx, 30*time.Second)
	defer cancelOpen()
	store, err := eventstore.Open(openCtx, js, cfg)
	if err == nil && cfg.Replicas > 1 {
		err = waitForStreamLeader(openCtx, js, cfg.Stream)
	}
	if err != nil {
		closeAll()
		return nil, err
	}

	// The view starts from its snapshot under --data when there is a usable
	// one, and replays only the events after it.
	snapshot := filepath.Join(o.dataDir, "snapshots", cfg.Stream+".snap")
	view, err := app.OpenView(openCtx, store, snapshot, o.rebuild, log)
	if err != nil {
		closeAll()
		return nil, err
	}
	saved := view.Sequence()
	// The key that signs audit export manifests is made on first start and
	// kept with the data: an auditor pins its public key once.
	auditKey, err := exporters.LoadOrCreateKey(o.dataDir)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	ledger := app.New(store, view, app.WithAuditKey(auditKey), app.WithReuseLog(log), app.WithConnectionCheck(natsConnected(nc)))
	closers = append(closers, app.Feed(store, view, func(err error) { log.Error("token view", "error", err) }))
	// After the HTTP server stops and before the view stops being fed: the
	// reuse reports still queued are written, and a conflict waits for the
	// view.
	closers = append(closers, func() { _ = ledger.Close() })
	if err := ledger.CatchUp(ctx); err != nil {
		closeAll()
		return nil, fmt.Errorf("catch up with stream %s: %w", cfg.Stream, err)
	}
	log.Info("token view ready", "stream", cfg.Stream, "sequence", view.Sequence(), "ready_ms", time.Since(started).Milliseconds())
	keepCtx, stopKeeping := context.WithCancel(context.Background())
	kept := make(chan uint64, 1)
	go func() {
		if o.snapshotEvery <= 0 {
			kept <- saved
			return
		}
		kept <- app.KeepSnapshots(keepCtx, store, view, snapshot, o.snapshotEvery, saved, log)
	}()
	closers = append(closers, func() {
		stopKeeping()
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := app.SaveView(sctx, store, view, snapshot, <-kept, log); err != nil {
			log.Error("snapshot not saved at shutdown", "error", err)
		}
	})

	// Services log in to NATS with their tokens from here on.
	access, err := natsaccess.Start(openCtx, conns, ledger, creds, natsaccess.Settings{
		Stream: cfg.Stream, SubjectPrefix: cfg.SubjectPrefix, Storage: cfg.Storage, Replicas: cfg.Replicas,
	}, log)
	if err != nil {
		closeAll()
		return nil, err
	}
	closers = append(closers, access.Stop)

	if n.bootstrapPath, err = bootstrap(openCtx, ledger, o, log); err != nil {
		closeAll()
		return nil, err
	}

	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("--http %s: %w", o.httpAddr, err)
	}
	n.httpAddr = ln.Addr().String()
	health := healthOf(nc, store, view, &lagWatch{})
	trusted, err := httpapi.ParseTrustedProxies(strings.Join(o.trustedProxies, ","))
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("--trusted-proxy: %w", err)
	}
	api := httpapi.NewServer(ledger, log, health,
		httpapi.WithFailureLimit(o.authFailureBurst, o.authFailureInterval), httpapi.WithTrustedProxies(trusted))
	// The web console, on the API's address: / redirects to /console/.
	console.Attach(api, ledger, log)
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "error", err)
		}
	}()
	closers = append(closers, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	if o.metricsListen != "" {
		mln, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("--metrics-listen %s: %w", o.metricsListen, err)
		}
		n.metricsAddr = mln.Addr().String()
		msrv := &http.Server{
			Handler:           api.OperatorMetrics(),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		go func() {
			if err := msrv.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("operator metrics server stopped", "error", err)
			}
		}()
		closers = append(closers, func() {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = msrv.Shutdown(sctx)
		})
		log.Info("operator metrics serving", "metrics", "http://"+n.metricsAddr+"/metrics")
	}
	log.Info("ledger serving", "http", n.httpAddr, "nats", n.natsClientURL)
	n.close = func() error { closeAll(); return nil }
	return n, nil
}

// waitForStreamLeader returns once the replicated stream has a leader: one
// just created on a cluster has none for a moment, and an append then finds
// nobody to answer it (the bootstrap token's would fail the start).
func waitForStreamLeader(ctx context.Context, js jetstream.JetStream, name string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		stream, err := js.Stream(ctx, name)
		if err == nil {
			if c := stream.CachedInfo().Cluster; c != nil && c.Leader != "" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stream %s has no leader: %w", name, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// lagWatch tells a view that is briefly behind the stream (events being
// applied) from one that is stuck: it remembers the stream's last sequence when
// the view was first seen behind, and reports only if the view has not reached
// that sequence maxLag later. A view that keeps up under a steady write load
// is always a little behind, and is fine.
type lagWatch struct {
	mu     sync.Mutex
	target uint64    // stream sequence the view must reach; 0: none pending
	since  time.Time // when target was set
}

const maxLag = 5 * time.Second

func (w *lagWatch) check(viewSeq, streamSeq uint64, now time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.target != 0 && viewSeq >= w.target {
		w.target = 0
	}
	if viewSeq >= streamSeq {
		return nil
	}
	if w.target == 0 {
		w.target, w.since = streamSeq, now
		return nil
	}
	if now.Sub(w.since) > maxLag {
		return fmt.Errorf("token view stuck at sequence %d: it has not reached %d within %s (stream at %d)", viewSeq, w.target, maxLag, streamSeq)
	}
	return nil
}

// bootstrap makes the first owner token of an empty ledger and returns the
// path of the file holding its secret. The secret is written (to a .pending
// file, synced) before the token is appended, and renamed into place after.
// The .pending file is removed only when the token certainly was not stored;
// after a crash or an append whose outcome is unknown, the next start keeps it
// if it holds the active bootstrap token of this organization.
func bootstrap(ctx context.Context, ledger *app.Ledger, o serveOptions, log *slog.Logger) (string, error) {
	final := filepath.Join(o.dataDir, "bootstrap-token")
	pending := final + ".pending"
	if b, err := os.ReadFile(pending); err == nil {
		// No request brought this secret: an empty source.
		tok, aerr := ledger.Authenticate(strings.TrimSpace(string(b)), app.Source{})
		_, ferr := os.Stat(final)
		if aerr == nil && os.IsNotExist(ferr) && isBootstrapToken(tok, o.org) {
			if err := renameSynced(pending, final); err != nil {
				return "", err
			}
			log.Info("recovered the bootstrap token saved before a crash", "file", final)
			return final, nil
		}
		_ = os.Remove(pending)
	}
	saved := false
	tok, _, err := ledger.Bootstrap(ctx, o.org, func(s domain.Secret) error {
		if err := writeSecretFile(pending, s.Reveal()); err != nil {
			return err
		}
		saved = true
		return nil
	})
	switch {
	case err != nil && saved:
		// The append may have been stored all the same: keep the secret for
		// the next start to recover.
		return "", fmt.Errorf("%w (its secret is kept in %s until a start can tell)", err, pending)
	case err != nil:
		_ = os.Remove(pending)
		return "", err
	case tok == nil:
		_ = os.Remove(pending) // not an empty ledger, or another ledger won
		return "", nil
	}
	if err := renameSynced(pending, final); err != nil {
		return "", fmt.Errorf("bootstrap token: %w", err)
	}
	log.Info("bootstrap token created", "token_id", tok.ID(), "organization", o.org, "file", final)
	return final, nil
}

func isBootstrapToken(t *domain.Token, org string) bool {
	return t.OrganizationID() == org && t.Name() == "bootstrap" && t.Role() == domain.RoleOrganizationOwner
}

// renameSynced renames and syncs the directory, so the new name survives a
// power loss.
func renameSynced(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return syncDir(filepath.Dir(to))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeSecretFile writes a secret readable by its owner only. The file is
// created with mode 0600 before any byte is written.
func writeSecretFile(path, secret string) error {
	_ = os.Remove(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.WriteString(secret + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}
