package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// TestREADMEWalkthrough runs the README's walkthrough block as pasted, against
// a `ledger serve` built from this tree on a fresh data directory; then
// restarts the ledger and checks that list and show answer the same, and that
// no secret reached the server's log or the stream's files.
func TestREADMEWalkthrough(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	script := walkthroughBlock(t, filepath.Join(repo, "README.md"))

	// Work in a copy of the tree so the walkthrough's ./ledger and
	// ./ledger-data never touch the developer's checkout.
	work := t.TempDir()
	copyTree(t, repo, work)
	serveBin := filepath.Join(t.TempDir(), "ledger-serve")
	build := exec.Command("go", "build", "-o", serveBin, "./cmd/ledger")
	build.Dir = work
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	var serverLogs bytes.Buffer
	srv := startServe(t, serveBin, work, &serverLogs)
	env := append(os.Environ(), "LEDGER_URL=http://"+srv.addr)
	env = withoutVar(env, "LEDGER_API_TOKEN")

	// The echo after the block reveals the secrets the block only captured, so
	// the search below covers them too.
	out := runScript(t, work, env, script+"\necho \"captured: $ETL_SECRET $NEW_SECRET\"\n")
	for _, want := range []string{"old secret refused, as it should be", "deleted token refused", "active: tok_", "deleted token tok_", `"name": "ci-main"`, "expiration_days: must be a whole number of days from 1 to 365",
		"valid: audit.parquet: parquet", "valid: rotations.jsonl: jsonl, 1 rows"} {
		if !strings.Contains(out, want) {
			t.Errorf("walkthrough output lacks %q", want)
		}
	}

	// The same questions before and after a restart.
	const questions = `export LEDGER_API_TOKEN=$(cat ledger-data/bootstrap-token)
./ledger token list
./ledger token show "$(./ledger token list | awk '$2 == "ci-main" {print $1}')"
./ledger token list -o json`
	before := runScript(t, work, env, questions)
	srv.stop(t)
	srv = startServe(t, serveBin, work, &serverLogs)
	env = append(withoutVar(env, "LEDGER_URL"), "LEDGER_URL=http://"+srv.addr)
	after := runScript(t, work, env, questions)
	// The token asking is used by the asking: its last use may move, at
	// most every 30 s, however long the walkthrough took. Every other
	// token's is kept by the snapshot, and compared.
	before, after = maskAskersLastUse(before), maskAskersLastUse(after)
	if strings.Count(before, "<last use>") != 2 || !regexp.MustCompile(`Last used:\s+none recorded`).MatchString(before) {
		t.Fatalf("the asking token's last use is not in list and list -o json, or ci-main has one:\n%s", before)
	}
	if before != after {
		t.Fatalf("answers changed across a restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if !strings.Contains(before, "ci-main") || !strings.Contains(before, "Workspace roles:  analytics=WORKSPACE_OPERATOR") {
		t.Fatalf("show after the walkthrough does not show its changes:\n%s", before)
	}
	srv.stop(t)

	// No secret in the server's log or in any file JetStream wrote.
	bootstrap, _ := os.ReadFile(filepath.Join(work, "ledger-data", "bootstrap-token"))
	secrets := regexp.MustCompile(`tl[owd]_[0-9A-Za-z]{49}`).FindAllString(out+string(bootstrap), -1)
	if len(secrets) < 5 {
		t.Fatalf("found only %d secrets in the walkthrough's output; expected its creates and rotations", len(secrets))
	}
	stored := readTree(t, filepath.Join(work, "ledger-data", "jetstream"))
	if !strings.Contains(string(stored), "ci-pipeline") {
		t.Fatal("the stream's files do not contain the token names: the secret search is not looking at them")
	}
	// Nor in the audit exports the walkthrough wrote, nor their manifests.
	var exports []byte
	for _, name := range []string{"audit.parquet", "audit.parquet.manifest.json", "rotations.jsonl", "rotations.jsonl.manifest.json"} {
		b, err := os.ReadFile(filepath.Join(work, name))
		if err != nil {
			t.Fatalf("the walkthrough's export: %v", err)
		}
		exports = append(exports, b...)
	}
	if !strings.Contains(string(exports), "etl-deployer") {
		t.Fatal("the exports do not contain the token names: the secret search is not looking at them")
	}
	for _, s := range secrets {
		if strings.Contains(serverLogs.String(), s) {
			t.Errorf("server log contains a secret")
		}
		if bytes.Contains(exports, []byte(s)) {
			t.Errorf("an audit export contains a secret")
		}
		sum := domain.Hash(s)
		if bytes.Contains(exports, []byte(hex.EncodeToString(sum[:]))) {
			t.Errorf("an audit export contains a secret's stored hash")
		}
		if bytes.Contains(stored, []byte(s)) {
			t.Errorf("the stream's stored bytes contain a secret")
		}
	}
}

// maskAskersLastUse hides the bootstrap token's last use in the answers of
// `token list`, `token show` and `token list -o json` (the only token the
// walkthrough authenticates with).
func maskAskersLastUse(out string) string {
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^(tok_\S+\s+bootstrap\s.*\s)\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`),
		regexp.MustCompile(`("name": "bootstrap",(?s:.*?)"last_used_at": )"[^"]*"`),
	} {
		out = re.ReplaceAllString(out, "${1}<last use>")
	}
	return out
}

type served struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

func startServe(t *testing.T, bin, dir string, logs io.Writer) *served {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--data", "ledger-data", "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0")
	cmd.Dir = dir
	cmd.Stderr = logs
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &served{cmd: cmd, done: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ledger serving on http://"); ok {
				addr <- strings.Fields(a)[0]
			}
		}
	}()
	go func() { s.done <- cmd.Wait() }()
	select {
	case s.addr = <-addr:
	case err := <-s.done:
		t.Fatalf("ledger serve exited: %v\n%s", err, logs)
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("ledger serve did not start\n%s", logs)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return s
}

// stop sends SIGTERM and expects a clean exit.
func (s *served) stop(t *testing.T) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("ledger serve did not exit cleanly on SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ledger serve did not stop within 30s of SIGTERM")
	}
}

func runScript(t *testing.T, dir string, env []string, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("script failed: %v\n--- script\n%s\n--- output\n%s", err, script, out.String())
	}
	return out.String()
}

// walkthroughBlock returns the sh block that follows the walkthrough marker.
func walkthroughBlock(t *testing.T, readme string) string {
	t.Helper()
	b, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- walkthrough -->")
	if !ok {
		t.Fatal("README has no <!-- walkthrough --> marker")
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("README walkthrough marker is not followed by a ```sh block")
	}
	return block
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() && (rel == ".git" || rel == "ledger-data") {
			return filepath.SkipDir
		}
		if rel == "ledger" && !d.IsDir() {
			return nil
		}
		target := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func readTree(t *testing.T, dir string) []byte {
	t.Helper()
	var all []byte
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		all = append(all, b...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}

func withoutVar(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
