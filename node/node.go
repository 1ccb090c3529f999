// Package node owns starting and stopping one ledger: NATS (an embedded
// server, or a server or cluster of yours), the stream, the token view and
// its snapshot, app.Ledger, natsaccess (the services' mirror, the callout
// that lets services in, the revoker), the HTTP API with the web console,
// and the operator's metrics. `ledger serve`, the benchmark and the tests'
// harnesses all start a ledger here, so they run the ledger users run, and
// Close stops it in the one order that loses nothing (see Close).
package node

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/console"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/projections"
	"github.com/tokenledger/tokenledger/shared"
)

// ErrDataDirInUse: another ledger holds the data directory.
var ErrDataDirInUse = errors.New("the data directory is in use by another ledger")

// lockFile is the data directory's lock (lockDataDir).
const lockFile = "LOCK"

// Node is a running ledger.
type Node struct {
	cfg Config
	log *slog.Logger

	ns            *server.Server // the embedded server; nil with Config.NATSURL
	natsClientURL string
	conns         *natsaccess.Conns
	js, mirrorJS  jetstream.JetStream
	store         *eventstore.Store
	view          *projections.Tokens
	auditKey      ed25519.PrivateKey
	// The buckets the API and the console share with every other ledger.
	failuresKV, sessionsKV jetstream.KeyValue
	ledger                 *app.Ledger
	api                    *httpapi.Server
	httpAddr               string
	metricsAddr            string
	bootstrapPath          string

	// closers undo the start, last first (Close).
	closers   []func() error
	closeOnce sync.Once
	closeErr  error
}

