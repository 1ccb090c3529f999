// Package natsaccesstest runs a ledger for tests as `ledger serve` runs it by
// default: an embedded nats-server (random loopback port, temporary store)
// with the ledger's accounts, the ledger writing as itself, the token view
// fed from the stream, and services logging in with their tokens through
// the ledger's callout. Tests never mock JetStream.
package natsaccesstest

import (
	"context"
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
	accounts, err := creds.EmbeddedConfig(cfg.Stream)
	if err != nil {
		tb.Fatal(err)
	}
	ns, err := eventstore.StartEmbedded(eventstore.EmbeddedConfig{StoreDir: tb.TempDir(), Listen: "127.0.0.1:0", ServerName: "ledger", Config: accounts})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	conns, err := natsaccess.Connect("", ns, creds)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(conns.Close)
	js, err := jetstream.New(conns.Ledger)
	if err != nil {
		tb.Fatal(err)
	}
	store, err := eventstore.Open(ctx, js, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	view := projections.NewTokens()
	l := app.New(store, view)
	tb.Cleanup(func() { _ = l.Close() })
	tb.Cleanup(app.Feed(store, view, nil))
	access, err := natsaccess.Start(ctx, conns, l, creds, natsaccess.Settings{
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
	return &Ledger{NS: ns, URL: ns.ClientURL(), Conns: conns, LedgerJS: js, Store: store, View: view, App: l,
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
