package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/httpapi"
)

// `ledger bootstrap` on an empty stream makes the first owner token and
// writes its secret to --out (0600); `ledger serve --nats-url` makes none
// itself, and takes that secret. Run again, bootstrap makes nothing, writes
// nothing, says which token the ledger has, and exits 0 (an init container
// runs it at every start).
func TestBootstrapMakesTheFirstTokenOnceAndThenSaysSo(t *testing.T) {
	natsURL, credentials := startSetUpNATS(t)
	secret := bootstrapVia(t, natsURL, credentials) // checks exit 0 and mode 0600

	dir := t.TempDir()
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: dir, httpAddr: "127.0.0.1:0", natsURL: natsURL, natsCredentials: credentials, org: "acme", stream: "TOKENS", replicas: 1,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	if _, err := os.Stat(filepath.Join(dir, "bootstrap-token")); !os.IsNotExist(err) {
		t.Fatalf("serve --nats-url wrote a bootstrap-token of its own: %v", err)
	}
	owner := httpapi.NewClient("http://"+n.HTTPAddr(), secret)
	list, err := owner.ListTokens(context.Background())
	if err != nil || len(list.Tokens) != 1 || list.Tokens[0].Name != "bootstrap" || list.Tokens[0].Role != "ORGANIZATION_OWNER" {
		t.Fatalf("the bootstrap secret lists %+v, %v; want itself alone, the organization's owner", list, err)
	}
	id := list.Tokens[0].ID

	out := filepath.Join(t.TempDir(), "again")
	for _, args := range [][]string{{"--out", out}, nil} {
		code, stdout, stderr := (cli{t: t}).run("", append([]string{"bootstrap", "--nats-url", natsURL, "--nats-credentials", credentials, "--org", "acme"}, args...)...)
		said := stdout + stderr
		if code != 0 || !strings.Contains(said, "already bootstrapped: token "+id) || !strings.Contains(said, "at sequence 1 ") {
			t.Fatalf("bootstrap %v again: exit %d: %s; want exit 0 naming token %s at sequence 1", args, code, said, id)
		}
		if args == nil && stdout != "" {
			t.Fatalf("bootstrap again without --out wrote to stdout, where a script reads a secret: %q", stdout)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("bootstrap again wrote --out: %v", err)
	}
	list, err = owner.ListTokens(context.Background())
	if err != nil || len(list.Tokens) != 1 {
		t.Fatalf("after bootstrapping again the ledger has %+v, %v; want the one token", list, err)
	}
}

// Without --out the secret goes to stdout, alone on its line, and the rest
// to stderr: SECRET=$(ledger bootstrap ...) works.
func TestBootstrapWithoutOutPrintsTheSecretAloneOnStdout(t *testing.T) {
	natsURL, credentials := startSetUpNATS(t)
	code, stdout, stderr := (cli{t: t}).run("", "bootstrap", "--nats-url", natsURL, "--nats-credentials", credentials, "--org", "acme")
	if code != 0 || !strings.HasPrefix(stdout, "tlo_") || strings.Count(stdout, "\n") != 1 {
		t.Fatalf("bootstrap: exit %d, stdout %q; want the secret alone", code, stdout)
	}
	secret := strings.TrimSpace(stdout)
	if strings.Contains(stderr, secret) || !strings.Contains(stderr, "stored at sequence 1") {
		t.Fatalf("bootstrap's stderr: %q; want it to say what was stored, without the secret", stderr)
	}
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: t.TempDir(), httpAddr: "127.0.0.1:0", natsURL: natsURL, natsCredentials: credentials, org: "acme", stream: "TOKENS", replicas: 1,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	if _, err := httpapi.NewClient("http://"+n.HTTPAddr(), secret).ListTokens(context.Background()); err != nil {
		t.Fatalf("the printed secret: %v", err)
	}
}

// The secret is written and synced to --out.pending before the token is
// stored, and renamed to --out after. A bootstrap interrupted between the
// two leaves the token stored and its secret in .pending: the next run puts
// the file in place. A .pending that holds no stored token's secret (the
// run was interrupted before storing) is removed, never put in place.
func TestBootstrapRecoversASecretSavedBeforeAnInterruption(t *testing.T) {
	natsURL, credentials := startSetUpNATS(t)
	out := filepath.Join(t.TempDir(), "bootstrap-token")
	run := func() (int, string) {
		code, stdout, stderr := (cli{t: t}).run("", "bootstrap", "--nats-url", natsURL, "--nats-credentials", credentials, "--org", "acme", "--out", out)
		return code, stdout + stderr
	}
	if code, said := run(); code != 0 || !strings.Contains(said, "stored at sequence 1") {
		t.Fatalf("bootstrap: exit %d: %s", code, said)
	}
	secret, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}

	// The interruption: the token was stored, the rename never happened.
	if err := os.Rename(out, out+".pending"); err != nil {
		t.Fatal(err)
	}
	if code, said := run(); code != 0 || !strings.Contains(said, "interrupted bootstrap saved is now in "+out) {
		t.Fatalf("bootstrap after an interruption: exit %d: %s", code, said)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("--out after recovery = %q, %v; want the saved secret", got, err)
	}
	if info, err := os.Stat(out); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("--out after recovery: %v, %v; want mode 0600", info, err)
	}
	if _, err := os.Stat(out + ".pending"); !os.IsNotExist(err) {
		t.Fatal("the .pending file is still there")
	}

	// A .pending whose secret no stored token has.
	if err := os.Remove(out); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out+".pending", []byte("tlo_not_the_stored_one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, said := run(); code != 0 || !strings.Contains(said, "already bootstrapped") || strings.Contains(said, "now in") {
		t.Fatalf("bootstrap with a stale .pending: exit %d: %s", code, said)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("a secret no token has was put in place: %v", err)
	}
	if _, err := os.Stat(out + ".pending"); !os.IsNotExist(err) {
		t.Fatal("the stale .pending file is still there")
	}
}

