package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

// TestKill9LosesNoAcknowledgedCommand runs `ledger serve` as a real process,
// sends it commands from several clients at once, kills it with SIGKILL at a
// random moment, and starts it again on the same data: every command that was
// answered is in the stream (the token's history) and in the view (show,
// list, verify), a command whose answer never came is there entirely or not
// at all, and the view the restart built from its snapshot and the stream's
// tail equals the one `--rebuild` makes from the first event. Several rounds:
// in some the ledger saves a snapshot every 25 ms (the kill may land during
// a save), in the others only at its clean stops, so the restart replays the
// whole round from the last one.
//
// The kill points come from a seed, logged; LEDGER_CRASH_SEED=N runs the same
// ones again (what the clients send between them depends on scheduling).
func TestKill9LosesNoAcknowledgedCommand(t *testing.T) {
	bin := goBuild(t, "ledger", ".")
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LEDGER_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("LEDGER_CRASH_SEED: %v", err)
		}
	}
	t.Logf("seed %d (LEDGER_CRASH_SEED=%d replays these kill points)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x6c6564676572))

	dir := t.TempDir()
	m := &model{tokens: map[string]*tracked{}}
	const rounds, clients = 4, 4
	ctx := context.Background()
	for round := range rounds {
		snapshotEvery := "0s"
		if round%2 == 1 {
			snapshotEvery = "25ms"
		}
		flags := []string{"--snapshot-every", snapshotEvery}
		live := startServeProcess(t, bin, dir, flags...)
		if m.owner == "" {
			b, err := os.ReadFile(filepath.Join(dir, "bootstrap-token"))
			if err != nil {
				t.Fatal(err)
			}
			m.owner = strings.TrimSpace(string(b))
		}
		killAfter := 30 + rng.IntN(170)
		jitter := time.Duration(rng.IntN(30)) * time.Millisecond
		t.Logf("round %d: snapshot every %s, SIGKILL %s after %d acknowledged commands", round, snapshotEvery, jitter, killAfter)

		var acked atomic.Int64
		reached := make(chan struct{})
		var once sync.Once
		onAck := func() {
			if acked.Add(1) == int64(killAfter) {
				once.Do(func() { close(reached) })
			}
		}
		var wg sync.WaitGroup
		for i := range clients {
			cl := &client{t: t, m: m, api: httpapi.NewClient("http://"+live.addr, m.owner), round: round, id: i,
				rng: rand.New(rand.NewPCG(rng.Uint64(), uint64(i))), onAck: onAck}
			wg.Go(cl.run)
		}
		select {
		case <-reached:
		case <-live.done:
			t.Fatalf("round %d: ledger serve exited before the kill:\n%s", round, live.logs.String())
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: only %d commands acknowledged in 60 s", round, acked.Load())
		}
		time.Sleep(jitter) // fault injection, not synchronisation: when the kill lands
		live.kill(t)
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		t.Logf("round %d: killed after %d acknowledged commands, %d unanswered", round, acked.Load(), m.inDoubt())
		if tmp, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*.tmp")); len(tmp) > 0 {
			t.Logf("round %d: the kill landed during a snapshot save", round)
		}

		restarted := startServeProcess(t, bin, dir, flags...)
		if round > 0 && !strings.Contains(restarted.logs.String(), "snapshot loaded") {
			t.Fatalf("round %d: the restart did not load the snapshot:\n%s", round, restarted.logs.String())
		}
		api := httpapi.NewClient("http://"+restarted.addr, m.owner)
		t.Logf("round %d: %d of the unanswered commands had been stored", round, m.check(t, ctx, api))
		afterRestart := views(t, ctx, api, m)
		restarted.stop(t)

		rebuilt := startServeProcess(t, bin, dir, append(flags, "--rebuild")...)
		if !strings.Contains(rebuilt.logs.String(), "rebuild requested") {
			t.Fatalf("round %d: --rebuild did not rebuild:\n%s", round, rebuilt.logs.String())
		}
		fromScratch := views(t, ctx, httpapi.NewClient("http://"+rebuilt.addr, m.owner), m)
		if afterRestart != fromScratch {
			t.Fatalf("round %d: the view after the restart differs from a full rebuild:\nrestart:\n%s\nrebuild:\n%s", round, afterRestart, fromScratch)
		}
		rebuilt.stop(t) // saves the snapshot the next round starts from
	}
	t.Logf("%d tokens, %d acknowledged events checked", len(m.tokens), m.events())
}

