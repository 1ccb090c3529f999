package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
)

// startInProcess runs `ledger serve` in this process on an external test NATS
// server (--nats-url), and returns the API's URL and the bootstrap secret.
func startInProcess(t *testing.T) (url, secret string) {
	t.Helper()
	ns := eventstoretest.MustServer(t)
	dir := t.TempDir()
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: dir, httpAddr: "127.0.0.1:0", natsURL: ns.ClientURL(), org: "acme", stream: "TOKENS", replicas: 1,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.close() })
	path := filepath.Join(dir, "bootstrap-token")
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("bootstrap-token mode %v, want 0600", info.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	return "http://" + n.httpAddr, strings.TrimSpace(string(b))
}

type cli struct {
	t   *testing.T
	env map[string]string
}

func (c cli) run(stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(stdin), &out, &errb, func(k string) string { return c.env[k] })
	return code, out.String(), errb.String()
}

func TestCLIExitCodesAndPrompts(t *testing.T) {
	url, secret := startInProcess(t)
	c := cli{t: t, env: map[string]string{"LEDGER_URL": url, "LEDGER_API_TOKEN": secret}}

	code, out, _ := c.run("", "token", "create", "--scope", "organization", "--name", "doomed", "-o", "json")
	if code != 0 || !strings.Contains(out, `"token": "tlo_`) {
		t.Fatalf("create: %d %s", code, out)
	}
	code, out, _ = c.run("", "token", "list")
	id := ""
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == "doomed" {
			id = f[0]
		}
	}
	if code != 0 || id == "" {
		t.Fatalf("list: %d %s", code, out)
	}

	// Delete asks for the word Delete; anything else deletes nothing.
	code, _, errOut := c.run("delete\n", "token", "delete", id)
	if code != exitFailed || !strings.Contains(errOut, "Type Delete to confirm") {
		t.Fatalf("delete with a wrong answer: %d %s", code, errOut)
	}
	if _, out, _ := c.run("", "token", "show", id); !strings.Contains(out, "active") {
		t.Fatalf("token gone after a refused delete:\n%s", out)
	}
	if code, _, _ := c.run("", "token", "delete", id, "--confirm", "yes"); code != exitFailed {
		t.Fatalf("--confirm yes: %d", code)
	}
	if code, out, _ := c.run("Delete\n", "token", "delete", id); code != 0 || !strings.Contains(out, "deleted token "+id) {
		t.Fatalf("delete confirmed at the prompt: %d %s", code, out)
	}

	// verify: 0 for the active bootstrap, 1 with a reason for garbage.
	if code, out, _ := c.run(secret+"\n", "token", "verify"); code != 0 || !strings.Contains(out, "active: tok_") {
		t.Fatalf("verify active: %d %s", code, out)
	}
	if code, _, errOut := c.run("tlo_garbage\n", "token", "verify"); code != exitFailed || !strings.Contains(errOut, "not valid") {
		t.Fatalf("verify garbage: %d %s", code, errOut)
	}

	// -c prints the secret alone.
	code, out, _ = c.run("", "token", "create", "--scope", "deployment", "--workspace", "w", "--deployment", "d", "--name", "dep", "-c")
	if code != 0 || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "tld_") {
		t.Fatalf("create -c printed %q", out)
	}

	// Refusals by the ledger exit 1 and name the field.
	code, _, errOut = c.run("", "token", "create", "--scope", "organization", "--name", "x", "--expiration", "0")
	if code != exitFailed || !strings.Contains(errOut, "expiration_days:") {
		t.Fatalf("expiration 0: %d %s", code, errOut)
	}
	// Usage errors exit 2.
	if code, _, _ := c.run("", "token", "show"); code != exitUsage {
		t.Fatalf("show without id: %d", code)
	}
	if code, _, _ := c.run("", "token", "list", "-o", "yaml"); code != exitUsage {
		t.Fatalf("-o yaml: %d", code)
	}
	if code, _, _ := c.run("", "serve", "--nats-listen", "127.0.0.1:1", "--nats-url", "nats://x"); code != exitUsage {
		t.Fatalf("--nats-listen with --nats-url: %d", code)
	}
	for _, args := range [][]string{
		{"tokn", "list"}, {"token", "frob"}, {"token", "list", "extra"}, {"serve", "extra"},
		{"token", "assign", "tok_x", "--role", "WORKSPACE_MEMBER"}, {"token", "create", "--bogus"},
	} {
		if code, _, _ := c.run("", args...); code != exitUsage {
			t.Errorf("ledger %s: exit %d, want %d", strings.Join(args, " "), code, exitUsage)
		}
	}
	noToken := cli{t: t, env: map[string]string{"LEDGER_URL": url}}
	if code, _, errOut := noToken.run("", "token", "list"); code != exitUsage || !strings.Contains(errOut, "LEDGER_API_TOKEN") {
		t.Fatalf("without LEDGER_API_TOKEN: %d %s", code, errOut)
	}
	// An unreachable ledger exits 3.
	away := cli{t: t, env: map[string]string{"LEDGER_URL": "http://127.0.0.1:1", "LEDGER_API_TOKEN": secret}}
	if code, _, errOut := away.run("", "token", "list"); code != exitNoReach || strings.Contains(errOut, secret) {
		t.Fatalf("unreachable: %d %s", code, errOut)
	}
}

func TestHealthReportsAViewStuckBehindTheStream(t *testing.T) {
	w := &lagWatch{}
	t0 := time.Now()
	if err := w.check(10, 10, t0); err != nil {
		t.Fatalf("caught up: %v", err)
	}
	// Under a steady load the view is always a little behind, yet keeps up.
	for i := range uint64(20) {
		if err := w.check(10+i, 11+i, t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("keeping up under load, second %d: %v", i, err)
		}
	}
	// Stuck: it never reaches what the stream held when it fell behind.
	w = &lagWatch{}
	w.check(9, 10, t0)
	if err := w.check(9, 12, t0.Add(maxLag+time.Second)); err == nil || !strings.Contains(err.Error(), "stuck at sequence 9") {
		t.Fatalf("stuck behind: %v", err)
	}
	if err := w.check(12, 12, t0.Add(maxLag+2*time.Second)); err != nil {
		t.Fatalf("caught up again: %v", err)
	}
}

func TestABootstrapSecretSavedJustBeforeACrashIsRecovered(t *testing.T) {
	ns := eventstoretest.MustServer(t)
	dir := t.TempDir()
	opts := serveOptions{dataDir: dir, httpAddr: "127.0.0.1:0", natsURL: ns.ClientURL(), org: "acme", stream: "TOKENS", replicas: 1}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := startLedger(context.Background(), opts, quiet)
	if err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(dir, "bootstrap-token")
	secret, _ := os.ReadFile(final)
	_ = n.close()

	// The crash: the token was appended, the rename never happened.
	if err := os.Rename(final, final+".pending"); err != nil {
		t.Fatal(err)
	}
	n, err = startLedger(context.Background(), opts, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	got, err := os.ReadFile(final)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("bootstrap-token after recovery = %q, %v; want the saved secret", got, err)
	}
	if _, err := os.Stat(final + ".pending"); !os.IsNotExist(err) {
		t.Fatal("the .pending file is still there")
	}
}
