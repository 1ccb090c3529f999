package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
)

// TestWithNATSDownCommandsAre503AndTheLedgerRecoversByItself stops the NATS
// server under a running ledger (--nats-url) and starts it again on the same
// port and store: meanwhile /readyz says NATS is down, /healthz stays up and
// says so too, commands are refused at once with a 503 that says why and
// store nothing, and reads answered from the view still work; once NATS is
// back the ledger is ready again by itself and commands succeed and show in
// its view.
func TestWithNATSDownCommandsAre503AndTheLedgerRecoversByItself(t *testing.T) {
	natsAddr := freeAddr(t)
	natsDir := t.TempDir()
	// "Your" NATS server, set up for the ledger as `ledger nats setup`
	// does: its accounts, and the credentials file the ledger reads.
	accounts, credsFile := lockedNATS(t)
	var ns *server.Server
	startNATS := func() {
		t.Helper()
		var err error
		ns, err = eventstore.StartEmbedded(eventstore.EmbeddedConfig{StoreDir: natsDir, Listen: natsAddr, Config: accounts})
		if err != nil {
			t.Fatal(err)
		}
	}
	stopNATS := func() {
		ns.Shutdown()
		ns.WaitForShutdown()
		ns = nil
	}
	startNATS()
	t.Cleanup(func() {
		if ns != nil {
			stopNATS()
		}
	})

	owner := bootstrapVia(t, "nats://"+natsAddr, credsFile)
	dir := t.TempDir()
	var logs syncBuffer
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: dir, httpAddr: "127.0.0.1:0", natsURL: "nats://" + natsAddr, natsCredentials: credsFile, org: "acme", stream: "TOKENS", replicas: 1,
	}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	base := "http://" + n.HTTPAddr()
	c := httpapi.NewClient(base, owner)
	ctx := context.Background()

	tok, err := c.CreateToken(ctx, httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "survivor"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if status, h := health(t, base+"/readyz"); status != http.StatusOK || h.Status != "ok" || h.Components["nats"] != "ok" || h.Components["stream"] != "ok" || h.Components["view"] != "ok" {
		t.Fatalf("/readyz with everything up: %d %+v", status, h)
	}

	stopNATS()
	waitUntil(t, 10*time.Second, "/readyz to say NATS is down", func() (bool, string) {
		status, h := health(t, base+"/readyz")
		return status == http.StatusServiceUnavailable && h.Status == "unavailable" && strings.HasPrefix(h.Components["nats"], "down: ") &&
			strings.HasPrefix(h.Components["stream"], "down: ") && strings.Contains(h.Detail, "nats down"), fmt.Sprintf("%d %+v", status, h)
	})
	// Liveness: the process is fine, restarting it would not bring NATS back.
	if status, h := health(t, base+"/healthz"); status != http.StatusOK || h.Status != "degraded" || !strings.HasPrefix(h.Components["nats"], "down: ") {
		t.Fatalf("/healthz with NATS down: %d %+v, want 200 degraded naming nats", status, h)
	}

	// Commands are refused by the connection check, with the answer that
	// names NATS; one that waited for a timeout would get the generic one.
	for _, cmd := range []struct {
		name, method, path, body string
	}{
		{"rotate", "POST", "/v1/tokens/" + tok.ID + "/rotate", ""},
		{"update", "PATCH", "/v1/tokens/" + tok.ID, `{"name":"renamed"}`},
		{"create", "POST", "/v1/tokens", `{"scope":"organization","name":"new"}`},
		{"delete", "DELETE", "/v1/tokens/" + tok.ID, ""},
		{"history", "GET", "/v1/tokens/" + tok.ID + "/history", ""},
	} {
		start := time.Now()
		status, hdr, body := send(t, cmd.method, base+cmd.path, owner, cmd.body)
		took := time.Since(start)
		var p httpapi.Problem
		_ = json.Unmarshal(body, &p)
		if status != http.StatusServiceUnavailable || p.Type != "urn:tokenledger:problem:unavailable" || !strings.Contains(p.Detail, "NATS is unreachable") || hdr.Get("Retry-After") == "" {
			t.Errorf("%s with NATS down: %d (Retry-After %q) %s", cmd.name, status, hdr.Get("Retry-After"), body)
		}
		t.Logf("%s with NATS down: %d in %s", cmd.name, status, took.Round(time.Millisecond))
	}
	// An audit export reads the stream too.
	if status, _, body := send(t, "GET", base+"/v1/audit/export?format=jsonl", owner, ""); status != http.StatusServiceUnavailable {
		t.Errorf("audit export with NATS down: %d %s, want 503", status, body)
	}
	// Past the staleness bound the ledger cannot show that its view holds
	// every rotation and deletion, so it authenticates nothing: reads,
	// verification and bad input alike get 503 naming NATS, never an
	// answer from a view that may be out of date.
	waitUntil(t, 2*app.DefaultMaxStaleness, "authentication to stop past the staleness bound", func() (bool, string) {
		status, _, body := send(t, "GET", base+"/v1/tokens/"+tok.ID, owner, "")
		return status == http.StatusServiceUnavailable, fmt.Sprintf("%d %s", status, body)
	})
	for _, req := range []struct{ name, method, path, body string }{
		{"show", "GET", "/v1/tokens/" + tok.ID, ""},
		{"list", "GET", "/v1/tokens", ""},
		{"verify", "POST", "/v1/verify", `{"token":"` + tok.Secret + `"}`},
		{"bad input", "POST", "/v1/tokens", `{"scope":"organization","name":"x","expiration_days":0}`},
	} {
		status, hdr, body := send(t, req.method, base+req.path, owner, req.body)
		var p httpapi.Problem
		_ = json.Unmarshal(body, &p)
		if status != http.StatusServiceUnavailable || !strings.Contains(p.Detail, "NATS is unreachable") || hdr.Get("Retry-After") == "" {
			t.Errorf("%s with NATS down, past the staleness bound: %d (Retry-After %q) %s", req.name, status, hdr.Get("Retry-After"), body)
		}
	}

	startNATS()
	waitUntil(t, 30*time.Second, "/readyz to be ok again", func() (bool, string) {
		status, h := health(t, base+"/readyz")
		return status == http.StatusOK && h.Status == "ok", fmt.Sprintf("%d %+v", status, h)
	})
	rot, err := c.RotateToken(ctx, tok.ID)
	if err != nil {
		t.Fatalf("rotate once NATS is back: %v", err)
	}
	// The view follows the stream again: it has the rotation.
	if v, err := c.VerifyAfter(ctx, tok.Secret, rot.Sequence); err != nil || v.Valid || v.Status != "rotated" {
		t.Errorf("the old secret after the rotation: %+v, %v", v, err)
	}
	if v, err := c.VerifyAfter(ctx, rot.Secret, rot.Sequence); err != nil || !v.Valid {
		t.Errorf("the new secret after the rotation: %+v, %v", v, err)
	}
	// Nothing refused while NATS was down was stored after it came back.
	hist, err := c.TokenHistory(ctx, tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist.Events) != 2 || hist.Events[1].EventType != "TokenRotated" || hist.Events[1].Sequence != rot.Sequence {
		t.Errorf("history after the outage: %+v, want the creation and the one rotation made after it", hist.Events)
	}
	if list, err := c.ListTokens(ctx); err != nil || len(list.Tokens) != 2 {
		t.Errorf("tokens after the outage: %d, %v; want the bootstrap token and the one made before it", len(list.Tokens), err)
	}
	if strings.Contains(logs.String(), owner) || strings.Contains(logs.String(), rot.Secret) {
		t.Error("the ledger's log holds a secret")
	}
}

// freeAddr returns a loopback address with a port free now, for a server that
// must come back on the same port.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// health reads /healthz or /readyz.
func health(t *testing.T, url string) (int, httpapi.Health) {
	t.Helper()
	status, _, body := send(t, "GET", url, "", "")
	var h httpapi.Health
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatalf("%s: %d %s: %v", url, status, body, err)
	}
	return status, h
}

// send makes one request with a 10 s bound, so a hang fails the test rather
// than stalling it.
func send(t *testing.T, method, url, secret, body string) (int, http.Header, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; last: %s", within, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncBuffer is a buffer that goroutines may write at once: a server's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