// model is what the clients were told: every token they made, and what each
// acknowledged command did to it.
type model struct {
	owner string
	mu    sync.Mutex
	// tokens by id.
	tokens map[string]*tracked
	// creates in doubt (the kill cut their answer off), by token name.
	doubtCreates map[string]bool
}

// tracked is one token as its client knows it.
type tracked struct {
	id    string
	scope domain.Scope
	// events: each acknowledged event of the token, in order.
	events []ackedEvent
	// last is the answer of the last acknowledged command: the token then.
	last httpapi.Token
	// secrets issued to it, oldest first; secretUnknown: a rotation whose
	// answer never came was stored, so the current secret is nobody's.
	secrets       []string
	secretUnknown bool
	// doubt is the command the kill cut off, if any: stored or not.
	doubt domain.EventType
}

type ackedEvent struct {
	typ      domain.EventType
	sequence uint64
	version  uint64
}

func (m *model) inDoubt() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.doubtCreates)
	for _, tr := range m.tokens {
		if tr.doubt != "" {
			n++
		}
	}
	return n
}

func (m *model) events() int {
	n := 0
	for _, tr := range m.tokens {
		n += len(tr.events)
	}
	return n
}

// client sends commands on tokens of its own, one at a time, until the
// ledger stops answering.
type client struct {
	t     *testing.T
	m     *model
	api   *httpapi.Client
	round int
	id    int
	rng   *rand.Rand
	onAck func()
	mine  []*tracked // live tokens made this round
	made  int
}

func (c *client) run() {
	ctx := context.Background()
	for {
		tr, typ, call := c.next()
		ans, err := call(ctx)
		var unreachable *httpapi.UnreachableError
		switch {
		case errors.As(err, &unreachable):
			// Killed: the command may or may not have been stored.
			c.m.mu.Lock()
			if tr == nil {
				if c.m.doubtCreates == nil {
					c.m.doubtCreates = map[string]bool{}
				}
				c.m.doubtCreates[c.pendingName()] = true
			} else {
				tr.doubt = typ
			}
			c.m.mu.Unlock()
			return
		case err != nil:
			c.t.Errorf("client %d: %s refused before the kill: %v", c.id, typ, err)
			return
		}
		c.acknowledged(tr, typ, ans)
		c.onAck()
	}
}

func (c *client) pendingName() string { return fmt.Sprintf("r%d-c%d-t%d", c.round, c.id, c.made) }

// next picks a command: a create while the client has few tokens, else
// mostly updates, rotations and (organization tokens) assignments, now and
// then a deletion.
func (c *client) next() (*tracked, domain.EventType, func(context.Context) (httpapi.Token, error)) {
	if len(c.mine) < 3 || c.rng.IntN(10) == 0 {
		req := httpapi.CreateRequest{Scope: "organization", Name: c.pendingName()}
		if c.rng.IntN(2) == 0 {
			req.Scope, req.WorkspaceID = "workspace", fmt.Sprintf("w%d", c.id)
		}
		return nil, domain.TokenCreated, func(ctx context.Context) (httpapi.Token, error) { return c.api.CreateToken(ctx, req, "") }
	}
	i := c.rng.IntN(len(c.mine))
	tr := c.mine[i]
	id := tr.id
	switch r := c.rng.IntN(20); {
	case r == 0:
		c.mine = slices.Delete(c.mine, i, i+1)
		return tr, domain.TokenDeleted, func(ctx context.Context) (httpapi.Token, error) { return c.api.DeleteToken(ctx, id) }
	case r < 6:
		desc := fmt.Sprintf("step %d", c.rng.IntN(4)) // the same one again is a no-op: no event
		return tr, domain.TokenUpdated, func(ctx context.Context) (httpapi.Token, error) {
			return c.api.UpdateToken(ctx, id, httpapi.UpdateRequest{Description: &desc})
		}
	case r < 12 || tr.scope != domain.ScopeOrganization:
		return tr, domain.TokenRotated, func(ctx context.Context) (httpapi.Token, error) { return c.api.RotateToken(ctx, id) }
	}
	ws := fmt.Sprintf("w%d-%d", c.id, c.rng.IntN(3))
	if _, assigned := tr.last.WorkspaceRoles[ws]; assigned && c.rng.IntN(2) == 0 {
		return tr, domain.TokenUnassigned, func(ctx context.Context) (httpapi.Token, error) { return c.api.UnassignToken(ctx, id, ws) }
	}
	role := []string{"WORKSPACE_MEMBER", "WORKSPACE_AUTHOR", "WORKSPACE_OPERATOR"}[c.rng.IntN(3)]
	return tr, domain.TokenAssigned, func(ctx context.Context) (httpapi.Token, error) { return c.api.AssignToken(ctx, id, ws, role) }
}

