package httpapi_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/node"
	"github.com/tokenledger/tokenledger/projections"
)

// harness is a whole ledger as `ledger serve` runs it (node.Start: a real
// embedded nats-server, locked down), its API served by httptest, with an
// ORGANIZATION_OWNER token for org "acme".
type harness struct {
	t       testing.TB
	store   *eventstore.Store
	view    *projections.Tokens
	ledger  *app.Ledger
	dir     string             // JetStream's store directory
	key     ed25519.PrivateKey // signs export manifests
	srv     *httptest.Server
	owner   string // secret of acme's bootstrap owner
	ownerID string
	logs    *syncBuffer
	// skew is how far the ledger's clock runs ahead of the real one (see
	// advance).
	skew atomic.Int64
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	h := &harness{t: t, logs: &syncBuffer{}}
	cfg := node.DefaultConfig()
	cfg.DataDir, cfg.HTTPAddr, cfg.NATSListen = t.TempDir(), "", "127.0.0.1:0"
	cfg.Org, cfg.Snapshot = "acme", false
	cfg.AppOptions = []app.Option{app.WithClock(h.now)}
	n, err := node.Start(ctxT(t), cfg, slog.New(slog.NewTextHandler(h.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	secret, err := os.ReadFile(n.BootstrapPath())
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	h.owner = strings.TrimSpace(string(secret))
	tok, err := n.Ledger().Authenticate(h.owner, app.Source{})
	if err != nil {
		t.Fatalf("bootstrap token: %v", err)
	}
	h.store, h.view, h.ledger, h.key, h.ownerID = n.Store(), n.View(), n.Ledger(), n.AuditKey(), tok.ID()
	h.dir = n.NATSServer().JetStreamConfig().StoreDir
	// Stopped before the node (cleanups run last first): no request is
	// in flight while the ledger stops.
	h.srv = httptest.NewServer(n.Handler())
	t.Cleanup(h.srv.Close)
	return h
}

// syncBuffer is a log both the ledger and the test touch.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// Bytes is a copy of what was written.
func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// now is the ledger's clock: the real time, moved on by advance.
func (h *harness) now() time.Time { return time.Now().Add(time.Duration(h.skew.Load())) }

// advance moves the ledger's clock on by d.
func (h *harness) advance(d time.Duration) { h.skew.Add(int64(d)) }

func (h *harness) storeDir() string { return h.dir }

// readAll concatenates every file under dir.
func (h *harness) readAll(dir string) []byte {
	var all []byte
	_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			b, _ := os.ReadFile(p)
			all = append(all, b...)
		}
		return nil
	})
	return all
}

// ownerOf writes an ORGANIZATION_OWNER token for another organization straight
// to the stream (the API cannot: no token acts outside its organization) and
// returns its secret.
func (h *harness) ownerOf(org string) string {
	h.t.Helper()
	_, e, secret, err := domain.Create(domain.CreateToken{OrganizationID: org, Scope: "organization", Name: "owner", Role: "ORGANIZATION_OWNER"},
		domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		h.t.Fatal(err)
	}
	ap, err := h.store.Append(context.Background(), e, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.view.WaitFor(ctxT(h.t), ap.Sequence); err != nil {
		h.t.Fatal(err)
	}
	return secret.Reveal()
}

func (h *harness) client(secret string) *httpapi.Client {
	return httpapi.NewClient(h.srv.URL, secret)
}

func (h *harness) lastSeq() uint64 {
	h.t.Helper()
	seq, err := h.store.LastSequence(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return seq
}

// raw sends a request as-is and returns status, headers and body.
func (h *harness) raw(method, path, secret string, body io.Reader, hdr map[string]string) (int, http.Header, []byte) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func (h *harness) create(req httpapi.CreateRequest) httpapi.Token {
	h.t.Helper()
	tok, err := h.client(h.owner).CreateToken(ctxT(h.t), req, "")
	if err != nil {
		h.t.Fatalf("create %+v: %v", req, err)
	}
	return tok
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func decodeProblem(t testing.TB, b []byte) httpapi.Problem {
	t.Helper()
	var p httpapi.Problem
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("answer is not a problem document: %v: %s", err, b)
	}
	return p
}
