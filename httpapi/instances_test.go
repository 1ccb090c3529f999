package httpapi_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/projections"
	"github.com/tokenledger/tokenledger/shared"
)

// instance is one ledger process of several on one NATS server: its own
// connection, view, app.Ledger and API server, as each replica behind a
// load balancer has.
type instance struct {
	t      testing.TB
	js     jetstream.JetStream
	view   *projections.Tokens
	ledger *app.Ledger
	api    *httpapi.Server
	srv    *httptest.Server
	logs   *lockedBuffer
	// lastUsed shares the view's last uses, when the setup starts it.
	lastUsed *shared.LastUsed
}

// instanceSetup says how each instance is built: the ledger's and the API
// server's options, given its own JetStream connection (where it opens
// the shared buckets it uses).
type instanceSetup struct {
	ledgerOpts func(t testing.TB, js jetstream.JetStream) []app.Option
	serverOpts func(t testing.TB, js jetstream.JetStream) []httpapi.ServerOption
	// started runs once the instance's ledger and view are up, before its
	// API serves (to start what follows shared buckets).
	started func(t testing.TB, js jetstream.JetStream, in *instance)
}

// newInstances starts n ledgers on one embedded nats-server and one
// stream, and bootstraps organization acme's owner through the first; it
// returns them and that owner's secret.
func newInstances(t testing.TB, n int, setup instanceSetup) ([]*instance, string) {
	t.Helper()
	ns := eventstoretest.MustServer(t)
	var (
		out   []*instance
		owner string
	)
	for i := range n {
		_, js := eventstoretest.MustConnect(t, ns)
		store, err := eventstore.Open(ctxT(t), js, eventstore.DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		view := projections.NewTokens()
		var opts []app.Option
		if setup.ledgerOpts != nil {
			opts = setup.ledgerOpts(t, js)
		} else {
			_, key, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			opts = []app.Option{app.WithAuditKey(key)}
		}
		ledger := app.New(store, view, opts...)
		t.Cleanup(app.Feed(store, view, nil))
		t.Cleanup(func() { _ = ledger.Close() })
		if i == 0 {
			_, secret, err := ledger.Bootstrap(ctxT(t), "acme", nil)
			if err != nil {
				t.Fatalf("bootstrap: %v", err)
			}
			owner = secret.Reveal()
		}
		if err := ledger.CatchUp(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		in := &instance{t: t, js: js, view: view, ledger: ledger, logs: &lockedBuffer{}}
		if setup.started != nil {
			setup.started(t, js, in)
		}
		var sopts []httpapi.ServerOption
		if setup.serverOpts != nil {
			sopts = setup.serverOpts(t, js)
		}
		in.api = httpapi.NewServer(ledger, slog.New(slog.NewTextHandler(in.logs, nil)), nil, sopts...)
		t.Cleanup(func() { _ = in.api.Close() })
		in.srv = httptest.NewServer(in.api)
		t.Cleanup(in.srv.Close)
		out = append(out, in)
	}
	return out, owner
}

// streamBuckets is the buckets' config for the default stream.
func streamBuckets() shared.Config { return shared.ConfigOf(eventstore.DefaultConfig()) }

// get sends GET path with secret as bearer ("" for none).
func (in *instance) get(path, secret string) (int, http.Header, []byte) {
	in.t.Helper()
	req, err := http.NewRequest(http.MethodGet, in.srv.URL+path, nil)
	if err != nil {
		in.t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		in.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func (in *instance) client(secret string) *httpapi.Client {
	return httpapi.NewClient(in.srv.URL, secret)
}

// syncAll takes the lag between instances out of a step: each one's
// counted failures are in the shared bucket and each has read all of them.
func syncAll(t testing.TB, ins []*instance) {
	t.Helper()
	for range 2 { // writes first, then reads of every write
		for _, in := range ins {
			if err := in.api.SyncFailureLimit(ctxT(t)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
