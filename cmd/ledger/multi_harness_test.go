package main

// The harness of the multi-instance suite (multi_test.go): a JetStream
// cluster whose servers can be stopped, started again on the same ports and
// store, and frozen; `ledger serve` processes on it; TCP proxies that can cut
// one ledger off from the cluster; and HTTP calls from chosen source
// addresses, so that one finding's failed authentications never use up
// another's budget.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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

	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
)

// restartableCluster is a cluster of nats-server processes laid out as
// startNATSCluster lays them out (docker/nats.conf with the files of `ledger
// nats setup --routes` beside it), each on fixed ports and a store of its
// own, so that a server can be stopped and started again as itself.
type restartableCluster struct {
	t           *testing.T
	bin         string
	name        string // the cluster's name
	nodes       []*restartableNode
	credentials string // for --nats-credentials
	creds       natsaccess.Credentials
}

type restartableNode struct {
	natsNode
	conf       string // its configuration file
	clientAddr string // host:port
}

// newRestartableCluster writes the configuration of size servers; none is
// started.
func newRestartableCluster(t *testing.T, bin string, size int) *restartableCluster {
	t.Helper()
	conf, err := os.ReadFile(filepath.Join(repoRoot, "docker", "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	const storeDir, clusterPort = "store_dir: /data", "port: 6222"
	for _, want := range []string{storeDir, clusterPort} {
		if n := strings.Count(string(conf), want); n != 1 {
			t.Fatalf("docker/nats.conf has %q %d times, want once", want, n)
		}
	}
	c := &restartableCluster{t: t, bin: bin, name: "multi-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	var routes []string
	for i := range size {
		n := &restartableNode{}
		n.name = fmt.Sprintf("n%d", i+1)
		n.clusterURL = "nats-route://" + freeAddr(t)
		n.clientAddr = freeAddr(t)
		n.clientURL = "nats://" + n.clientAddr
		n.monitorURL = "http://" + freeAddr(t)
		c.nodes = append(c.nodes, n)
		routes = append(routes, n.clusterURL)
	}
	auth := t.TempDir()
	if code, out, errOut := (cli{t: t}).run("", "nats", "setup", auth, "--routes", strings.Join(routes, ",")); code != 0 {
		t.Fatalf("ledger nats setup: exit %d: %s%s", code, out, errOut)
	}
	c.credentials = filepath.Join(auth, natsCredentialsFile)
	if c.creds, err = natsaccess.LoadCredentials(c.credentials); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		dir := t.TempDir()
		if err := os.Symlink(auth, filepath.Join(dir, "auth")); err != nil {
			t.Fatal(err)
		}
		n.conf = filepath.Join(dir, "nats.conf")
		own := strings.Replace(string(conf), storeDir, fmt.Sprintf("store_dir: %q", filepath.Join(dir, "jetstream")), 1)
		own = strings.Replace(own, clusterPort, fmt.Sprintf("listen: %q", strings.TrimPrefix(n.clusterURL, "nats-route://")), 1)
		if err := os.WriteFile(n.conf, []byte(own), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if n.cmd != nil {
				_ = n.cmd.Process.Kill() // also ends a frozen one
				<-n.done
			}
			if t.Failed() && n.logs != nil {
				t.Logf("%s, last lines:\n%s", n.name, c.scrub(lastLines(n.logs.String(), 25)))
			}
		}
	})
	return c
}

func (c *restartableCluster) scrub(log string) string {
	return strings.ReplaceAll(log, c.creds.RoutePassword, "[route password]")
}

// urls is the client URLs of the servers named by index.
func (c *restartableCluster) urls(idx ...int) string {
	var out []string
	for _, i := range idx {
		out = append(out, c.nodes[i].clientURL)
	}
	return strings.Join(out, ",")
}

// start starts a server that is not running. Servers do not advertise the
// cluster's other client URLs to clients (--no_advertise): a ledger uses the
// URLs it was given, so a proxy in front of a server stays between them.
func (c *restartableCluster) start(i int) {
	c.t.Helper()
	n := c.nodes[i]
	if n.cmd != nil {
		select {
		case <-n.done:
		default:
			c.t.Fatalf("%s is running", n.name)
		}
	}
	_, clientPort, _ := net.SplitHostPort(n.clientAddr)
	_, monitorPort, _ := net.SplitHostPort(strings.TrimPrefix(n.monitorURL, "http://"))
	if n.logs == nil {
		n.logs = &syncBuffer{}
	}
	n.done = make(chan struct{})
	n.cmd = exec.Command(c.bin, "--config", n.conf, "--name", n.name, "--addr", "127.0.0.1", "--port", clientPort,
		"--http_port", monitorPort, "--cluster_name", c.name, "--no_advertise=true")
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	if err := n.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := n.done
	cmd := n.cmd
	go func() { _ = cmd.Wait(); close(done) }()
}

// stop stops a server cleanly (SIGTERM) and waits for its exit.
func (c *restartableCluster) stop(i int) {
	c.t.Helper()
	n := c.nodes[i]
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("%s did not stop within 30 s of SIGTERM", n.name)
	}
}

