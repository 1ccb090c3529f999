// Package natsaccesstest runs a ledger for tests as `ledger serve` runs it by
// default (node.Start): an embedded nats-server (random loopback port,
// temporary store) with the ledger's accounts, the ledger writing as itself,
// the token view fed from the stream, and services logging in with their
// tokens through the ledger's callout. Tests never mock JetStream.
package natsaccesstest

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/node"
	"github.com/tokenledger/tokenledger/projections"
)

// Org is the organization the harness bootstraps.
const Org = "acme"

// Ledger is a running ledger and its NATS server.
type Ledger struct {
	// Node is the ledger; the fields below are its parts, for short.
	Node *node.Node
	NS   *server.Server
	URL  string // for services
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
	// on the first (--nats-url), services on the others (URL is the last
	// one's).
	Cluster int
	// Log gets the ledger's log (nil: none).
	Log *slog.Logger
}

// Start runs a ledger until the test ends. It does not serve HTTP: a test
// that wants the API serves Node.Handler.
func Start(tb testing.TB, o Options) *Ledger {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := node.DefaultConfig()
	cfg.DataDir, cfg.HTTPAddr, cfg.NATSListen = tb.TempDir(), "", "127.0.0.1:0"
	cfg.Org, cfg.Snapshot, cfg.RevokeEvery = Org, false, o.RevokeEvery
	cfg.MemoryStorage = o.Storage == jetstream.MemoryStorage
	var ns, servicesNS *server.Server
	if o.Cluster > 1 {
		creds, err := natsaccess.NewCredentials()
		if err != nil {
			tb.Fatal(err)
		}
		servers := StartCluster(tb, creds, cfg.Stream, make([]int, o.Cluster))
		ns, servicesNS = servers[0], servers[len(servers)-1]
		cfg.NATSURL, cfg.Credentials, cfg.Replicas = ns.ClientURL(), &creds, min(o.Cluster, 3)
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	// Until the cluster has a JetStream leader the stream cannot be made:
	// the node waits, as `ledger serve` on a fresh cluster.
	n, err := node.Start(ctx, cfg, log)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = n.Close() })
	var owner *domain.Token
	var secret string
	if o.Cluster > 1 {
		// As `ledger bootstrap` does before the first `ledger serve
		// --nats-url`: stream sequence 1.
		tok, s, err := n.Ledger().Bootstrap(ctx, Org, nil)
		if err != nil || tok == nil {
			tb.Fatalf("bootstrap: %v", err)
		}
		owner, secret = tok, s.Reveal()
	} else {
		// The embedded server's first start made it: stream sequence 1.
		ns = n.NATSServer()
		servicesNS = ns
		b, err := os.ReadFile(n.BootstrapPath())
		if err != nil {
			tb.Fatalf("bootstrap: %v", err)
		}
		secret = strings.TrimSpace(string(b))
		if owner, err = n.Ledger().Authenticate(secret, app.Source{}); err != nil {
			tb.Fatalf("bootstrap token: %v", err)
		}
	}
	return &Ledger{Node: n, NS: ns, URL: servicesNS.ClientURL(), Conns: n.Conns(), LedgerJS: n.JetStream(), Store: n.Store(), View: n.View(), App: n.Ledger(),
		Owner:       app.Caller{Token: owner, RequestID: "test-request", SourceIP: "127.0.0.1", UserAgent: "natsaccesstest"},
		OwnerSecret: secret}
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
