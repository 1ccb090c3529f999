package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"

	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
)

// startSetUpNATS starts a NATS server for `ledger serve --nats-url`, set
// up as an operator sets up theirs: `ledger nats setup` writes the
// credentials and the accounts, and the server, a nats-server process (the
// one of go.mod), runs a configuration file that includes the accounts
// file from beside it. It returns the server's URL and the credentials
// file, for --nats-credentials.
func startSetUpNATS(t *testing.T) (url, credentials string) {
	t.Helper()
	p := startSetUpNATSProcess(t)
	return p.url, p.credentials
}

// setUpNATS is a nats-server process set up as an operator sets up theirs.
type setUpNATS struct {
	url, credentials string
	cmd              *exec.Cmd
}

// startSetUpNATSProcess is startSetUpNATS, with the process (a test may
// freeze it).
func startSetUpNATSProcess(t *testing.T) *setUpNATS {
	t.Helper()
	var url string
	bin := goBuild(t, "nats-server", "github.com/nats-io/nats-server/v2")
	dir := t.TempDir()
	auth := filepath.Join(dir, "auth")
	if code, out, errOut := (cli{t: t}).run("", "nats", "setup", auth); code != 0 {
		t.Fatalf("ledger nats setup: exit %d: %s%s", code, out, errOut)
	}
	// A random port, which the server writes into the ports file once it
	// listens (JetStream is up by then).
	ports := filepath.Join(dir, "ports")
	if err := os.Mkdir(ports, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nats.conf")
	text := fmt.Sprintf("host: \"127.0.0.1\"\nport: -1\nports_file_dir: %q\njetstream { store_dir: %q }\ninclude auth/%s\n",
		ports, filepath.Join(dir, "jetstream"), natsAccountsFile)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", conf)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("nats-server, last lines:\n%s", lastLines(logs.String(), 20))
		}
	})
	waitUntil(t, 30*time.Second, "nats-server's ports file", func() (bool, string) {
		select {
		case <-done:
			t.Fatalf("nats-server exited: %s", lastLines(logs.String(), 10))
		default:
		}
		files, _ := filepath.Glob(filepath.Join(ports, "*.ports"))
		if len(files) == 0 {
			return false, "none yet"
		}
		b, _ := os.ReadFile(files[0])
		var p server.Ports
		if json.Unmarshal(b, &p) != nil || len(p.Nats) == 0 {
			return false, string(b) // being written
		}
		url = p.Nats[0]
		return true, ""
	})
	return &setUpNATS{url: url, credentials: filepath.Join(auth, natsCredentialsFile), cmd: cmd}
}

// startInProcess runs `ledger serve` in this process on an external test NATS
// server (--nats-url), after `ledger bootstrap` made the first token there,
// and returns the API's URL and the bootstrap secret.
func startInProcess(t *testing.T) (url, secret string) {
	t.Helper()
	natsURL, credentials := startSetUpNATS(t)
	secret = bootstrapVia(t, natsURL, credentials)
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: t.TempDir(), httpAddr: "127.0.0.1:0", natsURL: natsURL, natsCredentials: credentials, org: "acme", stream: "TOKENS", replicas: 1,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return "http://" + n.HTTPAddr(), secret
}

