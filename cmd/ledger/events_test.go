package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
)

// startLockedDown runs `ledger serve` in this process with its embedded,
// locked-down NATS server on a random port, as a user runs it: `events tail`
// then connects as a service may, without credentials.
func startLockedDown(t *testing.T) (c cli, natsURL string) {
	t.Helper()
	dir := t.TempDir()
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: dir, httpAddr: "127.0.0.1:0", natsListen: "127.0.0.1:0", org: "acme", stream: "TOKENS", replicas: 1,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.close() })
	b, err := os.ReadFile(filepath.Join(dir, "bootstrap-token"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"LEDGER_URL": "http://" + n.httpAddr, "LEDGER_API_TOKEN": strings.TrimSpace(string(b))}
	return cli{t: t, env: env}, n.natsClientURL
}

// lineSink collects what a running command writes, line by line, for a test
// to wait on.
type lineSink struct {
	mu    sync.Mutex
	part  []byte
	all   bytes.Buffer
	lines chan string
}

func newLineSink() *lineSink { return &lineSink{lines: make(chan string, 10000)} }

func (s *lineSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all.Write(p)
	s.part = append(s.part, p...)
	for {
		i := bytes.IndexByte(s.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		s.lines <- string(s.part[:i])
		s.part = s.part[i+1:]
	}
}

func (s *lineSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all.String()
}

// next returns the next line, failing the test if none comes in time.
func (s *lineSink) next(t *testing.T, what string) string {
	t.Helper()
	select {
	case l := <-s.lines:
		return l
	case <-time.After(20 * time.Second):
		t.Fatalf("no %s within 20 s; so far:\n%s", what, s.String())
		return ""
	}
}

type tailRun struct {
	out, err *lineSink
	stop     context.CancelFunc
	code     chan int
}

// startTail runs `ledger <args>` until stopped, and returns once it follows
// the stream (its "following" line), so events written after that must
// reach it.
func startTail(t *testing.T, env map[string]string, args ...string) *tailRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &tailRun{out: newLineSink(), err: newLineSink(), stop: cancel, code: make(chan int, 1)}
	go func() {
		r.code <- run(ctx, args, strings.NewReader(""), r.out, r.err, func(k string) string { return env[k] })
	}()
	t.Cleanup(func() {
		cancel()
		<-r.code
	})
	select {
	case l := <-r.err.lines:
		if !strings.HasPrefix(l, "following ") {
			t.Fatalf("tail's first line on stderr = %q", l)
		}
	case code := <-r.code:
		t.Fatalf("tail exited %d before following: %s", code, r.err.String())
	case <-time.After(20 * time.Second):
		t.Fatal("tail does not follow after 20 s")
	}
	return r
}

// end interrupts tail as Ctrl-C does and returns its exit code.
func (r *tailRun) end(t *testing.T) int {
	t.Helper()
	r.stop()
	select {
	case code := <-r.code:
		r.code <- code // for the cleanup
		return code
	case <-time.After(20 * time.Second):
		t.Fatal("tail still running 20 s after the interrupt")
		return -1
	}
}