// acknowledged records a command's answer. A command that changed nothing
// (the same description again) is answered without an event, at the same
// version.
func (c *client) acknowledged(tr *tracked, typ domain.EventType, ans httpapi.Token) {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	if tr == nil {
		c.made++
		tr = &tracked{id: ans.ID, scope: ans.Scope}
		c.m.tokens[ans.ID] = tr
		c.mine = append(c.mine, tr)
	}
	prev := tr.last.Version
	switch ans.Version {
	case prev:
		if typ != domain.TokenUpdated && typ != domain.TokenAssigned {
			c.t.Errorf("token %s: %s answered at the same version %d", tr.id, typ, prev)
		}
	case prev + 1:
		tr.events = append(tr.events, ackedEvent{typ: typ, sequence: ans.Sequence, version: ans.Version})
	default:
		c.t.Errorf("token %s: %s answered version %d after %d", tr.id, typ, ans.Version, prev)
	}
	if ans.Secret != "" {
		tr.secrets = append(tr.secrets, ans.Secret)
	}
	tr.last = ans
}

// check compares what a restarted ledger holds with what the clients were
// told, and settles each command in doubt by what was stored; it returns how
// many were.
func (m *model) check(t *testing.T, ctx context.Context, api *httpapi.Client) (stored int) {
	t.Helper()
	list, err := api.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inView := map[string]httpapi.Token{}
	for _, tok := range list.Tokens {
		inView[tok.ID] = tok
	}
	for _, tr := range m.tokens {
		tok, ok := inView[tr.id]
		if !ok {
			t.Fatalf("token %s, whose creation was acknowledged, is not in the list", tr.id)
		}
		delete(inView, tr.id)
		hist, err := api.TokenHistory(ctx, tr.id)
		if err != nil {
			t.Fatal(err)
		}
		extra := len(hist.Events) - len(tr.events)
		if extra < 0 || extra > 1 || extra == 1 && tr.doubt == "" {
			t.Fatalf("token %s: the stream holds %d events, %d were acknowledged (in doubt: %q)", tr.id, len(hist.Events), len(tr.events), tr.doubt)
		}
		for i, e := range hist.Events {
			if e.Version != uint64(i+1) {
				t.Fatalf("token %s: event %d has version %d", tr.id, i, e.Version)
			}
			if i < len(tr.events) && (e.Sequence != tr.events[i].sequence || e.EventType != tr.events[i].typ) {
				t.Fatalf("token %s: event %d is %s at %d, but %s at %d was acknowledged", tr.id, i, e.EventType, e.Sequence, tr.events[i].typ, tr.events[i].sequence)
			}
		}
		if extra == 1 {
			// The command in doubt was stored: the view must show it.
			e := hist.Events[len(hist.Events)-1]
			if e.EventType != tr.doubt || tok.Version != e.Version || tok.Sequence != e.Sequence {
				t.Fatalf("token %s: stored %s at %d (version %d) for the command in doubt (%s); the view is at version %d, sequence %d", tr.id, e.EventType, e.Sequence, e.Version, tr.doubt, tok.Version, tok.Sequence)
			}
			stored++
			tr.events = append(tr.events, ackedEvent{typ: e.EventType, sequence: e.Sequence, version: e.Version})
			tr.secretUnknown = tr.secretUnknown || e.EventType == domain.TokenRotated
			tr.last = tok
		} else if got, want := shown(tok), shown(tr.last); got != want {
			t.Fatalf("token %s: the view shows\n%s\nbut the last acknowledged command answered\n%s", tr.id, got, want)
		}
		tr.doubt = ""
		m.checkSecrets(t, ctx, api, tr, tok)
	}
	// What is left: the bootstrap token, and tokens whose creation was in
	// doubt and stored.
	for id, tok := range inView {
		switch {
		case tok.Name == "bootstrap":
		case m.doubtCreates[tok.Name]:
			hist, err := api.TokenHistory(ctx, id)
			if err != nil || len(hist.Events) != 1 {
				t.Fatalf("token %s, created in doubt: %d events, %v", id, len(hist.Events), err)
			}
			stored++
			m.tokens[id] = &tracked{id: id, scope: tok.Scope, last: tok, secretUnknown: true,
				events: []ackedEvent{{typ: domain.TokenCreated, sequence: hist.Events[0].Sequence, version: 1}}}
		default:
			t.Fatalf("token %s (%s) is in the view, but nobody created it", id, tok.Name)
		}
	}
	m.doubtCreates = nil
	return stored
}