// Start brings a ledger up and returns once its view has caught up with the
// stream and the API is listening (Config.HTTPAddr). It waits for NATS, for
// JetStream and for the stream's leader for as long as ctx lets it, logging
// each try; whatever it started before failing is stopped again. After it
// returns, ctx no longer matters: Close stops the ledger.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Node, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: log}
	if err := n.start(ctx); err != nil {
		_ = n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	started := time.Now()
	cfg, log := n.cfg, n.log
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory %s: %w", cfg.DataDir, err)
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	n.closers = append(n.closers, unlock)

	var creds natsaccess.Credentials
	if cfg.NATSURL == "" {
		if creds, err = n.startEmbedded(); err != nil {
			return err
		}
	} else {
		creds = *cfg.Credentials
	}
	if n.conns, err = connect(ctx, cfg, n.ns, creds, log); err != nil {
		return err
	}
	n.closers = append(n.closers, func() error { n.conns.Close(); return nil })
	if n.js, err = jetstream.New(n.conns.Ledger); err != nil {
		return err
	}
	if n.mirrorJS, err = jetstream.NewWithAPIPrefix(n.conns.Ledger, natsaccess.ServicesAPIPrefix); err != nil {
		return err
	}
	if n.store, err = openStream(ctx, n.js, cfg, log); err != nil {
		return err
	}
	sc := n.store.Config()

	// The view starts from its snapshot under DataDir when there is a usable
	// one, and replays only the events after it.
	snapshot := filepath.Join(cfg.DataDir, "snapshots", sc.Stream+".snap")
	if err := waitFor(ctx, log, "the token view's snapshot checked against stream "+sc.Stream, func(ctx context.Context) error {
		if !cfg.Snapshot {
			n.view = projections.NewTokens()
			return nil
		}
		n.view, err = app.OpenView(ctx, n.store, snapshot, cfg.Rebuild, log)
		return err
	}); err != nil {
		return err
	}
	saved := n.view.Sequence()
	// One key signs every ledger's export manifests: the operator's file,
	// or the stream's, kept beside it (see exporters.SharedKey): an auditor
	// pins its public key once, whichever ledger made the export.
	shareCfg := shared.ConfigOf(sc)
	if cfg.AuditKeyFile != "" {
		if n.auditKey, err = exporters.LoadKeyFile(cfg.AuditKeyFile); err != nil {
			return fmt.Errorf("audit signing key: %w", err)
		}
	} else if err := waitFor(ctx, log, "the audit signing key of stream "+sc.Stream, func(ctx context.Context) error {
		kv, err := exporters.KeyBucket(ctx, n.js, shareCfg)
		if err == nil {
			n.auditKey, err = exporters.SharedKey(ctx, kv, cfg.DataDir, log)
		}
		return err
	}); err != nil {
		return fmt.Errorf("audit signing key: %w", err)
	}
	opts := append([]app.Option{
		app.WithAuditKey(n.auditKey), app.WithReuseLog(log), app.WithConnectionCheck(natsConnected(n.conns.Ledger)),
		app.WithMaxStaleness(cfg.MaxStaleness),
	}, cfg.AppOptions...)
	n.ledger = app.New(n.store, n.view, opts...)
	n.closers = append(n.closers, closer(app.Feed(n.store, n.view, func(err error) { log.Error("token view", "error", err) })))
	// After the HTTP server stops and before the view stops being fed: the
	// reuse reports still queued are written, and a conflict waits for the
	// view.
	n.closers = append(n.closers, n.ledger.Close)

	// The whole stream may take a while to replay: only asking how far it
	// reaches is bounded by a try.
	var last uint64
	if err := waitFor(ctx, log, "the last sequence of stream "+sc.Stream, func(ctx context.Context) error {
		last, err = n.store.LastSequence(ctx)
		return err
	}); err != nil {
		return err
	}
	if err := n.view.WaitFor(ctx, last); err != nil {
		return fmt.Errorf("catch up with stream %s: %w", sc.Stream, err)
	}
	log.Info("token view ready", "stream", sc.Stream, "sequence", n.view.Sequence(), "ready_ms", time.Since(started).Milliseconds())
	if cfg.Snapshot {
		n.keepSnapshots(snapshot, saved)
	}
	// Every ledger shows the same last use (see shared.ShareLastUsed);
	// stopped before the snapshot is saved at Close, so it holds them.
	var lastUsedKV jetstream.KeyValue
	if err := waitFor(ctx, log, "the last-use bucket of stream "+sc.Stream, func(ctx context.Context) error {
		lastUsedKV, err = shared.LastUsedBucket(ctx, n.js, shareCfg)
		return err
	}); err != nil {
		return err
	}
	lastUsed := shared.ShareLastUsed(lastUsedKV, n.view, log)
	n.closers = append(n.closers, func() error { lastUsed.Close(); return nil })
	// The failed-authentication budget and console sessions are every
	// ledger's too.
	if err := waitFor(ctx, log, "the failed-authentication and session buckets of stream "+sc.Stream, func(ctx context.Context) error {
		if n.failuresKV, err = httpapi.FailureBucket(ctx, n.js, shareCfg, cfg.AuthFailureBurst, cfg.AuthFailureInterval); err != nil {
			return err
		}
		if !cfg.LocalSessions {
			n.sessionsKV, err = console.SessionBucket(ctx, n.js, shareCfg, console.DefaultIdle, console.DefaultAbsolute)
		}
		return err
	}); err != nil {
		return err
	}

	// Services log in to NATS with their tokens from here on.
	var access *natsaccess.Access
	if err := waitFor(ctx, log, "the services' mirror of stream "+sc.Stream, func(ctx context.Context) error {
		access, err = natsaccess.Start(ctx, n.conns, n.ledger, creds, natsaccess.Settings{
			Stream: sc.Stream, SubjectPrefix: sc.SubjectPrefix, Storage: sc.Storage, Replicas: sc.Replicas, RevokeEvery: cfg.RevokeEvery,
		}, log)
		return err
	}); err != nil {
		return err
	}
	n.closers = append(n.closers, func() error { access.Stop(); return nil })

	if cfg.NATSURL == "" {
		if n.bootstrapPath, err = bootstrapFile(ctx, n.ledger, cfg.Org, filepath.Join(cfg.DataDir, bootstrapFileName), log); err != nil {
			return err
		}
	} else if last == 0 {
		log.Warn("stream "+sc.Stream+" is empty: no token exists yet, so nobody can sign in. With --nats-url no ledger makes the first one: "+
			"run `ledger bootstrap --nats-url ... --nats-credentials ... --out FILE` once, from anywhere, to create the first ORGANIZATION_OWNER token",
			"stream", sc.Stream)
	}

	n.api = n.newAPI()
	if cfg.HTTPAddr != "" {
		if n.httpAddr, err = n.serve("API", cfg.HTTPAddr, n.api, 30*time.Second, 60*time.Second, 64<<10); err != nil {
			return fmt.Errorf("HTTP address %s: %w", cfg.HTTPAddr, err)
		}
	}
	if cfg.MetricsListen != "" {
		if n.metricsAddr, err = n.serve("operator metrics", cfg.MetricsListen, n.api.OperatorMetrics(), 10*time.Second, 10*time.Second, 16<<10); err != nil {
			return fmt.Errorf("metrics address %s: %w", cfg.MetricsListen, err)
		}
		log.Info("operator metrics serving", "metrics", "http://"+n.metricsAddr+"/metrics")
	}
	log.Info("ledger serving", "http", n.httpAddr, "nats", n.natsClientURL)
	return nil
}

