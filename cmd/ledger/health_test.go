package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
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
