package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
)

// TestLosingTheStreamLeaderLosesNoAcknowledgedCommand runs `ledger serve` as
// docker-compose.yml does (--nats-url naming three clustered JetStream
// servers, --replicas 3), makes the server the ledger is connected to the
// stream's leader, and takes that server away while clients create and
// rotate tokens: the ledger loses its connection and the stream its leader
// at once. The servers are real nats-server processes, so the server can be
// lost the three ways a node is lost:
//
//   - stopped (SIGTERM: `docker compose stop`, a rolling upgrade): it hands
//     its leaderships over before it goes, and commands succeed again within
//     5 seconds;
//   - killed (SIGKILL: a crash, `docker kill`, the OOM killer): its sockets
//     close, and the others elect a new leader once they miss its heartbeats;
//   - frozen (SIGSTOP: as seen from the network, a power loss or a
//     partition): its sockets stay open and silent, and the ledger must
//     notice by itself that its connection is dead.
//
// Each time, every command the ledger acknowledged is in the stream and in
// its view afterwards, and the view agrees with the stream token by token.
//
// The servers are locked down as docker-compose.yml's are: docker/nats.conf
// with the files of `ledger nats setup --routes` beside it. The ledger logs
// in with the setup's credentials (--nats-credentials), routes with the
// route password, and a client or a route without credentials is refused.
func TestLosingTheStreamLeaderLosesNoAcknowledgedCommand(t *testing.T) {
	// The nats-server of go.mod, the one the ledger embeds: the cluster's
	// servers run as processes of their own, so that the test can kill or
	// freeze one.
	bin := goBuild(t, "nats-server", "github.com/nats-io/nats-server/v2")
	for _, c := range []struct {
		name   string
		signal syscall.Signal
		// within is how soon after the loss a command must succeed again.
		within time.Duration
	}{
		{"stopped", syscall.SIGTERM, 5 * time.Second},
		// The survivors wait out a Raft election timeout (4-9 s in
		// nats-server) before they elect a leader: 4-11 s measured.
		{"killed", syscall.SIGKILL, 15 * time.Second},
		{"frozen", syscall.SIGSTOP, 15 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			loseTheStreamLeader(t, bin, c.name, c.signal, c.within)
		})
	}
}