// startEmbedded runs the embedded NATS server with credentials made fresh for
// this start: the server lives and dies with this process, and services
// authenticate with their tokens.
func (n *Node) startEmbedded() (natsaccess.Credentials, error) {
	creds, err := natsaccess.NewCredentials()
	if err != nil {
		return creds, err
	}
	accounts, err := creds.EmbeddedConfig(n.cfg.Stream)
	if err != nil {
		return creds, err
	}
	ns, err := eventstore.StartEmbedded(eventstore.EmbeddedConfig{
		StoreDir:   filepath.Join(n.cfg.DataDir, "jetstream"),
		Listen:     n.cfg.NATSListen,
		ServerName: "ledger",
		Config:     accounts,
		Sync:       n.cfg.NATSSync,
	})
	if err != nil {
		return creds, err
	}
	n.ns = ns
	n.closers = append(n.closers, func() error { ns.Shutdown(); ns.WaitForShutdown(); return nil })
	if n.cfg.NATSListen != "" {
		n.natsClientURL = ns.ClientURL()
	}
	return creds, nil
}

// connect logs the ledger in to NATS, waiting for a server to answer.
func connect(ctx context.Context, cfg Config, ns *server.Server, creds natsaccess.Credentials, log *slog.Logger) (*natsaccess.Conns, error) {
	if ns != nil {
		// In-process: there is nothing to wait for.
		return natsaccess.Connect("", ns, creds)
	}
	var conns *natsaccess.Conns
	err := waitFor(ctx, log, "a NATS server of "+redactURLs(cfg.NATSURL), func(context.Context) error {
		// No reconnect buffer: a command published while the connection is
		// down must fail now, not be stored minutes later after its caller
		// was told 503 (a rotation's secret would then be lost).
		//
		// A server that vanished without closing its sockets (power loss, a
		// partition, a hung process) is noticed by pings: with the default
		// (two missed pings 2 minutes apart) the ledger would wait minutes
		// on a dead connection while the rest of the cluster serves.
		//
		// And a write to a server that stopped reading (a partition that
		// drops packets) must not hold the connection for nats.go's default
		// minute: the connection's lock is held meanwhile, and everything
		// that touches the connection waits with it.
		var err error
		conns, err = natsaccess.Connect(cfg.NATSURL, nil, creds, nats.MaxReconnects(-1), nats.ReconnectBufSize(-1),
			nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2), nats.FlusherTimeout(2*time.Second))
		return err
	})
	return conns, err
}

// openStream opens (on an empty server or cluster: creates) the stream,
// waiting for JetStream and for the stream's leader.
func openStream(ctx context.Context, js jetstream.JetStream, cfg Config, log *slog.Logger) (*eventstore.Store, error) {
	sc := cfg.streamConfig()
	var store *eventstore.Store
	err := waitFor(ctx, log, "stream "+sc.Stream+" and its leader", func(ctx context.Context) error {
		var err error
		store, err = eventstore.Open(ctx, js, sc)
		return err
	})
	return store, err
}

// keepSnapshots saves the view every SnapshotEvery while it changes, and at
// Close.
func (n *Node) keepSnapshots(path string, saved uint64) {
	keepCtx, stopKeeping := context.WithCancel(context.Background())
	kept := make(chan uint64, 1)
	go func() {
		if n.cfg.SnapshotEvery <= 0 {
			kept <- saved
			return
		}
		kept <- app.KeepSnapshots(keepCtx, n.store, n.view, path, n.cfg.SnapshotEvery, saved, n.log)
	}()
	n.closers = append(n.closers, func() error {
		stopKeeping()
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := app.SaveView(sctx, n.store, n.view, path, <-kept, n.log); err != nil {
			n.log.Error("snapshot not saved at shutdown", "error", err)
			return fmt.Errorf("snapshot not saved: %w", err)
		}
		return nil
	})
}