// Bootstrap is for ledgers on your NATS: without --nats-url and
// --nats-credentials it is a usage error.
func TestBootstrapNeedsNATSURLAndCredentials(t *testing.T) {
	for _, args := range [][]string{
		{"bootstrap"},
		{"bootstrap", "--nats-url", "nats://127.0.0.1:1"},
		{"bootstrap", "--nats-credentials", "x.json"},
	} {
		if code, _, stderr := (cli{t: t}).run("", args...); code != exitUsage || !strings.Contains(stderr, "--nats-url and --nats-credentials") {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
	}
}

// A second `ledger serve` on a --data another one holds fails at once, with
// the exit code of any failed start and the pid of the process holding it;
// the first goes on serving. (The lock is the kernel's: a killed ledger
// leaves none behind, which TestKill9LosesNoAcknowledgedCommand's restarts
// rely on.)
func TestASecondServeOnTheSameDataFailsNamingThePidHoldingIt(t *testing.T) {
	bin := goBuild(t, "ledger", ".")
	dir := t.TempDir()
	first := startServeProcess(t, bin, dir, "--metrics-listen", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"serve", "--data", dir, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--metrics-listen", ""},
		strings.NewReader(""), &stdout, &stderr, func(string) string { return "" })
	if ctx.Err() != nil {
		t.Fatal("the second serve did not fail: it was still running 30 s later")
	}
	pid := strconv.Itoa(first.cmd.Process.Pid)
	if code != exitFailed || !strings.Contains(stderr.String(), "in use by another ledger") || !strings.Contains(stderr.String(), "pid "+pid) {
		t.Fatalf("second serve on the same --data: exit %d: %s; want exit %d naming pid %s", code, stderr.String(), exitFailed, pid)
	}
	if status, h := health(t, "http://"+first.addr+"/readyz"); status != 200 {
		t.Fatalf("the first ledger after the second was refused: /readyz %d %+v", status, h)
	}
}