// checkSecrets: the last secret issued verifies while the token is active;
// every earlier one is refused as rotated away.
func (m *model) checkSecrets(t *testing.T, ctx context.Context, api *httpapi.Client, tr *tracked, tok httpapi.Token) {
	t.Helper()
	for i, s := range tr.secrets {
		v, err := api.Verify(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		current := i == len(tr.secrets)-1 && !tr.secretUnknown && tok.Status == domain.StatusActive
		if v.Valid != current {
			t.Fatalf("token %s (%s): secret %d of %d verifies %v (%s), want %v", tr.id, tok.Status, i+1, len(tr.secrets), v.Valid, v.Status, current)
		}
		if !current && tok.Status == domain.StatusActive && v.Status != "rotated" {
			t.Fatalf("token %s: an earlier secret verifies as %s, want rotated", tr.id, v.Status)
		}
	}
}

// shown is a token's JSON without what a view keeps outside the stream
// (when it was last used) and what only a command's answer carries.
func shown(tok httpapi.Token) string {
	tok.LastUsedAt, tok.Secret, tok.IdempotentReplay = nil, "", false
	b, _ := json.MarshalIndent(tok, "", " ")
	return string(b)
}

// views is everything the ledger answers from its views about the tokens:
// every token, and who holds a role in each workspace the clients used.
func views(t *testing.T, ctx context.Context, api *httpapi.Client, m *model) string {
	t.Helper()
	list, err := api.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	workspaces := map[string]bool{}
	for _, tok := range list.Tokens {
		b.WriteString(shown(tok) + "\n")
		if tok.WorkspaceID != nil {
			workspaces[*tok.WorkspaceID] = true
		}
		for ws := range tok.WorkspaceRoles {
			workspaces[ws] = true
		}
	}
	for _, ws := range slices.Sorted(func(yield func(string) bool) {
		for ws := range workspaces {
			if !yield(ws) {
				return
			}
		}
	}) {
		roles, err := api.Roles(ctx, ws, "")
		if err != nil {
			t.Fatal(err)
		}
		out, _ := json.Marshal(roles)
		fmt.Fprintf(&b, "roles in %s: %s\n", ws, out)
	}
	return b.String()
}

// goBuild builds pkg (a package path, or "." for the ledger of this tree)
// into a binary named name in a temporary directory.
func goBuild(t *testing.T, name, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	build := exec.Command("go", "build", "-o", bin, pkg)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// serveProcess is a `ledger serve` process.
type serveProcess struct {
	cmd  *exec.Cmd
	addr string
	logs *syncBuffer
	done chan struct{}
	err  error // how it exited, once done is closed
}

// startServeProcess starts `ledger serve` on data directory dir, on free
// ports, and returns once it serves.
func startServeProcess(t *testing.T, bin, dir string, flags ...string) *serveProcess {
	t.Helper()
	args := append([]string{"serve", "--data", dir, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0"}, flags...)
	p := &serveProcess{cmd: exec.Command(bin, args...), logs: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stderr = p.logs
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.cmd.Process.Kill(); <-p.done })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ledger serving on http://"); ok {
				addr <- strings.Fields(a)[0]
			}
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	select {
	case p.addr = <-addr:
	case <-p.done:
		t.Fatalf("ledger serve exited at start: %v\n%s", p.err, p.logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("ledger serve did not start within 60 s:\n%s", p.logs.String())
	}
	return p
}

// kill sends SIGKILL: no shutdown, no snapshot, no flush.
func (p *serveProcess) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// stop sends SIGTERM and expects a clean exit.
func (p *serveProcess) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("ledger serve did not exit cleanly on SIGTERM: %v\n%s", p.err, p.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("ledger serve did not stop within 30 s of SIGTERM")
	}
}
