// Command tokencache is an example service that checks the bearer tokens of
// its own API against a TokenLedger, keeps the ledger's answers in memory,
// and forgets a token's answers the moment the ledger's event stream says it
// was rotated, deleted or changed.
//
//	LEDGER_URL=http://127.0.0.1:8080 LEDGER_API_TOKEN=... \
//	  go run ./examples/tokencache --listen 127.0.0.1:8090 --nats-url nats://127.0.0.1:4222
//
// Its own token, LEDGER_API_TOKEN, an organization token (an
// ORGANIZATION_MEMBER is enough), serves both sides: it asks the ledger's
// API to verify secrets, and it logs in to the ledger's NATS to read its
// organization's events.
//
// Its API: GET /v1/whoami (needs a bearer token) and GET /stats (the cache's
// counters). See the README, "Example: a service's token cache".
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/subscriber"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tokencache:", err)
		os.Exit(1)
	}
}

type config struct {
	ledgerURL string
	apiToken  string
	natsURL   string
	durable   string
	listen    string
	maxAge    time.Duration
}

func parseConfig(args []string, getenv func(string) string) (config, error) {
	c := config{ledgerURL: getenv("LEDGER_URL"), apiToken: strings.TrimSpace(getenv("LEDGER_API_TOKEN")), natsURL: getenv("LEDGER_NATS_URL")}
	if c.ledgerURL == "" {
		c.ledgerURL = "http://127.0.0.1:8080"
	}
	if c.natsURL == "" {
		c.natsURL = "nats://127.0.0.1:4222"
	}
	fs := flag.NewFlagSet("tokencache", flag.ContinueOnError)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8090", "address of this service's API")
	fs.StringVar(&c.natsURL, "nats-url", c.natsURL, "the ledger's NATS (default: LEDGER_NATS_URL, else nats://127.0.0.1:4222)")
	fs.StringVar(&c.durable, "durable", defaultDurable(), "durable consumer name, kept among the token's consumers (8 at most); copies sharing a token need one each, or they split the events between them")
	fs.DurationVar(&c.maxAge, "max-age", time.Minute, "keep an answer at most this long even without an event (a token's expiry has none)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.apiToken == "" {
		return c, errors.New("LEDGER_API_TOKEN is not set: give this service a token of its own (see the README)")
	}
	if c.maxAge <= 0 {
		return c, errors.New("--max-age must be positive")
	}
	return c, nil
}

// defaultDurable is one name per host, so that two copies on two hosts each
// get every event.
func defaultDurable() string {
	h, _ := os.Hostname()
	h = regexp.MustCompile(`[^A-Za-z0-9_-]+`).ReplaceAllString(h, "-")
	if h == "" {
		h = "local"
	}
	return "tokencache-" + h
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	svc, err := newService(ctx, cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: svc.handler, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("tokencache serving", "http", ln.Addr().String(), "ledger", cfg.ledgerURL, "nats", cfg.natsURL, "durable", cfg.durable)

	err = svc.run(ctx)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return err
}

// service is the cache, its subscription and its API.
type service struct {
	cache   *Cache
	sub     *subscriber.Subscriber
	handler http.Handler
	// live is closed once the subscription runs and the cache serves.
	live chan struct{}
}

func newService(ctx context.Context, cfg config, log *slog.Logger) (*service, error) {
	ledger := httpapi.NewClient(cfg.ledgerURL, cfg.apiToken)
	ledger.UserAgent = "tokencache"
	ledger.HTTP.Timeout = 10 * time.Second
	// Asking about its own token checks the setup at once and says what
	// the token may read.
	me, err := ledger.Verify(ctx, cfg.apiToken)
	if err != nil {
		return nil, fmt.Errorf("ledger at %s: %w", cfg.ledgerURL, err)
	}
	if !me.Valid {
		return nil, fmt.Errorf("LEDGER_API_TOKEN is not an active token (%s)", me.Reason)
	}
	if me.Scope != domain.ScopeOrganization {
		// Over NATS a workspace or deployment token reads only its own
		// token's events: the cache would miss the rotations of the very
		// tokens it verifies.
		return nil, fmt.Errorf("LEDGER_API_TOKEN is a %s token: the service needs an organization token (an ORGANIZATION_MEMBER is enough), which reads every event of its organization", me.Scope)
	}
	cache := NewCache(ledger, cfg.maxAge, log)
	// The same token logs in to NATS, and reads its organization's events.
	sub, err := subscriber.New(subscriber.Config{
		URL:            cfg.natsURL,
		Token:          cfg.apiToken,
		Durable:        cfg.durable,
		Start:          subscriber.StartNew(),
		OrganizationID: me.OrganizationID,
		NATSOptions: []nats.Option{
			nats.Name("tokencache"),
			// While NATS is away events may be missed for a while:
			// serve from the ledger alone until it is back.
			nats.DisconnectErrHandler(func(*nats.Conn, error) { cache.SetLive(false) }),
			nats.ReconnectHandler(func(*nats.Conn) { cache.SetLive(true) }),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe at %s: %w", cfg.natsURL, err)
	}
	cache.Subscribe(sub)

	mux := http.NewServeMux()
	mux.Handle("GET /v1/whoami", cache.Require(http.HandlerFunc(whoami)))
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, cache.Stats())
	})
	return &service{cache: cache, sub: sub, handler: mux, live: make(chan struct{})}, nil
}

// run follows the events until ctx ends; the cache serves only meanwhile.
func (s *service) run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.sub.Run(ctx) }()
	go func() {
		// The cache's handlers never fail, so only an event that cannot be
		// read is parked: say so, and keep the queue from filling (a full
		// one would stall the subscription).
		for m := range s.sub.Poisoned() {
			s.cache.log.Error("token event parked unread", "event_id", m.UUID, "reason", m.Metadata.Get("reason_poisoned"))
		}
	}()
	select {
	case <-s.sub.Running():
		s.cache.SetLive(true)
		close(s.live)
	case err := <-done:
		return fmt.Errorf("subscription: %w", err)
	}
	err := <-done
	s.cache.SetLive(false)
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("subscription: %w", err)
	}
	return nil
}

// whoami is this service's own API: it only says who the caller is.
func whoami(w http.ResponseWriter, r *http.Request) {
	v, _ := Verified(r.Context())
	writeJSON(w, struct {
		TokenID        string            `json:"token_id"`
		OrganizationID string            `json:"organization_id"`
		Scope          string            `json:"scope"`
		Role           string            `json:"role"`
		WorkspaceID    string            `json:"workspace_id,omitempty"`
		DeploymentID   string            `json:"deployment_id,omitempty"`
		WorkspaceRoles map[string]string `json:"workspace_roles,omitempty"`
	}{v.ID, v.OrganizationID, string(v.Scope), string(v.Role), v.WorkspaceID, v.DeploymentID, v.WorkspaceRoles})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
