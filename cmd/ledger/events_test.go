package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/natsaccess/natsaccesstest"
	"github.com/tokenledger/tokenledger/node"
)

// startLockedDown runs `ledger serve` in this process with its embedded,
// locked-down NATS server on a random port, as a user runs it: `events tail`
// then logs in as a service does, with an API token.
func startLockedDown(t *testing.T) (c cli, natsURL string) {
	c, natsURL, _ = startLockedDownNode(t)
	return c, natsURL
}

// startLockedDownNode is startLockedDown, with the ledger itself.
func startLockedDownNode(t *testing.T) (c cli, natsURL string, n *node.Node) {
	t.Helper()
	dir := t.TempDir()
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: dir, httpAddr: "127.0.0.1:0", natsListen: "127.0.0.1:0", org: "acme", stream: "TOKENS", replicas: 1,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	b, err := os.ReadFile(filepath.Join(dir, "bootstrap-token"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"LEDGER_URL": "http://" + n.HTTPAddr(), "LEDGER_API_TOKEN": strings.TrimSpace(string(b))}
	return cli{t: t, env: env}, n.NATSClientURL(), n
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

	// The URL from the environment, as the README's services get it, and
	// the owner's token.
	env := map[string]string{"LEDGER_NATS_URL": natsURL, "LEDGER_API_TOKEN": c.env["LEDGER_API_TOKEN"]}
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
	// Each tail read through a one-off consumer of the token, which the
	// server removes once tail stopped reading (services cannot delete
	// consumers): every name is free again.
	deadline := time.Now().Add(3 * tailInactiveThreshold)
	for len(usedConsumers(t, natsURL, c.env["LEDGER_API_TOKEN"])) != 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if used := usedConsumers(t, natsURL, c.env["LEDGER_API_TOKEN"]); len(used) != 0 {
		t.Fatalf("consumers left behind: %v", used)
	}
}

// usedConsumers lists the consumer names of the token whose secret this is
// that hold a consumer.
func usedConsumers(t *testing.T, natsURL, secret string) []string {
	t.Helper()
	nc, err := nats.Connect(natsURL, natsaccess.Options(secret)...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id, err := natsaccess.WhoAmI(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := natsaccess.JetStream(nc)
	var used []string
	for _, name := range id.Consumers {
		_, err := js.Consumer(ctx, "TOKENS", name)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound):
		case err != nil:
			t.Fatal(err)
		default:
			used = append(used, name)
		}
	}
	return used
}

// tailConsumers is usedConsumers less the ones a test read with itself.
func tailConsumers(t *testing.T, natsURL, secret string) []string {
	t.Helper()
	nc, err := nats.Connect(natsURL, natsaccess.Options(secret)...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, _ := natsaccess.JetStream(nc)
	var out []string
	for _, name := range usedConsumers(t, natsURL, secret) {
		if c, err := js.Consumer(ctx, "TOKENS", name); err == nil && c.CachedInfo().Config.Description == "ledger events tail" {
			out = append(out, name)
		}
	}
	return out
}

// waitMirrored waits until the services' mirror, which follows the ledger's
// stream within milliseconds, holds stream sequence seq (an event the token
// whose secret this is may read).
func waitMirrored(t *testing.T, natsURL, secret string, seq uint64) {
	t.Helper()
	nc, err := nats.Connect(natsURL, natsaccess.Options(secret)...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id, err := natsaccess.WhoAmI(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := natsaccess.JetStream(nc)
	c, err := natsaccess.ClaimConsumer(ctx, js, "TOKENS", id, "", jetstream.ConsumerConfig{
		FilterSubject: id.Filter, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: seq, InactiveThreshold: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	for {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending > 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the services' mirror does not hold sequence %d after 20 s", seq)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// A workspace token reads only its own token's events, and tail stops,
// saying why, once the token is rotated (the ledger cuts the connection and
// the server refuses the old secret). A token the ledger does not know, or
// an organization that is not the token's, is refused at the start.
func TestEventsTailReadsWhatItsTokenMay(t *testing.T) {
	c, natsURL := startLockedDown(t)
	w := c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", "watcher")
	other := c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", "other")
	env := map[string]string{"LEDGER_NATS_URL": natsURL, "LEDGER_API_TOKEN": w.Secret}
	tail := startTail(t, env, "events", "tail", "--from-start")
	if line := tail.out.next(t, "the watcher's creation"); !strings.Contains(line, "TokenCreated") || !strings.Contains(line, "token="+w.ID) {
		t.Fatalf("first line = %q", line)
	}
	c.ok("token", "rotate", other.ID)
	c.ok("token", "update", w.ID, "--name", "watcher-2")
	if line := tail.out.next(t, "the watcher's rename"); !strings.Contains(line, "TokenUpdated") || !strings.Contains(line, "token="+w.ID) {
		t.Fatalf("second line = %q (the other token's rotation is not the watcher's to read)", line)
	}
	c.ok("token", "rotate", w.ID)
	select {
	case code := <-tail.code:
		tail.code <- code
		if code != exitFailed || !strings.Contains(tail.err.String(), "closed the connection") || !strings.Contains(tail.err.String(), "rotated or deleted") {
			t.Fatalf("tail after its token's rotation: exit %d: %s", code, tail.err.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("tail still runs 30 s after its token was rotated")
	}
	// It printed nothing more: the rotation came after the cut, or was its
	// last line.
	for len(tail.out.lines) > 0 {
		if line := <-tail.out.lines; !strings.Contains(line, "TokenRotated") || !strings.Contains(line, "token="+w.ID) {
			t.Fatalf("a line after the rename: %q", line)
		}
	}
	if strings.Contains(tail.err.String(), w.Secret) {
		t.Fatal("stderr shows the secret")
	}

	code, _, errOut := cli{t: t, env: env}.run("", "events", "tail")
	if code != exitFailed || !strings.Contains(errOut, "refused LEDGER_API_TOKEN") {
		t.Fatalf("tail with the rotated-out secret: exit %d: %s", code, errOut)
	}
	env["LEDGER_API_TOKEN"] = c.env["LEDGER_API_TOKEN"]
	code, _, errOut = cli{t: t, env: env}.run("", "events", "tail", "--org", "globex")
	if code != exitUsage || !strings.Contains(errOut, `--org "globex": LEDGER_API_TOKEN belongs to organization "acme"`) {
		t.Fatalf("tail of another organization: exit %d: %s", code, errOut)
	}
}

// A consumer that vanishes under tail (deleted, or lost with a server's
// restart) is replaced by one that starts right after the last event tail
// had: nothing is skipped, nothing printed twice.
func TestEventsTailFollowsOnWhenItsConsumerIsGone(t *testing.T) {
	c, natsURL, n := startLockedDownNode(t)
	secret := c.env["LEDGER_API_TOKEN"]
	env := map[string]string{"LEDGER_NATS_URL": natsURL, "LEDGER_API_TOKEN": secret}
	// New events are new to the services' mirror: once it has the
	// bootstrap, tail starts after it.
	waitMirrored(t, natsURL, secret, 1)
	tail := startTail(t, env, "events", "tail", "-o", "json")
	seqOf := func(line string) uint64 {
		t.Helper()
		var l struct {
			Sequence uint64 `json:"sequence"`
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		return l.Sequence
	}
	a := c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", "a")
	first := seqOf(tail.out.next(t, "the first creation"))
	used := tailConsumers(t, natsURL, secret)
	if len(used) != 1 {
		t.Fatalf("tail uses consumers %v, want one", used)
	}
	// The operator deletes it (services cannot).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.MirrorJetStream().DeleteConsumer(ctx, "TOKENS", used[0]); err != nil {
		t.Fatal(err)
	}
	c.ok("token", "rotate", a.ID)
	c.createJSON("--scope", "workspace", "--workspace", "w1", "--name", "b")
	for want := first + 1; want <= first+2; want++ {
		if got := seqOf(tail.out.next(t, "an event after the consumer was deleted")); got != want {
			t.Fatalf("sequence %d after the consumer was deleted, want %d", got, want)
		}
	}
	if code := tail.end(t); code != 0 {
		t.Fatalf("exit %d: %s", code, tail.err.String())
	}
	if len(tail.out.lines) != 0 {
		t.Fatalf("more lines: %s", tail.out.String())
	}
}

// A message that is not an event (only a writer bypassing the ledger can
// store one, here the test on the ledger's own connection) is a warning;
// tail goes on.
func TestEventsTailWarnsOfAMessageThatIsNotAnEvent(t *testing.T) {
	l := natsaccesstest.Start(t, natsaccesstest.Options{}) // the bootstrap is sequence 1
	store, js := l.Store, l.LedgerJS
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
	tail := startTail(t, map[string]string{"LEDGER_API_TOKEN": l.OwnerSecret}, "events", "tail", "--from-start", "--nats-url", l.URL, "-o", "json")
	if line := tail.out.next(t, "the bootstrap"); !strings.Contains(line, `"sequence":1`) {
		t.Fatalf("first line = %s", line)
	}
	warning := tail.err.next(t, "warning")
	if !strings.HasPrefix(warning, "warning: stream sequence 2 (ledger.tokens.acme.tok_aaaaaaaaaaaaaaaaaaaaaaaaaa.TokenRotated): not a ledger event, skipped:") {
		t.Fatalf("warning = %q", warning)
	}
	if line := tail.out.next(t, "the event after it"); !strings.Contains(line, `"sequence":3`) || !strings.Contains(line, `"token_name":"fine"`) || strings.Contains(line, "hash") {
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
	// No token: a usage error, before anything connects.
	if code, _, errOut := c.run("", "events", "tail", "--nats-url", "nats://127.0.0.1:1"); code != exitUsage || !strings.Contains(errOut, "LEDGER_API_TOKEN is not set") {
		t.Fatalf("no token: exit %d: %s", code, errOut)
	}
	// No NATS there: unreachable, as for the API.
	c.env["LEDGER_API_TOKEN"] = "tlo_whatever"
	code, _, errOut = c.run("", "events", "tail", "--nats-url", "nats://127.0.0.1:1")
	if code != exitNoReach || !strings.Contains(errOut, "nats://127.0.0.1:1") {
		t.Fatalf("unreachable NATS: exit %d: %s", code, errOut)
	}
}