func (c *restartableCluster) signal(i int, sig syscall.Signal) {
	c.t.Helper()
	if err := c.nodes[i].cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("%s: %v: %v", c.nodes[i].name, sig, err)
	}
}

// waitHealthy waits until each server is current with a JetStream meta
// leader (the health check docker-compose.yml waits for).
func (c *restartableCluster) waitHealthy(within time.Duration) {
	c.t.Helper()
	for _, n := range c.nodes {
		waitUntil(c.t, within, n.name+" current with a JetStream meta leader", func() (bool, string) {
			select {
			case <-n.done:
				c.t.Fatalf("%s exited: %s", n.name, c.scrub(lastLines(n.logs.String(), 10)))
			default:
			}
			code, body, err := httpGet(n.monitorURL + "/healthz?js-meta-only=true")
			if err != nil {
				return false, err.Error()
			}
			return code == http.StatusOK, body
		})
	}
}

// metaLeader is the JetStream meta leader as server n sees it ("" if none).
func (c *restartableCluster) metaLeader(i int) string {
	_, body, err := httpGet(c.nodes[i].monitorURL + "/jsz")
	if err != nil {
		return ""
	}
	var jsz server.JSInfo
	if json.Unmarshal([]byte(body), &jsz) != nil || jsz.Meta == nil {
		return ""
	}
	return jsz.Meta.Leader
}

// connections counts the client connections named name on server i.
func (c *restartableCluster) connections(i int, name string) int {
	_, body, err := httpGet(c.nodes[i].monitorURL + "/connz")
	if err != nil {
		return 0
	}
	var connz server.Connz
	if json.Unmarshal([]byte(body), &connz) != nil {
		return 0
	}
	n := 0
	for _, conn := range connz.Conns {
		if conn.Name == name {
			n++
		}
	}
	return n
}

func httpGet(url string) (int, string, error) {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// ledgerProc is a `ledger serve --nats-url` process of the suite, on a fixed
// HTTP address and a data directory of its own. It can be stopped and
// started again as itself.
type ledgerProc struct {
	name     string
	dir      string
	httpAddr string
	natsURL  string
	extra    []string // more flags
	argv     []string // when set, the whole command line instead

	cmd     *exec.Cmd
	stdout  *syncBuffer
	logs    *syncBuffer // stderr, across restarts
	done    chan struct{}
	err     error         // how it exited, once done is closed
	serving chan struct{} // closed once it prints that it serves
}

func (l *ledgerProc) base() string { return "http://" + l.httpAddr }

func (l *ledgerProc) args(credentials string) []string {
	return append([]string{"serve", "--nats-url", l.natsURL, "--nats-credentials", credentials, "--replicas", "3",
		"--http", l.httpAddr, "--data", l.dir, "--org", multiOrg, "--metrics-listen="}, l.extra...)
}

// startProc starts `ledger serve` and returns at once.
func startProc(t *testing.T, bin string, l *ledgerProc, credentials string) {
	t.Helper()
	args := l.argv
	if args == nil {
		args = l.args(credentials)
	}
	l.cmd = exec.Command(bin, args...)
	if l.logs == nil {
		l.logs = &syncBuffer{}
	}
	l.stdout = &syncBuffer{}
	fmt.Fprintf(l.logs, "--- %s started at %s\n", l.name, time.Now().Format(time.TimeOnly+".000"))
	l.cmd.Stderr = l.logs
	out, err := l.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.done, l.serving = make(chan struct{}), make(chan struct{})
	done, serving, cmd, stdout := l.done, l.serving, l.cmd, l.stdout
	go func() {
		sc := bufio.NewScanner(out)
		closed := false
		for sc.Scan() {
			fmt.Fprintln(stdout, sc.Text())
			if strings.HasPrefix(sc.Text(), "ledger serving on http://") && !closed {
				close(serving)
				closed = true
			}
		}
		l.err = cmd.Wait()
		close(done)
	}()
}

// exited reports whether the process has exited, and how.
func (l *ledgerProc) exited() (bool, string) {
	select {
	case <-l.done:
		return true, fmt.Sprintf("%v: %s", l.err, l.lastRun(8))
	default:
		return false, ""
	}
}

// waitServing waits until the process says it serves, it exits, or within
// passes.
func (l *ledgerProc) waitServing(within time.Duration) error {
	select {
	case <-l.serving:
		return nil
	case <-l.done:
		return fmt.Errorf("%s exited before serving: %v\n%s", l.name, l.err, l.lastRun(8))
	case <-time.After(within):
		return fmt.Errorf("%s did not serve within %s:\n%s", l.name, within, l.lastRun(8))
	}
}

// lastRun is the last n lines the process logged since it was last
// started.
func (l *ledgerProc) lastRun(n int) string {
	log := l.logs.String()
	if i := strings.LastIndex(log, "--- "+l.name+" started at "); i >= 0 {
		log = log[i:]
	}
	return lastLines(log, n)
}

// stop sends SIGTERM and waits for the exit.
func (l *ledgerProc) stop(t *testing.T) {
	t.Helper()
	if l.cmd == nil {
		return
	}
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.done:
	case <-time.After(30 * time.Second):
		_ = l.cmd.Process.Kill()
		<-l.done
		t.Errorf("%s did not stop within 30 s of SIGTERM", l.name)
	}
}

