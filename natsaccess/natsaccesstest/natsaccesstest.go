// Package natsaccesstest runs a ledger for tests as `ledger serve` runs it by
// default: an embedded nats-server (random loopback port, temporary store)
// with the ledger's accounts, the ledger writing as itself, the token view
// fed from the stream, and services logging in with their tokens through
// the ledger's callout. Tests never mock JetStream.
package natsaccesstest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/projections"
)

// Org is the organization the harness bootstraps.
const Org = "acme"

// Ledger is a running ledger and its NATS server.
type Ledger struct {
	NS  *server.Server
	URL string // for services
	// Conns are the ledger's own connections; LedgerJS is JetStream on the
	// first, for raw writes a test plays an attacker or a bug with.
	Conns    *natsaccess.Conns
	LedgerJS jetstream.JetStream
	Store    *eventstore.Store
	View     *projections.Tokens
	App      *app.Ledger
	// Owner is the bootstrap ORGANIZATION_OWNER of Org, and OwnerSecret its
	// secret.
	Owner       app.Caller
	OwnerSecret string
}

// Options change the harness.
type Options struct {
	// RevokeEvery is the revoker's interval (zero: the default).
	RevokeEvery time.Duration
	// Storage of the stream and the mirror (zero: file).
	Storage jetstream.StorageType
	// Cluster, when above 1, runs that many servers in one cluster (the
	// stream and mirror replicated on all of them, at most 3): the ledger
	// on the first, services on the others (URL is the last one's).
	Cluster int
	// Log gets the callout's and the revoker's log (nil: none).
	Log *slog.Logger
}

// Start runs a ledger until the test ends.
func Start(tb testing.TB, o Options) *Ledger {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := eventstore.DefaultConfig()
	cfg.Storage = o.Storage
	creds, err := natsaccess.NewCredentials()
	if err != nil {
		tb.Fatal(err)
	}
	config := creds.EmbeddedConfig
	if o.Cluster > 1 {
		config = creds.ServerConfig // as `ledger nats setup` writes it
	}
	accounts, err := config(cfg.Stream)
	if err != nil {
		tb.Fatal(err)
	}
	var ns, servicesNS *server.Server
	var conns *natsaccess.Conns
	if o.Cluster > 1 {
		routes, err := creds.RoutesConfig()
		if err != nil {
			tb.Fatal(err)
		}
		servers := startCluster(tb, o.Cluster, accounts, routes, natsaccess.RouteUser, creds.RoutePassword)
		ns, servicesNS = servers[0], servers[len(servers)-1]
		cfg.Replicas = min(o.Cluster, 3)
		// Until the cluster has a JetStream leader the stream cannot be
		// made: the ledger retries, as `ledger serve` on a fresh cluster.
		conns, err = natsaccess.Connect(ns.ClientURL(), nil, creds)
		if err != nil {
			tb.Fatal(err)
		}
	} else {
		ns, err = eventstore.StartEmbedded(eventstore.EmbeddedConfig{StoreDir: tb.TempDir(), Listen: "127.0.0.1:0", ServerName: "ledger", Config: accounts})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		servicesNS = ns
		if conns, err = natsaccess.Connect("", ns, creds); err != nil {
			tb.Fatal(err)
		}
	}
	tb.Cleanup(conns.Close)
	js, err := jetstream.New(conns.Ledger)
	if err != nil {
		tb.Fatal(err)
	}
	open := func() (*eventstore.Store, error) {
		if o.Cluster <= 1 {
			return eventstore.Open(ctx, js, cfg)
		}
		// Each try briefly: a request sent before the cluster had a
		// JetStream leader is never answered.
		try, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		return eventstore.Open(try, js, cfg)
	}
	store, err := open()
	for err != nil && o.Cluster > 1 && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
		store, err = open()
	}
	if err != nil {
		tb.Fatal(err)
	}
	if o.Cluster > 1 {
		waitForLeader(tb, ctx, js, cfg.Stream)
	}
	view := projections.NewTokens()
	_, auditKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	l := app.New(store, view, app.WithAuditKey(auditKey))
	tb.Cleanup(func() { _ = l.Close() })
	tb.Cleanup(app.Feed(store, view, nil))
	var access *natsaccess.Access
	access, err = natsaccess.Start(ctx, conns, l, creds, natsaccess.Settings{
		Stream: cfg.Stream, SubjectPrefix: cfg.SubjectPrefix, Storage: cfg.Storage, Replicas: cfg.Replicas, RevokeEvery: o.RevokeEvery,
	}, o.Log)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(access.Stop)
	owner, secret, err := l.Bootstrap(ctx, Org, nil) // stream sequence 1
	if err != nil || owner == nil {
		tb.Fatalf("bootstrap: %v", err)
	}
	return &Ledger{NS: ns, URL: servicesNS.ClientURL(), Conns: conns, LedgerJS: js, Store: store, View: view, App: l,
		Owner:       app.Caller{Token: owner, RequestID: "test-request", SourceIP: "127.0.0.1", UserAgent: "natsaccesstest"},
		OwnerSecret: secret.Reveal()}
}

// Token creates a token through the ledger as the owner and returns it and
// its secret. cmd.Scope and cmd.Name are required, as for any create.
func (l *Ledger) Token(tb testing.TB, cmd domain.CreateToken) (*domain.Token, string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := l.App.CreateToken(ctx, l.Owner, cmd, "")
	if err != nil {
		tb.Fatalf("create token: %v", err)
	}
	return res.Token, res.Secret.Reveal()
}

// Service connects to the ledger's NATS as a service with secret (nil
// options: none beyond natsaccess.Options), closed when the test ends.
func (l *Ledger) Service(tb testing.TB, secret string, opts ...nats.Option) (*nats.Conn, error) {
	tb.Helper()
	nc, err := nats.Connect(l.URL, append(natsaccess.Options(secret), opts...)...)
	if err != nil {
		return nil, err
	}
	tb.Cleanup(nc.Close)
	return nc, nil
}

func waitForLeader(tb testing.TB, ctx context.Context, js jetstream.JetStream, name string) {
	tb.Helper()
	for ctx.Err() == nil {
		if s, err := js.Stream(ctx, name); err == nil {
			if c := s.CachedInfo().Cluster; c != nil && c.Leader != "" {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("stream %s has no leader", name)
}
