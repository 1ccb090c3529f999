package node_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/natsaccess/natsaccesstest"
	"github.com/tokenledger/tokenledger/node"
)

// embedded is a ledger's configuration on its own embedded NATS, on free
// ports, with its data in dir.
func embedded(dir string) node.Config {
	cfg := node.DefaultConfig()
	cfg.DataDir, cfg.HTTPAddr, cfg.NATSListen, cfg.Org = dir, "127.0.0.1:0", "127.0.0.1:0", "acme"
	return cfg
}

func start(t *testing.T, cfg node.Config, log *slog.Logger) *node.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, err := node.Start(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// ownerOf is the bootstrap token of a ledger on embedded NATS, from the file
// its first start wrote.
func ownerOf(t *testing.T, n *node.Node, path string) (app.Caller, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimSpace(string(b))
	tok, err := n.Ledger().Authenticate(secret, app.Source{})
	if err != nil {
		t.Fatalf("the bootstrap secret: %v", err)
	}
	return app.Caller{Token: tok, RequestID: "test", SourceIP: "127.0.0.1"}, secret
}

// A second ledger on a data directory in use is refused before it touches
// anything, with an error naming the process that holds it; the first goes
// on serving, and once it stops the directory can be used again (its
// stream and bootstrap token are there).
func TestASecondLedgerOnTheSameDataDirectoryIsRefused(t *testing.T) {
	dir := t.TempDir()
	first := start(t, embedded(dir), quiet)
	owner, _ := ownerOf(t, first, first.BootstrapPath())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second, err := node.Start(ctx, embedded(dir), quiet)
	if err == nil {
		second.Close()
		t.Fatal("a second ledger started on a data directory in use")
	}
	if !errors.Is(err, node.ErrDataDirInUse) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second ledger: %v; want the data directory in use by pid %d", err, os.Getpid())
	}
	res, err := first.Ledger().CreateToken(ctx, owner, domain.CreateToken{Scope: "organization", Name: "after the refusal"}, "")
	if err != nil {
		t.Fatalf("the first ledger after the second was refused: %v", err)
	}
	if status := get(t, "http://"+first.HTTPAddr()+"/readyz"); status != http.StatusOK {
		t.Fatalf("the first ledger's /readyz after the second was refused: %d", status)
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again := start(t, embedded(dir), quiet)
	owner, _ = ownerOf(t, again, filepath.Join(dir, "bootstrap-token"))
	if _, _, err := again.Ledger().GetToken(ctx, owner, res.Token.ID(), res.Sequence); err != nil {
		t.Fatalf("the token made before the restart: %v", err)
	}
}

// A start that cannot reach NATS waits for as long as its context lets it,
// says what it waited for, and leaves nothing behind: the data directory is
// free again.
func TestAStartThatGivesUpReleasesTheDataDirectory(t *testing.T) {
	creds, err := natsaccess.NewCredentials()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := node.DefaultConfig()
	cfg.DataDir, cfg.HTTPAddr = dir, "127.0.0.1:0"
	cfg.NATSURL, cfg.Credentials = "nats://"+freeAddr(t), &creds
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if n, err := node.Start(ctx, cfg, slog.New(slog.NewTextHandler(&logs, nil))); err == nil {
		n.Close()
		t.Fatal("started without NATS")
	} else if !strings.Contains(err.Error(), "a NATS server of") || !strings.Contains(err.Error(), "gave up after") {
		t.Fatalf("start without NATS: %v; want it to say it gave up waiting for a NATS server", err)
	}
	if !strings.Contains(logs.String(), `msg="start-up: waiting" for="a NATS server of nats://`) || !strings.Contains(logs.String(), "attempt=2") {
		t.Fatalf("the start did not log its tries:\n%s", logs.String())
	}
	n := start(t, embedded(dir), quiet)
	if n.BootstrapPath() == "" {
		t.Fatal("the ledger started after the failed one made no bootstrap token")
	}
}

// Close stops the ledger in the order that loses nothing: the view's
// snapshot is saved (the next start replays only what came after it), and
// the reuse report still counted in memory when it is asked to stop is
// written to the stream, before the view stops being fed and NATS goes.
func TestCloseWritesWhatIsQueuedAndSavesTheSnapshot(t *testing.T) {
	dir := t.TempDir()
	n := start(t, embedded(dir), quiet)
	owner, _ := ownerOf(t, n, n.BootstrapPath())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	created, err := n.Ledger().CreateToken(ctx, owner, domain.CreateToken{Scope: "organization", Name: "rotated"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Ledger().RotateToken(ctx, owner, created.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}
	old := created.Secret.Reveal()
	from := app.Source{SourceIP: "203.0.113.7"}
	// The first try with the old secret is written at once; the second,
	// within the interval (a minute), is only counted until Close.
	before, err := n.Store().LastSequence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Ledger().Authenticate(old, from); !errors.Is(err, app.ErrUnauthenticated) {
		t.Fatalf("the rotated-away secret: %v", err)
	}
	waitUntil(t, 10*time.Second, "the first reuse event", func() bool {
		last, err := n.Store().LastSequence(ctx)
		return err == nil && last > before
	})
	_, _ = n.Ledger().Authenticate(old, from)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	again := start(t, embedded(dir), slog.New(slog.NewTextHandler(&logs, nil)))
	if !strings.Contains(logs.String(), "snapshot loaded") {
		t.Fatalf("the restart did not start from a snapshot saved at Close:\n%s", logs.String())
	}
	owner, _ = ownerOf(t, again, filepath.Join(dir, "bootstrap-token"))
	history, err := again.Ledger().TokenHistory(ctx, owner, created.Token.ID())
	if err != nil {
		t.Fatal(err)
	}
	var reuses int
	for _, r := range history {
		if r.Event.Type == domain.TokenReuseDetected {
			reuses++
		}
	}
	if reuses != 2 {
		t.Fatalf("the token's history has %d reuse events, want 2 (the first try's, and the one counted until Close)", reuses)
	}
}

// Three ledgers started before their NATS cluster exists (as after a full
// restart, or on a fresh cluster whose servers come up last) wait for it,
// logging what they wait for, and all come up once it is ready: on one
// stream, which they made together. Three bootstraps at once then make
// exactly one token, and all of them name it; a command on one ledger is
// seen by the others.
func TestLedgersStartedBeforeTheirClusterAllComeUpOnOneStream(t *testing.T) {
	creds, err := natsaccess.NewCredentials()
	if err != nil {
		t.Fatal(err)
	}
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var urls []string
	for _, p := range ports {
		urls = append(urls, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	cfg := node.DefaultConfig()
	cfg.HTTPAddr, cfg.NATSURL, cfg.Credentials, cfg.Replicas = "127.0.0.1:0", strings.Join(urls, ","), &creds, 3
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	nodes := make([]*node.Node, 3)
	errs := make([]error, 3)
	logs := make([]*syncBuffer, 3)
	var wg sync.WaitGroup
	for i := range nodes {
		logs[i] = &syncBuffer{}
		c := cfg
		c.DataDir = t.TempDir()
		wg.Go(func() { nodes[i], errs[i] = node.Start(ctx, c, slog.New(slog.NewTextHandler(logs[i], nil))) })
	}
	t.Cleanup(func() {
		for i, n := range nodes {
			if n != nil {
				_ = n.Close()
			}
			if t.Failed() {
				t.Logf("ledger %d:\n%s", i+1, logs[i].String())
			}
		}
	})
	waitUntil(t, 30*time.Second, "each ledger waiting for NATS", func() bool {
		for _, l := range logs {
			if !strings.Contains(l.String(), "start-up: waiting") {
				return false
			}
		}
		return true
	})
	natsaccesstest.StartCluster(t, creds, cfg.Stream, ports)
	// Before the servers stop (cleanups run last first), so that each ledger
	// saves its snapshot and stops as it would.
	t.Cleanup(func() {
		for i, n := range nodes {
			if n != nil {
				if err := n.Close(); err != nil {
					t.Errorf("ledger %d: close: %v", i+1, err)
				}
			}
		}
	})
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ledger %d: %v", i+1, err)
		}
		if !strings.Contains(logs[i].String(), "start-up: ready after waiting") {
			t.Errorf("ledger %d did not log that it was ready after waiting:\n%s", i+1, logs[i].String())
		}
		if !strings.Contains(logs[i].String(), "is empty: no token exists yet") {
			t.Errorf("ledger %d did not warn that the stream is empty:\n%s", i+1, logs[i].String())
		}
	}
	var created []time.Time
	for _, n := range nodes {
		id, err := n.Store().Identity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		created = append(created, id.Created)
	}
	if !created[0].Equal(created[1]) || !created[0].Equal(created[2]) {
		t.Fatalf("the ledgers are on streams created at %v: want one stream", created)
	}

	// Three bootstraps at once, each with a file of its own.
	outs := make([]string, 3)
	made := make([]node.Bootstrapped, 3)
	for i := range outs {
		outs[i] = filepath.Join(t.TempDir(), "bootstrap-token")
		wg.Go(func() {
			made[i], errs[i] = node.Bootstrap(ctx, cfg, outs[i], io.Discard, quiet)
		})
	}
	wg.Wait()
	var winner int
	var secret string
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("bootstrap %d: %v", i+1, errs[i])
		}
		b, err := os.ReadFile(outs[i])
		switch {
		case made[i].Created && err == nil:
			winner++
			secret = strings.TrimSpace(string(b))
		case made[i].Created:
			t.Fatalf("bootstrap %d made the token but its file: %v", i+1, err)
		case err == nil:
			t.Fatalf("bootstrap %d made no token but wrote a file", i+1)
		}
		if made[i].TokenID != made[0].TokenID || made[i].Sequence != 1 || !made[i].IsBootstrap {
			t.Fatalf("bootstrap %d names token %s at sequence %d (bootstrap: %v); bootstrap 1 named %s", i+1, made[i].TokenID, made[i].Sequence, made[i].IsBootstrap, made[0].TokenID)
		}
	}
	if winner != 1 {
		t.Fatalf("%d bootstraps made a token, want exactly 1", winner)
	}
	for _, n := range nodes {
		if err := n.View().WaitFor(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := nodes[0].Ledger().Authenticate(secret, app.Source{})
	if err != nil {
		t.Fatalf("the bootstrap secret on ledger 1: %v", err)
	}
	res, err := nodes[0].Ledger().CreateToken(ctx, app.Caller{Token: tok}, domain.CreateToken{Scope: "organization", Name: "made on 1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes[1:] {
		if err := n.View().WaitFor(ctx, res.Sequence); err != nil {
			t.Fatalf("ledger %d never saw the token made on ledger 1: %v", i+2, err)
		}
		if _, err := n.Ledger().Authenticate(res.Secret.Reveal(), app.Source{}); err != nil {
			t.Fatalf("the token made on ledger 1, on ledger %d: %v", i+2, err)
		}
		if status := get(t, "http://"+n.HTTPAddr()+"/readyz"); status != http.StatusOK {
			t.Fatalf("ledger %d /readyz: %d", i+2, status)
		}
	}
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func freeAddr(t *testing.T) string { return "127.0.0.1:" + strconv.Itoa(freePort(t)) }

// syncBuffer is a log the ledger and the test both touch.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
