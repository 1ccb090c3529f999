package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
)

// TestReadyzSaysNotReadyWhileTheFeedIsTamperedWith: someone who reached NATS
// as the ledger (its own connection plays the attacker here) makes the token
// view's consumer send headers only. The next event reaches the ledger
// without its body: /readyz answers 503 naming the feed fault, the ledger
// follows again on a fresh consumer by itself, /readyz is ok again, the
// token made after the tampering verifies, and nothing was refused (no
// token quarantined) for what the server did.
func TestReadyzSaysNotReadyWhileTheFeedIsTamperedWith(t *testing.T) {
	accounts, credsFile := lockedNATS(t)
	ns, err := eventstore.StartEmbedded(eventstore.EmbeddedConfig{StoreDir: t.TempDir(), Listen: "127.0.0.1:0", Config: accounts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	secret := bootstrapVia(t, ns.ClientURL(), credsFile)
	dir := t.TempDir()
	var logs syncBuffer
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: dir, httpAddr: "127.0.0.1:0", natsURL: ns.ClientURL(), natsCredentials: credsFile, org: "acme", stream: "TOKENS", replicas: 1,
	}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	base := "http://" + n.HTTPAddr()
	c := httpapi.NewClient(base, secret)
	ctx := context.Background()
	if status, h := health(t, base+"/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz before the tampering: %d %+v", status, h)
	}

	creds, err := natsaccess.LoadCredentials(credsFile)
	if err != nil {
		t.Fatal(err)
	}
	conns, err := natsaccess.Connect(ns.ClientURL(), nil, creds)
	if err != nil {
		t.Fatal(err)
	}
	defer conns.Close()
	js, err := jetstream.New(conns.Ledger)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, "TOKENS")
	if err != nil {
		t.Fatal(err)
	}
	// The view's consumer is the one pull consumer reading the whole stream
	// (a mirror's is pushed to it).
	var tampered []string
	lister := stream.ListConsumers(ctx)
	for info := range lister.Info() {
		cfg := info.Config
		if cfg.DeliverSubject != "" || cfg.FilterSubject != "" || len(cfg.FilterSubjects) > 0 {
			continue
		}
		cfg.HeadersOnly = true
		if _, err := js.UpdateConsumer(ctx, "TOKENS", cfg); err != nil {
			t.Fatal(err)
		}
		tampered = append(tampered, info.Name)
	}
	if len(tampered) != 1 {
		t.Fatalf("tampered with consumers %v, want the view's one", tampered)
	}

	tok, err := c.CreateToken(ctx, httpapi.CreateRequest{Scope: "organization", Name: "after the tampering"}, "")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "/readyz to name the feed fault", func() (bool, string) {
		status, h := health(t, base+"/readyz")
		return status == http.StatusServiceUnavailable && strings.Contains(h.Components["view"], "feed fault"), fmt.Sprintf("%d %+v", status, h)
	})
	waitUntil(t, 10*time.Second, "/readyz to be ok again", func() (bool, string) {
		status, h := health(t, base+"/readyz")
		return status == http.StatusOK, fmt.Sprintf("%d %+v", status, h)
	})
	if v, err := c.VerifyAfter(ctx, tok.Secret, tok.Sequence); err != nil || !v.Valid {
		t.Fatalf("the token made after the tampering: %+v, %v", v, err)
	}
	if strings.Contains(logs.String(), "refused") {
		t.Fatalf("the ledger refused a message for the server's doing:\n%s", logs.String())
	}
}

// lockedNATS is what `ledger nats setup` gives "your" NATS server and the
// ledger: the accounts text for an embedded server (eventstore.EmbeddedConfig)
// and the credentials file for --nats-credentials.
func lockedNATS(t *testing.T) (accounts, credentials string) {
	t.Helper()
	creds, err := natsaccess.NewCredentials()
	if err != nil {
		t.Fatal(err)
	}
	credentials = filepath.Join(t.TempDir(), "nats-credentials.json")
	if err := creds.Save(credentials); err != nil {
		t.Fatal(err)
	}
	if accounts, err = creds.EmbeddedConfig("TOKENS"); err != nil {
		t.Fatal(err)
	}
	return accounts, credentials
}

// GET /healthz is what a Kubernetes liveness probe asks, and the probe has a
// deadline of its own (1 s by default): a ledger whose probe fails is
// restarted, which brings no NATS back. /healthz answers from what the
// ledger already knows and never waits on NATS. With the ledger's NATS
// server frozen (SIGSTOP: its sockets stay open and silent, as in a
// partition or a hung process) while clients send commands, each of 20
// probes over 3 seconds (past the 2 s the readiness check waits for the
// stream, and past the ~3 s the ledger takes to find its connection dead)
// is answered 200 within 100 ms; /healthz goes on to say NATS is down, and
// /readyz says not ready. Once the server resumes, /readyz is ready again.
func TestLivenessAnswersWithin100msWhileNATSIsFrozen(t *testing.T) {
	ns := startSetUpNATSProcess(t)
	secret := bootstrapVia(t, ns.url, ns.credentials)
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: t.TempDir(), httpAddr: "127.0.0.1:0", natsURL: ns.url, natsCredentials: ns.credentials, org: "acme", stream: "TOKENS", replicas: 1,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	base := "http://" + n.HTTPAddr()
	if status, h := health(t, base+"/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz before the freeze: %d %+v", status, h)
	}

	if err := ns.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = ns.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	// Commands in flight, waiting on the frozen server, as under load.
	client := httpapi.NewClient(base, secret)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, _ = client.CreateToken(ctx, httpapi.CreateRequest{Scope: "organization", Name: "during the freeze"}, "")
				cancel()
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()

	probe := &http.Client{Timeout: time.Second} // as a kubelet's, with its default timeout
	var slowest time.Duration
	for i := range 20 {
		start := time.Now()
		resp, err := probe.Get(base + "/healthz")
		took := time.Since(start)
		if err != nil {
			t.Fatalf("probe %d while NATS is frozen: %v after %s", i+1, err, took)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || took >= 100*time.Millisecond {
			t.Errorf("probe %d while NATS is frozen: %d after %s, want 200 within 100ms", i+1, resp.StatusCode, took)
		}
		slowest = max(slowest, took)
		time.Sleep(150 * time.Millisecond)
	}
	t.Logf("slowest of 20 liveness probes while NATS was frozen: %s", slowest)
	waitUntil(t, 10*time.Second, "/healthz to say NATS is down and /readyz not ready", func() (bool, string) {
		live, lh := health(t, base+"/healthz")
		ready, rh := health(t, base+"/readyz")
		return live == http.StatusOK && lh.Status == "degraded" && ready == http.StatusServiceUnavailable,
			fmt.Sprintf("/healthz %d %+v, /readyz %d %+v", live, lh, ready, rh)
	})

	resume()
	waitUntil(t, 20*time.Second, "/readyz ready once NATS resumed", func() (bool, string) {
		status, h := health(t, base+"/readyz")
		return status == http.StatusOK, fmt.Sprintf("%d %+v", status, h)
	})
}
