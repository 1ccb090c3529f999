package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/httpapi"
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

// createJSON runs `token create ... -o json` and returns the answer.
func (c cli) createJSON(args ...string) httpapi.Token {
	c.t.Helper()
	code, out, errOut := c.run("", append(append([]string{"token", "create"}, args...), "-o", "json")...)
	if code != 0 {
		c.t.Fatalf("create %v: exit %d: %s", args, code, errOut)
	}
	var tok httpapi.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		c.t.Fatalf("create %v: %v: %s", args, err, out)
	}
	return tok
}

// ok runs a command that must succeed and returns its output.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	code, out, errOut := c.run("", args...)
	if code != 0 {
		c.t.Fatalf("ledger %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func listIDs(t *testing.T, out string) []string {
	t.Helper()
	var toks []httpapi.Token
	if err := json.Unmarshal([]byte(out), &toks); err != nil {
		t.Fatalf("list -o json: %v: %s", err, out)
	}
	ids := []string{}
	for _, tok := range toks {
		ids = append(ids, tok.ID)
	}
	return ids
}

func TestCLIListFiltersRolesHistoryAndShowAt(t *testing.T) {
	url, secret := startInProcess(t)
	c := cli{t: t, env: map[string]string{"LEDGER_URL": url, "LEDGER_API_TOKEN": secret}}

	org := c.createJSON("--scope", "organization", "--name", "ci")
	ws := c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", "ws-w1", "--role", "WORKSPACE_AUTHOR")
	dep := c.createJSON("--scope", "deployment", "--workspace", "w1", "--deployment", "d1", "--name", "dep-d1")
	other := c.createJSON("--scope", "workspace", "--workspace", "w2", "--name", "ws-w2")
	c.ok("token", "assign", org.ID, "--workspace", "w1", "--role", "WORKSPACE_OWNER")
	c.ok("token", "update", ws.ID, "--role", "WORKSPACE_OPERATOR")
	c.ok("token", "rotate", ws.ID)
	c.ok("token", "delete", other.ID, "--confirm", "Delete")

	// list: each filter, and the ones that combine.
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--workspace", "w1"}, []string{org.ID, ws.ID, dep.ID}},
		{[]string{"--workspace", "w1", "--role", "WORKSPACE_OWNER"}, []string{org.ID}},
		{[]string{"--workspace", "w1", "--scope", "Deployment"}, []string{dep.ID}},
		{[]string{"--deployment", "d1"}, []string{dep.ID}},
		{[]string{"--scope", "workspace"}, []string{ws.ID, other.ID}},
		{[]string{"--scope", "workspace", "--status", "active"}, []string{ws.ID}},
		{[]string{"--status", "deleted"}, []string{other.ID}},
		{[]string{"--role", "workspace_operator"}, []string{ws.ID}},
	} {
		got := listIDs(t, c.ok(append([]string{"token", "list", "-o", "json"}, tc.args...)...))
		if !slices.Equal(got, tc.want) {
			t.Errorf("list %v:\ngot  %v\nwant %v", tc.args, got, tc.want)
		}
	}
	if out := c.ok("token", "list", "--workspace", "w1"); !strings.Contains(out, "ID  ") || !strings.Contains(out, dep.ID) || strings.Contains(out, other.ID) {
		t.Errorf("list --workspace w1 (text):\n%s", out)
	}
	code, _, errOut := c.run("", "token", "list", "--status", "revoked")
	if code != exitFailed || !strings.Contains(errOut, "status:") {
		t.Errorf("list --status revoked: %d %s", code, errOut)
	}
	code, _, errOut = c.run("", "token", "list", "--scope", "galaxy", "--workspace", "a.b")
	if code != exitFailed || !strings.Contains(errOut, "scope:") || !strings.Contains(errOut, "workspace_id:") {
		t.Errorf("list with two bad filters: %d %s", code, errOut)
	}
	if code, _, _ := c.run("", "token", "list", "--workspace", ""); code != exitUsage {
		t.Errorf("list --workspace '': exit %d, want %d", code, exitUsage)
	}

	// roles: a workspace's three kinds of holders, a deployment's.
	out := c.ok("roles", "--workspace", "w1")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "TOKEN ID") || !strings.Contains(lines[0], "HOW") {
		t.Fatalf("roles --workspace w1:\n%s", out)
	}
	for _, want := range []string{org.ID + "  ci  ", "WORKSPACE_OWNER", "organization token assigned to the workspace", "WORKSPACE_OPERATOR", "workspace token", "DEPLOYMENT_ADMIN", "deployment token"} {
		if !strings.Contains(out, want) {
			t.Errorf("roles --workspace w1 lacks %q:\n%s", want, out)
		}
	}
	var held []httpapi.Holding
	if err := json.Unmarshal([]byte(c.ok("roles", "--deployment", "d1", "-o", "json")), &held); err != nil || len(held) != 1 || held[0].TokenID != dep.ID || held[0].Role != "DEPLOYMENT_ADMIN" {
		t.Fatalf("roles --deployment d1 = %+v, %v", held, err)
	}
	for _, args := range [][]string{{"roles"}, {"roles", "--workspace", "w1", "--deployment", "d1"}, {"roles", "--workspace", ""}, {"roles", "--workspace", "w1", "extra"}} {
		if code, _, _ := c.run("", args...); code != exitUsage {
			t.Errorf("ledger %s: exit %d, want %d", strings.Join(args, " "), code, exitUsage)
		}
	}
	if code, _, errOut := c.run("", "roles", "--workspace", "a.b"); code != exitFailed || !strings.Contains(errOut, "workspace_id:") {
		t.Errorf("roles --workspace a.b: %d %s", code, errOut)
	}

	// history: oldest first, summed up; as JSON without any hash.
	out = c.ok("token", "history", ws.ID)
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !regexp.MustCompile(`^SEQ\s+TIME\s+EVENT\s+ACTOR\s+CHANGES$`).MatchString(lines[0]) {
		t.Fatalf("history:\n%s", out)
	}
	for i, want := range []string{`TokenCreated .*created WORKSPACE token "ws-w1" as WORKSPACE_AUTHOR in workspace w1; fingerprint [0-9a-f]{8}…`,
		`TokenUpdated .*role WORKSPACE_AUTHOR -> WORKSPACE_OPERATOR$`, `TokenRotated .*new secret, fingerprint [0-9a-f]{8}… \(was [0-9a-f]{8}…\)`} {
		if !regexp.MustCompile(want).MatchString(lines[i+1]) {
			t.Errorf("history line %d = %q, want %s", i+1, lines[i+1], want)
		}
	}
	if out := c.ok("token", "history", org.ID); !strings.Contains(out, "assigned w1 as WORKSPACE_OWNER") {
		t.Errorf("history of the organization token:\n%s", out)
	}
	js := c.ok("token", "history", ws.ID, "-o", "json")
	if strings.Contains(js, "secret_hash") || !strings.Contains(js, `"fingerprint"`) {
		t.Fatalf("history -o json:\n%s", js)
	}
	var events []httpapi.HistoryEvent
	if err := json.Unmarshal([]byte(js), &events); err != nil || len(events) != 3 {
		t.Fatalf("history -o json: %d events, %v", len(events), err)
	}
	if code, _, errOut := c.run("", "token", "history", "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa"); code != exitFailed || !strings.Contains(errOut, "token_id:") {
		t.Errorf("history of an unknown token: %d %s", code, errOut)
	}

	// show --at: before creation, between the create and the update, after.
	before := ws.CreatedAt.Add(-time.Second).Format(time.RFC3339Nano)
	if code, _, errOut := c.run("", "token", "show", ws.ID, "--at", before); code != exitFailed || !strings.Contains(errOut, "at:") {
		t.Errorf("show --at before creation: %d %s", code, errOut)
	}
	if code, _, errOut := c.run("", "token", "show", ws.ID, "--at", "last tuesday"); code != exitFailed || !strings.Contains(errOut, "at:") {
		t.Errorf("show --at 'last tuesday': %d %s", code, errOut)
	}
	var then httpapi.Token
	if err := json.Unmarshal([]byte(c.ok("token", "show", ws.ID, "--at", ws.CreatedAt.Format(time.RFC3339Nano), "-o", "json")), &then); err != nil ||
		then.Role != "WORKSPACE_AUTHOR" || then.Version != 1 || then.Fingerprint != ws.Fingerprint {
		t.Fatalf("show --at creation = %+v, %v", then, err)
	}
	out = c.ok("token", "show", other.ID, "--at", time.Now().Add(time.Hour).Format(time.RFC3339))
	if !strings.HasPrefix(out, "As of ") || !regexp.MustCompile(`Status:\s+deleted`).MatchString(out) {
		t.Errorf("show --at after the delete:\n%s", out)
	}
	// Text show lists every role.
	out = c.ok("token", "show", org.ID)
	if !regexp.MustCompile(`Roles:\s+ORGANIZATION_MEMBER in organization acme\n\s+WORKSPACE_OWNER in workspace w1\n`).MatchString(out) {
		t.Errorf("show lacks the roles:\n%s", out)
	}
}

// The done-when: a read right after a write through the CLI never
// misses it.
func TestCLIShowRightAfterCreateNeverMissesTheToken(t *testing.T) {
	url, secret := startInProcess(t)
	c := cli{t: t, env: map[string]string{"LEDGER_URL": url, "LEDGER_API_TOKEN": secret}}
	for i := range 50 {
		tok := c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", fmt.Sprintf("bot-%d", i))
		code, out, errOut := c.run("", "token", "show", tok.ID)
		if code != 0 || !strings.Contains(out, tok.ID) || !strings.Contains(out, fmt.Sprintf("bot-%d", i)) {
			t.Fatalf("show right after create #%d: exit %d\n%s%s", i, code, out, errOut)
		}
	}
}
