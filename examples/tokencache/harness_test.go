package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess/natsaccesstest"
)

// ledgerRig is a whole ledger as `ledger serve` runs it (natsaccesstest):
// an embedded NATS server with the ledger's accounts, where the service logs
// in with its own TokenLedger token and reads its organization's events from
// the services' mirror, the ledger writing as itself, and the HTTP API on
// httptest.
type ledgerRig struct {
	l       *natsaccesstest.Ledger
	ledger  *app.Ledger
	owner   app.Caller // acme's bootstrap ORGANIZATION_OWNER
	api     *httptest.Server
	natsURL string
	// wrap, if set, stands between the API and its callers (see
	// TestAnAnswerFromBeforeADropIsNotKept).
	wrap atomic.Pointer[func(http.Handler) http.Handler]
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func startLedgerRig(tb testing.TB) *ledgerRig {
	tb.Helper()
	l := natsaccesstest.Start(tb, natsaccesstest.Options{})
	r := &ledgerRig{l: l, ledger: l.App, owner: l.Owner, natsURL: l.URL}
	h := httpapi.NewServer(l.App, quiet, nil)
	r.api = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if wrap := r.wrap.Load(); wrap != nil {
			(*wrap)(h).ServeHTTP(w, req)
			return
		}
		h.ServeHTTP(w, req)
	}))
	tb.Cleanup(r.api.Close)
	return r
}

// create makes a token in acme as its owner and returns its id and secret.
func (r *ledgerRig) create(tb testing.TB, cmd domain.CreateToken) (id, secret string) {
	tb.Helper()
	cmd.OrganizationID = "acme"
	res, err := r.ledger.CreateToken(ctxFor(tb), r.owner, cmd, "")
	if err != nil {
		tb.Fatalf("create %+v: %v", cmd, err)
	}
	return res.Token.ID(), res.Secret.Reveal()
}

// runningService is the example service, subscribed, serving on httptest.
type runningService struct {
	*service
	url string
	// drops gets every Dropped of the cache (its OnDrop hook).
	drops chan Dropped
	// ended is closed when the service's run returned, with runErr.
	ended  chan struct{}
	runErr error
	// mayFail: a test that makes the run fail says so.
	mayFail bool
}

// startService runs the service as main does, with its own token (an
// ORGANIZATION_MEMBER: it may read, so verify, every token of acme, and
// read every event of acme over NATS), and returns once the cache is live.
func startService(tb testing.TB, r *ledgerRig, durable string) *runningService {
	tb.Helper()
	_, secret := r.create(tb, domain.CreateToken{Scope: "organization", Name: "tokencache", Role: "ORGANIZATION_MEMBER"})
	return startServiceWith(tb, r, durable, secret)
}

// startServiceWith runs the service with the token whose secret this is.
func startServiceWith(tb testing.TB, r *ledgerRig, durable, secret string) *runningService {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := newService(ctx, config{
		ledgerURL: r.api.URL, apiToken: secret, natsURL: r.natsURL, durable: durable, maxAge: time.Hour,
	}, quiet)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	rs := &runningService{service: svc, drops: make(chan Dropped, 1024), ended: make(chan struct{})}
	svc.cache.OnDrop = func(d Dropped) { rs.drops <- d }
	go func() {
		rs.runErr = svc.run(ctx)
		close(rs.ended)
	}()
	tb.Cleanup(func() {
		cancel()
		<-rs.ended
		if rs.runErr != nil && !rs.mayFail {
			tb.Errorf("service run: %v", rs.runErr)
		}
	})
	select {
	case <-svc.live:
	case <-rs.ended:
		tb.Fatalf("service stopped before it was live: %v", rs.runErr)
	case <-time.After(20 * time.Second):
		tb.Fatal("service not live after 20 s")
	}
	srv := httptest.NewServer(svc.handler)
	tb.Cleanup(srv.Close)
	rs.url = srv.URL
	return rs
}

// whoami calls the service's API with secret and returns the status and,
// on 200, the token id and role it answered with.
func (s *runningService) whoami(tb testing.TB, secret string) (int, string) {
	tb.Helper()
	code, who, err := s.get(secret)
	if err != nil {
		tb.Fatal(err)
	}
	return code, who
}

func (s *runningService) get(secret string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, s.url+"/v1/whoami", nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var body struct {
		TokenID string `json:"token_id"`
		Role    string `json:"role"`
	}
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, "", nil
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, "", err
	}
	return resp.StatusCode, body.TokenID + " " + body.Role, nil
}

// waitDrop waits for the cache to act on typ for token id.
func (s *runningService) waitDrop(tb testing.TB, id string, typ domain.EventType) Dropped {
	tb.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case d := <-s.drops:
			if d.TokenID == id && d.EventType == typ {
				return d
			}
		case <-deadline:
			tb.Fatalf("no %s of %s reached the cache within 20 s", typ, id)
		}
	}
}

func ctxFor(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}