// tcpProxy forwards connections to a target. cut stops forwarding in both
// directions without closing anything, as a partition does: what is read
// is held, and new connections are accepted but not connected on, until
// heal. refuse closes every connection and closes new ones at once, as a
// host that is down does.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	cond    *sync.Cond
	cut     bool
	refuse  bool
	closed  bool
	conns   map[net.Conn]bool
	live    atomic.Int32 // connections forwarding to the target now
	wg      sync.WaitGroup
	stopped chan struct{}
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]bool{}, stopped: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *tcpProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// waitOpen blocks while the proxy is cut; it reports false once the proxy
// is closed or refusing.
func (p *tcpProxy) waitOpen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.cut && !p.closed && !p.refuse {
		p.cond.Wait()
	}
	return !p.closed && !p.refuse
}

func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.refuse {
		return false
	}
	p.conns[c] = true
	return true
}

func (p *tcpProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

func (p *tcpProxy) serve(client net.Conn) {
	defer client.Close()
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	if !p.waitOpen() {
		return
	}
	upstream, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	defer upstream.Close()
	if !p.track(upstream) {
		return
	}
	defer p.untrack(upstream)
	p.live.Add(1)
	defer p.live.Add(-1)
	var wg sync.WaitGroup
	pump := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if !p.waitOpen() {
					break
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		// One side is done: end both, as a TCP connection ends.
		client.Close()
		upstream.Close()
	}
	wg.Add(2)
	go pump(upstream, client)
	go pump(client, upstream)
	wg.Wait()
}

// setCut stops (true) or resumes (false) forwarding.
func (p *tcpProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	p.cond.Broadcast()
}

// setRefuse closes every connection and refuses new ones (true), or
// accepts them again (false).
func (p *tcpProxy) setRefuse(refuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = refuse
	if refuse {
		for c := range p.conns {
			c.Close()
		}
	}
	p.cond.Broadcast()
}

func (p *tcpProxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	p.wg.Wait()
}

// answer is what one HTTP request got.
type answer struct {
	status     int
	header     http.Header
	body       []byte
	err        error // the request did not get an answer
	sent, done time.Time
}

func (a answer) String() string {
	if a.err != nil {
		return "no answer: " + a.err.Error()
	}
	b := bytes.TrimSpace(a.body)
	if len(b) > 240 {
		b = append(b[:240:240], "..."...)
	}
	return fmt.Sprintf("%d %s", a.status, b)
}

// caller is who sends a request: a bearer secret ("" for none) from a
// source address (a loopback address the request's connection is made
// from; "" for the system's choice, 127.0.0.1).
type caller struct {
	secret string
	source string
}

// clients makes HTTP clients: one shared for requests from the default
// source, one per request from a chosen one.
type clients struct {
	mu     sync.Mutex
	shared *http.Client
	next   atomic.Uint32
}

// newSource is a loopback address no other request has come from: a
// source of its own, with a failed-authentication budget of its own.
// Linux answers on the whole of 127.0.0.0/8.
func (c *clients) newSource() string {
	n := c.next.Add(1)
	return fmt.Sprintf("127.%d.%d.%d", 100+n/62500%100, n/250%250, n%250+1)
}

func (c *clients) client(source string) *http.Client {
	// The console's answers are looked at as they come, redirects
	// included.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if source != "" {
		// A source is used for a request or a few: a connection each.
		dialer := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
		return &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true},
			CheckRedirect: noRedirect, Timeout: 20 * time.Second}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shared == nil {
		c.shared = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: 30 * time.Second},
			CheckRedirect: noRedirect, Timeout: 20 * time.Second}
	}
	return c.shared
}

// call sends one request; body, when not nil, is sent as JSON (a string or
// []byte as it is).
func (c *clients) call(ctx context.Context, base, method, path string, who caller, body any, header http.Header) answer {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return answer{err: err}
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return answer{err: err}
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if who.secret != "" {
		req.Header.Set("Authorization", "Bearer "+who.secret)
	}
	a := answer{sent: time.Now()}
	resp, err := c.client(who.source).Do(req)
	if err != nil {
		a.err, a.done = err, time.Now()
		return a
	}
	defer resp.Body.Close()
	a.body, a.err = io.ReadAll(resp.Body)
	a.status, a.header, a.done = resp.StatusCode, resp.Header, time.Now()
	return a
}

// token reads a token from an answer.
func (a answer) token() (httpapi.Token, error) {
	var tok httpapi.Token
	if a.err != nil {
		return tok, a.err
	}
	if err := json.Unmarshal(a.body, &tok); err != nil {
		return tok, fmt.Errorf("%d %s: %w", a.status, a.body, err)
	}
	return tok, nil
}

// ok2xx: the request was answered with a success.
func (a answer) ok2xx() bool { return a.err == nil && a.status >= 200 && a.status < 300 }

// waitFor polls cond every 50 ms until it holds or within passes, and
// reports whether it held (the caller says what failing means).
func waitFor(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