func loseTheStreamLeader(t *testing.T, bin, how string, signal syscall.Signal, within time.Duration) {
	cluster := startNATSCluster(t, bin, 3)
	nodes := cluster.nodes
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.clientURL)
	}
	secret := bootstrapVia(t, strings.Join(urls, ","), cluster.credentials, "--replicas", "3")
	dir := t.TempDir()
	logs := &syncBuffer{}
	n, err := startLedger(context.Background(), serveOptions{
		dataDir: dir, httpAddr: "127.0.0.1:0", natsURL: strings.Join(urls, ","), natsCredentials: cluster.credentials,
		org: "acme", stream: "TOKENS", replicas: 3,
	}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		if t.Failed() {
			t.Logf("ledger:\n%s", logs.String())
		}
	})
	base := "http://" + n.HTTPAddr()
	client := httpapi.NewClient(base, secret)

	// The test's own view of the stream, through all three servers, as the
	// ledger's user: the stream is in its account.
	nc, err := nats.Connect(strings.Join(urls, ","), nats.Name("observer"), nats.MaxReconnects(-1),
		nats.UserInfo(natsaccess.LedgerUser, cluster.creds.LedgerPassword),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := js.Stream(ctx, "TOKENS")
	if err != nil {
		t.Fatal(err)
	}
	if info := stream.CachedInfo(); info.Config.Replicas != 3 {
		t.Fatalf("stream has %d replicas, want 3", info.Config.Replicas)
	}
	cfg := eventstore.DefaultConfig()
	cfg.Replicas = 3
	store, err := eventstore.Open(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	home := nodeWithClient(t, nodes, "ledger")

	// Nobody gets in without credentials: the ledger's callout refuses a
	// client that brings none. (On the ledger's own server: another server
	// may not know of the callout's subscription yet, and would give up on
	// the callout after 2 s, as its first PING goes out.)
	if anon, err := nats.Connect(home.clientURL, nats.Name("anonymous"), nats.NoReconnect(), nats.Timeout(5*time.Second)); err == nil {
		anon.Close()
		t.Fatal("a client without credentials connected to the cluster")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("a client without credentials: %v, want an authorization violation", err)
	}

	makeStreamLeader(t, nc, stream, home.name)

	load := startLoad(client, 4)
	defer load.stop()
	waitUntil(t, 30*time.Second, "commands acknowledged before the loss", func() (bool, string) {
		n := load.ackedSince(time.Time{})
		return n >= 40, fmt.Sprintf("%d acknowledged", n)
	})
	lost := time.Now()
	if err := home.cmd.Process.Signal(signal); err != nil {
		t.Fatal(err)
	}
	if signal == syscall.SIGTERM {
		<-home.done // a clean stop is over when the process is
	}
	gone := time.Now()
	// Clients whose commands were in flight at the loss may wait for them
	// to time out; fresh ones show when the ledger takes commands again.
	after := startLoad(client, 4)
	defer after.stop()
	waitUntil(t, 45*time.Second, "commands acknowledged after the loss", func() (bool, string) {
		n := after.ackedSince(gone)
		return n >= 40, fmt.Sprintf("%d acknowledged since", n)
	})
	load.stopped.Store(true) // both at once: the first may wait on a timeout
	cmds := append(after.stop(), load.stop()...)

	// Commands work again soon: the first one sent after the loss that
	// succeeded.
	first := time.Time{}
	failures := map[string]int{} // answer -> how many
	for _, c := range cmds {
		switch {
		case c.err != nil:
			failures[c.err.Error()]++
		case !c.sent.Before(gone) && (first.IsZero() || c.done.Before(first)):
			first = c.done
		}
	}
	t.Logf("%d commands; commands succeeded again %s after the leader's server was %s; refused or failed: %v",
		len(cmds), first.Sub(lost).Round(time.Millisecond), how, failures)
	if first.Sub(lost) >= within {
		t.Errorf("commands succeeded again %s after the loss, want within %s", first.Sub(lost).Round(time.Millisecond), within)
	}

	// Every acknowledged command is in the stream, at the sequence its
	// answer gave; and the last event of each token is known.
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || info.Cluster.Leader == "" || info.Cluster.Leader == home.name {
		t.Fatalf("stream leader after the loss: %+v", info.Cluster)
	}
	last := info.State.LastSeq
	lastOf := map[string]uint64{} // token id -> sequence of its last event
	subjects := map[uint64]string{}
	// Read through a consumer: a direct get may be routed to the frozen
	// server's replica and never answered. The consumer too may be placed on
	// that server, which its peers think alive for a while yet: then the
	// read stalls, and goes on from where it got to on a fresh consumer, as
	// the ledger's own feed does (app.Run).
	errRead := errors.New("read up to the last sequence")
	for read := uint64(0); read < last; {
		attempt, cancelAttempt := context.WithTimeout(ctx, 3*time.Second)
		err = store.Follow(attempt, read+1, func(r eventstore.Recorded) error {
			if r.Err != nil {
				return r.Err
			}
			subjects[r.Sequence] = "ledger.tokens." + r.OrganizationID + "." + r.TokenID + "." + string(r.Event.Type)
			lastOf[r.TokenID] = r.Sequence
			if read = r.Sequence; read >= last {
				return errRead
			}
			return nil
		})
		cancelAttempt()
		if ctx.Err() != nil {
			t.Fatalf("reading the stream (up to %d of %d): %v", read, last, err)
		}
	}
	acked := map[string]command{} // token id -> its last acknowledged command
	for _, c := range cmds {
		if c.err != nil {
			continue
		}
		want := "ledger.tokens.acme." + c.token.ID + "." + c.event
		if got := subjects[c.token.Sequence]; got != want {
			t.Errorf("%s acknowledged at sequence %d, the stream has %q there", want, c.token.Sequence, got)
		}
		if c.token.Sequence > acked[c.token.ID].token.Sequence {
			acked[c.token.ID] = c
		}
	}

	// The view holds exactly the stream's tokens, each as of its last event;
	// a token whose last event is an acknowledged command carries that
	// command's secret, and the secret verifies.
	status, _, body := send(t, "GET", base+"/v1/tokens?min_sequence="+strconv.FormatUint(last, 10), client.Token, "")
	if status != 200 {
		t.Fatalf("list: %d %s", status, body)
	}
	var list httpapi.TokenList
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	listed := map[string]httpapi.Token{}
	for _, tok := range list.Tokens {
		listed[tok.ID] = tok
	}
	if len(listed) != len(lastOf) {
		t.Errorf("the view lists %d tokens, the stream has %d", len(listed), len(lastOf))
	}
	for id, seq := range lastOf {
		tok, ok := listed[id]
		switch {
		case !ok:
			t.Errorf("token %s is in the stream, not in the view", id)
		case tok.Sequence != seq:
			t.Errorf("token %s: the view has it as of sequence %d, its last event is at %d", id, tok.Sequence, seq)
		}
	}
	verified := 0
	for id, c := range acked {
		if lastOf[id] != c.token.Sequence {
			continue // a later command of unknown outcome was stored after all
		}
		if tok := listed[id]; tok.Fingerprint != c.token.Fingerprint {
			t.Errorf("token %s: the view's fingerprint %s, the acknowledged %s gave %s", id, tok.Fingerprint, c.event, c.token.Fingerprint)
		}
		v, err := client.Verify(ctx, c.token.Secret)
		if err != nil || !v.Valid || v.ID != id {
			t.Errorf("token %s: the secret its acknowledged %s gave verifies as %+v, %v", id, c.event, v, err)
		}
		verified++
	}
	if verified == 0 {
		t.Error("no token's last event was an acknowledged command")
	}
}

// natsNode is a nats-server process of a test cluster.
type natsNode struct {
	name       string
	clientURL  string
	clusterURL string
	monitorURL string
	cmd        *exec.Cmd
	logs       *syncBuffer
	done       chan struct{} // closed when the process has exited
}

// natsCluster is a running test cluster and the ledger's credentials for
// it.
type natsCluster struct {
	nodes []*natsNode
	// credentials is the file `ledger nats setup` wrote, for
	// --nats-credentials; creds is what it holds.
	credentials string
	creds       natsaccess.Credentials
}

// startNATSCluster starts size JetStream servers clustered on loopback, as
// docker-compose.yml does: `ledger nats setup --routes` writes the
// credentials, the accounts and the routes with their password into one
// directory, and each server runs docker/nats.conf, which includes them from
// beside it (auth/), with its name (n1, n2, ...), client and monitoring
// addresses on its command line, its cluster address and a store directory
// of its own in its copy of the file. It returns once each server is
// current with a JetStream meta leader (the health check docker-compose.yml
// waits for), which takes routes that authenticated, and after checking
// that a route without the password is refused.
func startNATSCluster(t *testing.T, bin string, size int) *natsCluster {
	t.Helper()
	conf, err := os.ReadFile(filepath.Join(repoRoot, "docker", "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	// nats-server refuses a --store_dir flag beside the file's store_dir,
	// and its --cluster flag would drop the file's route authorization: the
	// copy says both.
	const storeDir, clusterPort = "store_dir: /data", "port: 6222"
	for _, want := range []string{storeDir, clusterPort} {
		if n := strings.Count(string(conf), want); n != 1 {
			t.Fatalf("docker/nats.conf has %q %d times, want once", want, n)
		}
	}
	clusterName := "ledger-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	nodes := make([]*natsNode, size)
	var routes []string
	for i := range nodes {
		cluster := freeAddr(t)
		nodes[i] = &natsNode{name: fmt.Sprintf("n%d", i+1), clusterURL: "nats-route://" + cluster}
		routes = append(routes, nodes[i].clusterURL)
	}
	auth := t.TempDir()
	if code, out, errOut := (cli{t: t}).run("", "nats", "setup", auth, "--routes", strings.Join(routes, ",")); code != 0 {
		t.Fatalf("ledger nats setup: exit %d: %s%s", code, out, errOut)
	}
	c := &natsCluster{nodes: nodes, credentials: filepath.Join(auth, natsCredentialsFile)}
	if c.creds, err = natsaccess.LoadCredentials(c.credentials); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		client, monitor := freeAddr(t), freeAddr(t)
		_, clientPort, _ := net.SplitHostPort(client)
		_, monitorPort, _ := net.SplitHostPort(monitor)
		n.clientURL, n.monitorURL = "nats://"+client, "http://"+monitor
		n.logs, n.done = &syncBuffer{}, make(chan struct{})
		dir := t.TempDir()
		// The setup's directory beside the configuration, as the nats-auth
		// volume is in docker-compose.yml.
		if err := os.Symlink(auth, filepath.Join(dir, "auth")); err != nil {
			t.Fatal(err)
		}
		confPath := filepath.Join(dir, "nats.conf")
		own := strings.Replace(string(conf), storeDir, fmt.Sprintf("store_dir: %q", filepath.Join(dir, "jetstream")), 1)
		own = strings.Replace(own, clusterPort, fmt.Sprintf("listen: %q", strings.TrimPrefix(n.clusterURL, "nats-route://")), 1)
		if err := os.WriteFile(confPath, []byte(own), 0o600); err != nil {
			t.Fatal(err)
		}
		n.cmd = exec.Command(bin, "--config", confPath, "--name", n.name, "--addr", "127.0.0.1", "--port", clientPort, "--http_port", monitorPort,
			// A name of its own: should another test's server take one of
			// these ports meanwhile, the clusters refuse each other's routes.
			"--cluster_name", clusterName)
		n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
		if err := n.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = n.cmd.Wait(); close(n.done) }()
		t.Cleanup(func() {
			_ = n.cmd.Process.Kill() // also ends a frozen one
			<-n.done
			if t.Failed() {
				t.Logf("%s, last lines:\n%s", n.name, c.scrub(lastLines(n.logs.String(), 30)))
			}
		})
	}
	for _, n := range nodes {
		waitUntil(t, 30*time.Second, n.name+" current with a JetStream meta leader", func() (bool, string) {
			select {
			case <-n.done:
				t.Fatalf("%s exited: %s", n.name, c.scrub(lastLines(n.logs.String(), 10)))
			default:
			}
			resp, err := http.Get(n.monitorURL + "/healthz?js-meta-only=true")
			if err != nil {
				return false, err.Error()
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == http.StatusOK, string(b)
		})
	}
	for _, login := range []struct{ what, user, password string }{
		{"no credentials", "", ""},
		{"a wrong password", natsaccess.RouteUser, "not-" + c.creds.RoutePassword},
	} {
		if answer := routeConnect(t, nodes[0].clusterURL, clusterName, login.user, login.password); !strings.Contains(answer, "Authorization Violation") {
			t.Fatalf("%s: a route with %s was answered %q, want an authorization violation", nodes[0].name, login.what, c.scrub(answer))
		}
	}
	return c
}

// scrub hides the route password in a server's log (nats-server redacts
// it; this is in case).
func (c *natsCluster) scrub(log string) string {
	return strings.ReplaceAll(log, c.creds.RoutePassword, "[route password]")
}

// routeConnect opens a route to a server's cluster port as another server
// of cluster would, logging in as user, and returns the server's first
// answer after the CONNECT and a PING.
func routeConnect(t *testing.T, clusterURL, cluster, user, password string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(clusterURL, "nats-route://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	if info, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(info, "INFO ") {
		t.Fatalf("route port %s: %q, %v; want INFO", clusterURL, info, err)
	}
	connect, _ := json.Marshal(map[string]any{"user": user, "pass": password, "name": "stranger", "cluster": cluster, "verbose": false, "pedantic": false})
	if _, err := fmt.Fprintf(conn, "CONNECT %s\r\nPING\r\n", connect); err != nil {
		t.Fatal(err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "(closed: " + err.Error() + ")"
		}
		// The server may send its first PING before it answers.
		if !strings.HasPrefix(line, "INFO ") && !strings.HasPrefix(line, "PING") {
			return strings.TrimSpace(line)
		}
	}
}

// lastLines is the end of a log.
func lastLines(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// nodeWithClient is the node a client connection named name is on.
func nodeWithClient(t *testing.T, nodes []*natsNode, name string) *natsNode {
	t.Helper()
	for _, n := range nodes {
		resp, err := http.Get(n.monitorURL + "/connz")
		if err != nil {
			t.Fatal(err)
		}
		var connz server.Connz
		err = json.NewDecoder(resp.Body).Decode(&connz)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range connz.Conns {
			if c.Name == name {
				return n
			}
		}
	}
	t.Fatalf("no server has a connection named %s", name)
	return nil
}

// makeStreamLeader moves the stream's leadership to the named server.
func makeStreamLeader(t *testing.T, nc *nats.Conn, stream jetstream.Stream, name string) {
	t.Helper()
	leader := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		info, err := stream.Info(ctx)
		if err != nil || info.Cluster == nil {
			return ""
		}
		return info.Cluster.Leader
	}
	if leader() == name {
		return
	}
	req, _ := json.Marshal(server.JSApiLeaderStepdownRequest{Placement: &server.Placement{Preferred: name}})
	msg, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream.CachedInfo().Config.Name, req, 5*time.Second)
	if err != nil {
		t.Fatalf("stream leader stepdown: %v", err)
	}
	var resp server.JSApiStreamLeaderStepDownResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil || resp.Error != nil {
		t.Fatalf("stream leader stepdown: %s", msg.Data)
	}
	waitUntil(t, 10*time.Second, "the stream led by "+name, func() (bool, string) {
		l := leader()
		return l == name, "leader " + l
	})
}

// command is one create or rotate the load sent, and what came of it.
type command struct {
	event      string // TokenCreated or TokenRotated
	token      httpapi.Token
	err        error
	sent, done time.Time
}

// load creates and rotates tokens over the API from several clients until
// stopped, each client on tokens of its own, and keeps every answer.
type load struct {
	mu      sync.Mutex
	cmds    []command
	stopped atomic.Bool
	wg      sync.WaitGroup
}

func startLoad(client *httpapi.Client, clients int) *load {
	l := &load{}
	ctx := context.Background()
	for w := range clients {
		l.wg.Go(func() {
			for i := 0; !l.stopped.Load(); i++ {
				sent := time.Now()
				tok, err := client.CreateToken(ctx, httpapi.CreateRequest{Scope: "organization", Name: fmt.Sprintf("load-%d-%d", w, i)}, "")
				l.record(command{event: "TokenCreated", token: tok, err: err, sent: sent, done: time.Now()})
				for j := 0; err == nil && j < 3 && !l.stopped.Load(); j++ {
					sent := time.Now()
					rotated, err := client.RotateToken(ctx, tok.ID)
					l.record(command{event: "TokenRotated", token: rotated, err: err, sent: sent, done: time.Now()})
				}
			}
		})
	}
	return l
}

func (l *load) record(c command) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cmds = append(l.cmds, c)
}

// ackedSince counts the commands acknowledged that were sent at or after t.
func (l *load) ackedSince(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.cmds {
		if c.err == nil && !c.sent.Before(t) {
			n++
		}
	}
	return n
}

// stop ends the load once each client has its answer to the command it is
// sending (none is cut short: it would leave the ledger writing after the
// test has read the stream), and returns every command.
func (l *load) stop() []command {
	l.stopped.Store(true)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cmds
}