// newAPI is the HTTP API with the web console on it (/ redirects to
// /console/). /readyz checks NATS, the stream and the view when asked;
// /healthz answers at once from the latest check (monitor).
func (n *Node) newAPI() *httpapi.Server {
	m := newMonitor(healthOf(n.conns.Ledger, n.store, n.view, &lagWatch{}, n.ledger.Staleness))
	// While NATS has just answered: liveness has something to report from
	// its first probe on.
	checkCtx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	m.ready(checkCtx)
	cancel()
	opts := append([]httpapi.ServerOption{
		httpapi.WithFailureLimit(n.cfg.AuthFailureBurst, n.cfg.AuthFailureInterval),
		httpapi.WithSharedFailureLimit(n.failuresKV),
		httpapi.WithTrustedProxies(n.cfg.TrustedProxies),
		httpapi.WithLiveness(m.live),
	}, n.cfg.ServerOptions...)
	api := httpapi.NewServer(n.ledger, n.log, m.ready, opts...)
	// After the HTTP servers stop (closers run last first): the failures
	// still queued are written to the shared budget.
	n.closers = append(n.closers, api.Close)
	var copts []console.Option
	if n.sessionsKV != nil {
		copts = append(copts, console.WithSharedSessions(n.sessionsKV))
	}
	console.Attach(api, n.ledger, n.log, append(copts, n.cfg.ConsoleOptions...)...)
	return api
}

// serve serves h on addr until Close, and returns the address it listens on.
func (n *Node) serve(what, addr string, h http.Handler, readTimeout, writeTimeout time.Duration, maxHeader int) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		MaxHeaderBytes:    maxHeader,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error(what+" server stopped", "error", err)
		}
	}()
	n.closers = append(n.closers, func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			return fmt.Errorf("%s server shutdown: %w", what, err)
		}
		return nil
	})
	return ln.Addr().String(), nil
}

// Close stops the ledger, last started first: the HTTP servers (requests in
// flight finish, for up to 10 s), the services' access, the view's snapshot
// (saved), the ledger (the reuse reports still queued are written, for at
// most 5 s, while the view is still fed: a conflict waits for the view),
// the view's feed, the NATS connections, the embedded server, and last the
// data directory's lock. It returns what failed; calling it again returns
// the same.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		for i := len(n.closers) - 1; i >= 0; i-- {
			if err := n.closers[i](); err != nil {
				errs = append(errs, err)
			}
		}
		n.closers = nil
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

func closer(stop func()) func() error { return func() error { stop(); return nil } }

// HTTPAddr is the API's address ("" when Config.HTTPAddr was empty).
func (n *Node) HTTPAddr() string { return n.httpAddr }

// Handler is the API with the web console, as HTTPAddr serves it.
func (n *Node) Handler() http.Handler { return n.api }

// MetricsAddr is the operator's metrics address ("" when not served).
func (n *Node) MetricsAddr() string { return n.metricsAddr }

// NATSClientURL is where services reach the embedded server ("" with
// Config.NATSURL, or an embedded server not listening).
func (n *Node) NATSClientURL() string { return n.natsClientURL }

// NATSServer is the embedded server (nil with Config.NATSURL).
func (n *Node) NATSServer() *server.Server { return n.ns }

// Conns are the ledger's own NATS connections.
func (n *Node) Conns() *natsaccess.Conns { return n.conns }

// JetStream is JetStream as the ledger reaches it (its own account).
func (n *Node) JetStream() jetstream.JetStream { return n.js }

// MirrorJetStream is JetStream on the services' mirror, as the ledger
// reaches it (tests play the operator with it).
func (n *Node) MirrorJetStream() jetstream.JetStream { return n.mirrorJS }

// Store is the event store.
func (n *Node) Store() *eventstore.Store { return n.store }

// View is the token view.
func (n *Node) View() *projections.Tokens { return n.view }

// Ledger is the ledger's commands and queries.
func (n *Node) Ledger() *app.Ledger { return n.ledger }

// AuditKey is the key that signs audit export manifests (kept in DataDir).
func (n *Node) AuditKey() ed25519.PrivateKey { return n.auditKey }

// BootstrapPath is the file this start wrote the bootstrap token's secret to,
// or found it in after a crash ("" when the stream already had events, or
// with Config.NATSURL).
func (n *Node) BootstrapPath() string { return n.bootstrapPath }

// redactURLs hides any password written into NATS URLs, for logs.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			scheme := ""
			if s := strings.Index(p, "://"); s >= 0 && s < at {
				scheme = p[:s+3]
			}
			parts[i] = scheme + "[credentials]" + p[at:]
		}
	}
	return strings.Join(parts, ",")
}

// SessionsBucket is the console sessions' shared bucket (nil with
// LocalSessions).
func (n *Node) SessionsBucket() jetstream.KeyValue { return n.sessionsKV }