func TestEventsTailFollowsOnlyTheRotationsAsJSON(t *testing.T) {
	c, natsURL := startLockedDown(t)
	a := c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", "api-a")
	b := c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", "api-b")
	last := c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", "last")

	// The URL from the environment, as the README's services get it.
	env := map[string]string{"LEDGER_NATS_URL": natsURL}
	tail := startTail(t, env, "events", "tail", "--type", "TokenRotated", "-o", "json")

	rotate := func(id string) (seq uint64, secret string) {
		t.Helper()
		code, out, errOut := c.run("", "token", "rotate", id, "-o", "json")
		var r struct {
			Sequence uint64 `json:"sequence"`
			Token    string `json:"token"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
			t.Fatalf("rotate %s: %d %s%s", id, code, out, errOut)
		}
		return r.Sequence, r.Token
	}
	type want struct {
		seq   uint64
		id    string
		name  string
		fresh string // the secret the rotation gave, which must not appear
	}
	var wants []want
	s, sec := rotate(a.ID)
	wants = append(wants, want{s, a.ID, "api-a", sec})
	c.ok("token", "update", b.ID, "--name", "api-b2")
	s, sec = rotate(b.ID)
	wants = append(wants, want{s, b.ID, "api-b2", sec})
	c.ok("token", "delete", a.ID, "--confirm", "Delete")
	c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", "unseen")
	// The last rotation closes the list: the stream is ordered, so anything
	// else tail printed would come before it.
	s, sec = rotate(last.ID)
	wants = append(wants, want{s, last.ID, "last", sec})

	for i, w := range wants {
		line := tail.out.next(t, "rotation line")
		if strings.Contains(line, "hash") || strings.Contains(line, w.fresh) || strings.Contains(line, a.Secret) {
			t.Errorf("line %d shows a hash or a secret: %s", i, line)
		}
		var got struct {
			EventType      string         `json:"event_type"`
			EventID        string         `json:"event_id"`
			TokenID        string         `json:"token_id"`
			TokenName      string         `json:"token_name"`
			OrganizationID string         `json:"organization_id"`
			OccurredAt     time.Time      `json:"occurred_at"`
			Sequence       uint64         `json:"sequence"`
			ActorTokenID   string         `json:"actor_token_id"`
			Data           map[string]any `json:"data"`
		}
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i, err, line)
		}
		if got.EventType != "TokenRotated" || got.TokenID != w.id || got.TokenName != w.name || got.OrganizationID != "acme" ||
			got.Sequence != w.seq || got.EventID == "" || !strings.HasPrefix(got.ActorTokenID, "tok_") ||
			time.Since(got.OccurredAt) > time.Minute {
			t.Errorf("line %d = %s\nwant a TokenRotated of %s (%s) at sequence %d", i, line, w.id, w.name, w.seq)
		}
		if got.Data["fingerprint"] != domain.Fingerprint(w.fresh) || got.Data["previous_fingerprint"] == nil {
			t.Errorf("line %d data = %v", i, got.Data)
		}
	}
	if code := tail.end(t); code != 0 {
		t.Fatalf("tail exit %d after the interrupt: %s", code, tail.err.String())
	}
	if extra := len(tail.out.lines); extra != 0 {
		t.Fatalf("%d lines after the last rotation: %s", extra, tail.out.String())
	}
	if strings.Contains(tail.err.String(), "warning") {
		t.Fatalf("warnings on stderr: %s", tail.err.String())
	}

	// --from-start: the organization's whole history, oldest first, as text.
	hist := startTail(t, env, "events", "tail", "--from-start", "--org", "acme", "--nats-url", natsURL)
	first := hist.out.next(t, "first history line")
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  #1  TokenCreated\s+org=acme  token=tok_\S+  name="bootstrap"  actor=system  created ORGANIZATION token "bootstrap" as ORGANIZATION_OWNER; fingerprint [0-9a-f]{8}…$`).MatchString(first) {
		t.Fatalf("first line of the history = %q", first)
	}
	seen := []string{first}
	for !strings.Contains(seen[len(seen)-1], "#"+strconv.FormatUint(wants[2].seq, 10)+" ") {
		seen = append(seen, hist.out.next(t, "history line"))
	}
	text := strings.Join(seen, "\n")
	for _, want := range []string{
		`TokenUpdated\s+org=acme  token=` + b.ID + `  name="api-b2"  actor=tok_\S+  name "api-b" -> "api-b2"`,
		`TokenRotated\s+org=acme  token=` + a.ID + `  name="api-a"  actor=tok_\S+  new secret, fingerprint [0-9a-f]{8}… \(was [0-9a-f]{8}…\)`,
		`TokenDeleted\s+org=acme  token=` + a.ID + `  name="api-a"  actor=tok_\S+  deleted`,
		`name="unseen"`,
	} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Errorf("history lacks %s:\n%s", want, text)
		}
	}
	if len(seen) != int(wants[2].seq) {
		t.Errorf("%d history lines up to sequence %d:\n%s", len(seen), wants[2].seq, text)
	}
	if code := hist.end(t); code != 0 {
		t.Fatalf("tail --from-start exit %d: %s", code, hist.err.String())
	}
}

// A message that is not an event (only a writer bypassing the ledger can
// store one, here on an open test server) is a warning; tail goes on.
func TestEventsTailWarnsOfAMessageThatIsNotAnEvent(t *testing.T) {
	store, js, ns := eventstoretest.MustStore(t)
	ctx := context.Background()
	if _, err := js.Publish(ctx, "ledger.tokens.acme.tok_aaaaaaaaaaaaaaaaaaaaaaaaaa.TokenRotated", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	_, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "fine", Role: "ORGANIZATION_MEMBER"},
		domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, e, 0); err != nil {
		t.Fatal(err)
	}
	tail := startTail(t, nil, "events", "tail", "--from-start", "--nats-url", ns.ClientURL(), "-o", "json")
	warning := tail.err.next(t, "warning")
	if !strings.HasPrefix(warning, "warning: stream sequence 1 (ledger.tokens.acme.tok_aaaaaaaaaaaaaaaaaaaaaaaaaa.TokenRotated): not a ledger event, skipped:") {
		t.Fatalf("warning = %q", warning)
	}
	if line := tail.out.next(t, "the event after it"); !strings.Contains(line, `"sequence":2`) || !strings.Contains(line, `"token_name":"fine"`) || strings.Contains(line, "hash") {
		t.Fatalf("line after the warning = %s", line)
	}
	if code := tail.end(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestEventsTailUsageErrors(t *testing.T) {
	c := cli{t: t, env: map[string]string{}}
	code, _, errOut := c.run("", "events", "tail", "--type", "TokenRotated", "--type", "TokenRevoked")
	if code != exitUsage || !strings.Contains(errOut, `--type "TokenRevoked": unknown event type; valid: TokenCreated, TokenUpdated, TokenRotated, TokenAssigned, TokenUnassigned, TokenDeleted, TokenReuseDetected`) {
		t.Fatalf("unknown --type: exit %d: %s", code, errOut)
	}
	for _, args := range [][]string{
		{"events", "tail", "--org", "acme.>"},
		{"events", "tail", "--org", "*"},
		{"events", "tail", "-o", "yaml"},
		{"events", "tail", "extra"},
		{"events", "tial"},
		{"events", "tail", "--from-start=maybe"},
	} {
		if code, _, errOut := c.run("", args...); code != exitUsage {
			t.Errorf("ledger %s: exit %d, want %d: %s", strings.Join(args, " "), code, exitUsage, errOut)
		}
	}
	// No NATS there: unreachable, as for the API.
	code, _, errOut = c.run("", "events", "tail", "--nats-url", "nats://127.0.0.1:1")
	if code != exitNoReach || !strings.Contains(errOut, "nats://127.0.0.1:1") {
		t.Fatalf("unreachable NATS: exit %d: %s", code, errOut)
	}
}