// bootstrapVia runs `ledger bootstrap --out FILE` for organization acme on
// the NATS at natsURL, as an operator does before the first `ledger serve
// --nats-url`, checks the file is the owner's alone, and returns the secret.
func bootstrapVia(t *testing.T, natsURL, credentials string, flags ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bootstrap-token")
	args := append([]string{"bootstrap", "--nats-url", natsURL, "--nats-credentials", credentials, "--org", "acme", "--out", path}, flags...)
	if code, out, errOut := (cli{t: t}).run("", args...); code != 0 {
		t.Fatalf("ledger bootstrap: exit %d: %s%s", code, out, errOut)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("bootstrap-token mode %v, want 0600", info.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
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
	if code, _, _ := c.run("", "serve", "--nats-listen", "127.0.0.1:1", "--nats-url", "nats://x", "--nats-credentials", "x.json"); code != exitUsage {
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

// With NATS embedded, `ledger serve` makes the bootstrap token itself: a
// crash between storing the token and renaming its secret's file into place
// leaves bootstrap-token.pending, which the next start puts in place.
func TestABootstrapSecretSavedJustBeforeACrashIsRecovered(t *testing.T) {
	dir := t.TempDir()
	opts := serveOptions{dataDir: dir, httpAddr: "127.0.0.1:0", natsListen: "127.0.0.1:0", org: "acme", stream: "TOKENS", replicas: 1}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := startLedger(context.Background(), opts, quiet)
	if err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(dir, "bootstrap-token")
	secret, _ := os.ReadFile(final)
	_ = n.Close()

	// The crash: the token was appended, the rename never happened.
	if err := os.Rename(final, final+".pending"); err != nil {
		t.Fatal(err)
	}
	n, err = startLedger(context.Background(), opts, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
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

// `ledger serve --nats-url` needs the credentials `ledger nats setup` wrote,
// and only then.
func TestServeNATSCredentialsUsageErrors(t *testing.T) {
	c := cli{t: t}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--nats-url", "nats://127.0.0.1:1"}, "--nats-url needs --nats-credentials"},
		{[]string{"serve", "--nats-credentials", "nats-credentials.json"}, "--nats-credentials goes with --nats-url"},
	} {
		code, _, errOut := c.run("", tc.args...)
		if code != exitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d saying %q", tc.args, code, errOut, exitUsage, tc.want)
		}
	}
}

// `ledger nats setup` makes the credentials once and keeps them; it writes
// the servers' files from them on every run, the route URLs (with the
// route password) only with --routes and readable by their owner only, and
// prints no secret.
func TestNATSSetupKeepsTheCredentialsAndWritesTheRoutesWithTheirPassword(t *testing.T) {
	c := cli{t: t}
	dir := filepath.Join(t.TempDir(), "auth")
	code, out, errOut := c.run("", "nats", "setup", dir)
	if code != 0 {
		t.Fatalf("setup: exit %d: %s", code, errOut)
	}
	credPath := filepath.Join(dir, natsCredentialsFile)
	creds, err := natsaccess.LoadCredentials(credPath)
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{creds.LedgerPassword, creds.SystemPassword, creds.RoutePassword, creds.IssuerSeed}
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{natsCredentialsFile, 0o600}, {natsAccountsFile, 0o644}, {natsRoutesFile, 0o644}} {
		info, err := os.Stat(filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.name, info.Mode().Perm(), f.mode)
		}
		if f.name == natsCredentialsFile {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(dir, f.name))
		for _, s := range secrets {
			if strings.Contains(string(b), s) {
				t.Errorf("%s holds a secret of %s", f.name, natsCredentialsFile)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, natsRouteURLsFile)); !os.IsNotExist(err) {
		t.Errorf("%s written without --routes: %v", natsRouteURLsFile, err)
	}

	// Again, with routes: the same credentials, and the routes with them.
	routes := []string{"nats-route://n1:6222", "nats-route://n2:6222", "nats-route://10.0.0.3:7222"}
	code, out2, errOut := c.run("", "nats", "setup", dir, "--routes", strings.Join(routes[:2], ","), "--routes", routes[2])
	if code != 0 {
		t.Fatalf("setup --routes: exit %d: %s", code, errOut)
	}
	if again, err := natsaccess.LoadCredentials(credPath); err != nil || again != creds {
		t.Fatalf("a second run changed the credentials (%v)", err)
	}
	for _, s := range secrets {
		if strings.Contains(out+out2, s) {
			t.Error("setup printed a secret")
		}
	}
	urlsPath := filepath.Join(dir, natsRouteURLsFile)
	if info, err := os.Stat(urlsPath); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, %v; want mode 0600: it holds the route password", natsRouteURLsFile, info, err)
	}
	// What nats-server makes of it, inside a cluster block as
	// docker/nats.conf includes it.
	conf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(conf, []byte("cluster {\n  port: 6222\n  include "+natsRoutesFile+"\n  include "+natsRouteURLsFile+"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, r := range opts.Routes {
		hosts = append(hosts, r.Scheme+"://"+r.Host)
		if pw, _ := r.User.Password(); r.User.Username() != natsaccess.RouteUser || pw != creds.RoutePassword {
			t.Errorf("the route to %s does not log in as %s with the route password", r.Host, natsaccess.RouteUser)
		}
	}
	if !slices.Equal(hosts, routes) {
		t.Errorf("routes %v, want %v", hosts, routes)
	}
	if opts.Cluster.Username != natsaccess.RouteUser || bcrypt.CompareHashAndPassword([]byte(opts.Cluster.Password), []byte(creds.RoutePassword)) != nil {
		t.Errorf("the cluster's authorization is not %s with the hash of the route password", natsaccess.RouteUser)
	}

	// Routes it cannot use are refused, and nothing is written.
	for _, bad := range []string{"n1:6222", "nats-route://ledger-route:x@n1:6222", "http://n1:6222", "nats-route://n1", "nats-route://n1:6222/x"} {
		empty := t.TempDir()
		if code, _, errOut := c.run("", "nats", "setup", empty, "--routes", bad); code != exitUsage || !strings.Contains(errOut, "--routes") {
			t.Errorf("--routes %s: exit %d, %s; want a usage error", bad, code, errOut)
		}
		if files, _ := os.ReadDir(empty); len(files) > 0 {
			t.Errorf("--routes %s: files written: %v", bad, files)
		}
	}
}
