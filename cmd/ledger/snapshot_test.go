package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/node"
)

func TestRestartsUseTheSnapshotUnlessItIsBadOrARebuildIsAsked(t *testing.T) {
	natsURL, credentials := startSetUpNATS(t)
	secret := bootstrapVia(t, natsURL, credentials)
	dir := t.TempDir()
	opts := serveOptions{dataDir: dir, httpAddr: "127.0.0.1:0", natsURL: natsURL, natsCredentials: credentials, org: "acme", stream: "TOKENS", replicas: 1}
	var logs bytes.Buffer
	start := func(o serveOptions) (*node.Node, *httpapi.Client) {
		t.Helper()
		n, err := startLedger(context.Background(), o, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		return n, httpapi.NewClient("http://"+n.HTTPAddr(), secret)
	}
	list := func(c *httpapi.Client) string {
		t.Helper()
		l, err := c.ListTokens(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, tok := range l.Tokens {
			b.WriteString(tok.ID + " " + tok.Name + " " + string(tok.Status) + " " + tok.Fingerprint + "\n")
		}
		return b.String()
	}
	restart := func(n *node.Node, o serveOptions, wantLog string) (*node.Node, *httpapi.Client) {
		t.Helper()
		_ = n.Close()
		logs.Reset()
		n, c := start(o)
		if !strings.Contains(logs.String(), wantLog) {
			t.Fatalf("log lacks %q:\n%s", wantLog, logs.String())
		}
		return n, c
	}

	n, c := start(opts)
	if !strings.Contains(logs.String(), "no snapshot") {
		t.Fatalf("first start should say it has no snapshot:\n%s", logs.String())
	}
	for _, name := range []string{"a", "b", "c"} {
		if _, err := c.CreateToken(context.Background(), httpapi.CreateRequest{Scope: "organization", Name: name}, ""); err != nil {
			t.Fatal(err)
		}
	}
	want := list(c)

	// A clean stop saves a snapshot; the next start loads it.
	n, c = restart(n, opts, "snapshot loaded")
	if got := list(c); got != want {
		t.Fatalf("after a restart from the snapshot:\n%s\nwant\n%s", got, want)
	}
	// Events after the snapshot are replayed on top of it: keep this
	// snapshot, write one more event, and put the older snapshot back after
	// the stop (which saved a newer one).
	path := filepath.Join(dir, "snapshots", "TOKENS.snap")
	older, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateToken(context.Background(), httpapi.CreateRequest{Scope: "organization", Name: "d"}, ""); err != nil {
		t.Fatal(err)
	}
	want = list(c)
	_ = n.Close()
	if err := os.WriteFile(path, older, 0o600); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	n, c = start(opts)
	if !strings.Contains(logs.String(), "snapshot loaded") || !strings.Contains(logs.String(), "tail=1") {
		t.Fatalf("the older snapshot was not loaded with a tail of one event:\n%s", logs.String())
	}
	if got := list(c); got != want {
		t.Fatalf("after replaying the tail:\n%s\nwant\n%s", got, want)
	}

	// A corrupt snapshot is detected, said so, and the view rebuilt.
	_ = n.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	n, c = start(opts)
	if !strings.Contains(logs.String(), "snapshot unusable") || !strings.Contains(logs.String(), "checksum") {
		t.Fatalf("corrupt snapshot not reported:\n%s", logs.String())
	}
	if got := list(c); got != want {
		t.Fatalf("after a corrupt snapshot:\n%s\nwant\n%s", got, want)
	}

	// --rebuild discards a good snapshot and replays everything.
	rebuild := opts
	rebuild.rebuild = true
	n, c = restart(n, rebuild, "rebuild requested")
	if got := list(c); got != want {
		t.Fatalf("after --rebuild:\n%s\nwant\n%s", got, want)
	}
	_ = n.Close()
}
