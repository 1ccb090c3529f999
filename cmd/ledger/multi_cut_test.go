package main

// The multi-instance suite's cuts: a ledger whose NATS server is frozen, a
// ledger partitioned from the cluster, two `serve` on one data directory,
// and a full restart of the cluster with the ledgers started first.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sort"
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

	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
)

// ready reports whether l's /readyz answers 200.
func (s *multiSuite) ready(l *ledgerProc) (bool, string) {
	a := s.call(l, "GET", "/readyz", caller{}, nil, nil)
	return a.status == http.StatusOK, a.String()
}

// leadElsewhere moves every leadership server name holds (the JetStream
// meta group's, and every stream's of the ledger's account: its stream and
// any bucket) to n1, so that the server can be frozen while the cluster
// keeps a leader for everything the ledgers write.
func (s *multiSuite) leadElsewhere(t *testing.T, name string) {
	t.Helper()
	sys, err := nats.Connect(s.cluster.urls(0, 1), nats.Name("operator"),
		nats.UserInfo(natsaccess.SystemUser, s.cluster.creds.SystemPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	preferred, _ := json.Marshal(server.JSApiLeaderStepdownRequest{Placement: &server.Placement{Preferred: "n1"}})
	if s.cluster.metaLeader(0) == name {
		if _, err := sys.Request("$JS.API.META.LEADER.STEPDOWN", preferred, 5*time.Second); err != nil {
			t.Fatalf("meta leader stepdown: %v", err)
		}
	}
	waitUntil(t, 20*time.Second, "a meta leader other than "+name, func() (bool, string) {
		l := s.cluster.metaLeader(0)
		return l != "" && l != name, "meta leader " + l
	})
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	streams := js.ListStreams(ctx)
	for info := range streams.Info() {
		if info.Cluster == nil || info.Cluster.Leader != name {
			continue
		}
		if info.Config.Replicas < 2 {
			// Nothing to hand over: it is frozen with its server.
			t.Logf("stream %s has one replica, on %s", info.Config.Name, name)
			continue
		}
		stream, err := js.Stream(ctx, info.Config.Name)
		if err != nil {
			t.Fatal(err)
		}
		makeStreamLeader(t, s.nc, stream, "n1")
	}
	if err := streams.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
}

// probe is one use of a secret during a cut.
type probe struct {
	ledger string
	kind   string // which secret
	a      answer
}

// probeSecrets uses each secret (kind -> secret, asked anew each time: a
// secret joins once it is known) to read token id on each of ledgers, from
// a fresh source address each time, every 50 ms until until; each request
// on its own goroutine, so a request the ledger holds does not hold the
// next.
func (s *multiSuite) probeSecrets(ledgers []*ledgerProc, id string, secrets func() map[string]string, until time.Time) []probe {
	var mu sync.Mutex
	var out []probe
	var wg sync.WaitGroup
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(until) {
		now := secrets()
		for _, l := range ledgers {
			for kind, secret := range now {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					a := s.http.call(ctx, l.base(), "GET", "/v1/tokens/"+id, caller{secret: secret, source: s.http.newSource()}, nil, nil)
					mu.Lock()
					out = append(out, probe{ledger: l.name, kind: kind, a: a})
					mu.Unlock()
				})
			}
		}
		<-tick.C
	}
	wg.Wait()
	return out
}

// judgeCut checks what the ledgers answered during a cut. ackAt is when
// the answer to the command that retired the secrets of kinds retired came
// (the rotation, the deletion). A retired secret may be accepted until the
// staleness bound has passed since, not after: past it an instance that
// cannot show it is current answers 503 with Retry-After, and one that is
// current 401. The current secret (kind current) is never refused with
// 401: an instance that does not know it yet waits for it or answers 503.
// It returns, per ledger, how long after ackAt the last acceptance of a
// retired secret was sent.
func judgeCut(t *testing.T, what string, probes []probe, ackAt map[string]time.Time, current string) map[string]time.Duration {
	t.Helper()
	accepted := map[string]time.Duration{}
	counts := map[string]int{}
	var late, refusedCurrent, no503Header []string
	for _, p := range probes {
		status := strconv.Itoa(p.a.status)
		if p.a.err != nil {
			status = "no answer"
		}
		counts[p.ledger+" "+p.kind+" "+status]++
		if p.a.status == http.StatusServiceUnavailable && p.a.header.Get("Retry-After") == "" {
			no503Header = append(no503Header, p.ledger+" "+p.kind)
		}
		if p.kind == current {
			if p.a.status == http.StatusUnauthorized {
				refusedCurrent = append(refusedCurrent, fmt.Sprintf("%s at +%s", p.ledger, p.a.sent.Sub(ackAt[p.kind]).Round(time.Millisecond)))
			}
			continue
		}
		after := p.a.sent.Sub(ackAt[p.kind])
		if p.a.ok2xx() {
			if after > accepted[p.ledger+" "+p.kind] {
				accepted[p.ledger+" "+p.kind] = after
			}
			if after > stalenessBound+stalenessSlack {
				late = append(late, fmt.Sprintf("%s %s at +%s", p.ledger, p.kind, after.Round(time.Millisecond)))
			}
		} else if after > stalenessBound+stalenessSlack && p.a.status != http.StatusUnauthorized && p.a.status != http.StatusServiceUnavailable {
			late = append(late, fmt.Sprintf("%s %s at +%s: %s", p.ledger, p.kind, after.Round(time.Millisecond), p.a))
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var summary []string
	for _, k := range keys {
		summary = append(summary, fmt.Sprintf("%s: %d", k, counts[k]))
	}
	t.Logf("%s, answers (ledger, secret, status: count): %s", what, strings.Join(summary, ", "))
	var worst []string
	for k, d := range accepted {
		worst = append(worst, fmt.Sprintf("%s accepted until +%s", k, d.Round(time.Millisecond)))
	}
	sort.Strings(worst)
	t.Logf("%s: measured, after the command was acknowledged: %s (bound %s, slack %s)", what, strings.Join(worst, ", "), stalenessBound, stalenessSlack)
	if len(late) > 0 {
		t.Errorf("%s: %d answers past the staleness bound (%s + %s) that neither refused (401) nor said it could not tell (503), e.g. %s",
			what, len(late), stalenessBound, stalenessSlack, strings.Join(late[:min(len(late), 6)], "; "))
	}
	if len(refusedCurrent) > 0 {
		t.Errorf("%s: the secret just issued was refused with 401 %d times, e.g. %s: a ledger behind the stream must wait for it or answer 503",
			what, len(refusedCurrent), strings.Join(refusedCurrent[:min(len(refusedCurrent), 6)], "; "))
	}
	if len(no503Header) > 0 {
		t.Errorf("%s: %d answers 503 without Retry-After", what, len(no503Header))
	}
	return accepted
}

// sampleLiveness asks l's /healthz every 100 ms until until, each time
// with a 5 s bound. A sample over 100 ms is asked again at once, and
// counts as slow only if that is slow too (a loaded machine may stall one
// request; a liveness answer that waits on NATS is slow every time).
func (s *multiSuite) sampleLiveness(l *ledgerProc, until time.Time) func(t *testing.T, what string) {
	type sample struct {
		at      time.Time
		took    []time.Duration
		status  int
		errText string
	}
	var samples []sample
	done := make(chan struct{})
	go func() {
		defer close(done)
		for time.Now().Before(until) {
			var sm sample
			sm.at = time.Now()
			for try := 0; try < 2; try++ {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				a := s.http.call(ctx, l.base(), "GET", "/healthz", caller{}, nil, nil)
				cancel()
				sm.took = append(sm.took, time.Since(start))
				sm.status = a.status
				if a.err != nil {
					sm.errText = a.err.Error()
				}
				if time.Since(start) < 100*time.Millisecond {
					break
				}
			}
			samples = append(samples, sm)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return func(t *testing.T, what string) {
		t.Helper()
		<-done
		var slow []string
		var longest time.Duration
		for _, sm := range samples {
			for _, d := range sm.took {
				longest = max(longest, d)
			}
			if len(sm.took) == 2 && sm.took[1] >= 100*time.Millisecond || sm.status != http.StatusOK {
				slow = append(slow, fmt.Sprintf("%s then %s (%d %s)", sm.took[0].Round(time.Millisecond), sm.took[len(sm.took)-1].Round(time.Millisecond), sm.status, sm.errText))
			}
		}
		t.Logf("%s: %d /healthz samples on %s, the longest took %s", what, len(samples), l.name, longest.Round(time.Millisecond))
		if len(slow) > 0 {
			t.Errorf("%s: /healthz on %s did not answer 200 within 100 ms (twice in a row) %d times of %d: %s",
				what, l.name, len(slow), len(samples), strings.Join(slow[:min(len(slow), 5)], "; "))
		}
	}
}

// storedAt is when JetStream stored the event at seq: when its command
// was acknowledged, as the stream tells it (the servers share this
// machine's clock). It is the staleness bound's starting point: the
// command's answer may come later (its ledger waits for its own view).
func (s *multiSuite) storedAt(t *testing.T, seq uint64) time.Time {
	t.Helper()
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	var at time.Time
	ok := waitFor(30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		stream, err := js.Stream(ctx, "TOKENS")
		if err != nil {
			return false
		}
		msg, err := stream.GetMsg(ctx, seq)
		if err != nil {
			return false
		}
		at = msg.Time
		return true
	})
	if !ok {
		t.Fatalf("the stream's message at %d: not read", seq)
	}
	return at
}

// cutCommand sends a command that retires a secret during a cut, on its
// own goroutine: its ledger may hold the answer (waiting for its view)
// while the test goes on probing. got is closed once it is answered.
type cutCommand struct {
	a   answer
	tok httpapi.Token
	got chan struct{}
}

func (s *multiSuite) sendDuringCut(l *ledgerProc, method, path string) *cutCommand {
	c := &cutCommand{got: make(chan struct{})}
	go func() {
		defer close(c.got)
		c.a = s.call(l, method, path, s.admin, nil, nil)
		c.tok, _ = c.a.token()
	}()
	return c
}

// answered is the command's answer, once it has come.
func (c *cutCommand) answered() (answer, bool) {
	select {
	case <-c.got:
		return c.a, true
	default:
		return answer{}, false
	}
}

// frozenServer: ledger C is on n3, which leads nothing; n3 is frozen
// (SIGSTOP: its connections stay open and silent) and a token is rotated
// through A at once. Every instance may accept the old secret until the
// staleness bound has passed since JetStream stored the rotation, never
// after: then it refuses it (401) or says it cannot tell (503 with
// Retry-After); none refuses the new secret with 401; C's /healthz answers
// within 100 ms throughout. Once n3 is thawed C refuses the old secret and
// accepts the new one.
func (s *multiSuite) frozenServer(t *testing.T) {
	a, c := s.ledgers[0], s.ledgers[2]
	// C onto n3: its ways to n1 and n2 refuse until it is there, then work
	// again, so that C can fail over as it would in production.
	s.proxies[0].setRefuse(true)
	s.proxies[1].setRefuse(true)
	waitUntil(t, 45*time.Second, "C on n3 and ready", func() (bool, string) {
		ok, why := s.ready(c)
		live := [3]int32{s.proxies[0].live.Load(), s.proxies[1].live.Load(), s.proxies[2].live.Load()}
		return ok && live[0] == 0 && live[1] == 0 && live[2] > 0, fmt.Sprintf("connections through the proxies to n1, n2, n3: %v; %s", live, why)
	})
	s.proxies[0].setRefuse(false)
	s.proxies[1].setRefuse(false)
	s.leadElsewhere(t, "n3")

	tok, ans := s.create(a, s.admin, httpapi.CreateRequest{Scope: "organization", Name: "rotated while n3 is frozen"})
	if ans.status != http.StatusCreated {
		t.Fatalf("create on A: %s", ans)
	}
	s.knownEverywhere(t, tok.Sequence)

	s.cluster.signal(2, syscall.SIGSTOP)
	frozen := true
	thaw := func() {
		if frozen {
			s.cluster.signal(2, syscall.SIGCONT)
			frozen = false
		}
	}
	defer thaw()
	frozeAt := time.Now()
	liveness := s.sampleLiveness(c, frozeAt.Add(3*time.Second))
	rot := s.sendDuringCut(a, "POST", "/v1/tokens/"+tok.ID+"/rotate")
	probes := s.probeSecrets(s.ledgers, tok.ID, func() map[string]string {
		m := map[string]string{"old": tok.Secret}
		if a, ok := rot.answered(); ok && a.status == http.StatusOK {
			m["new"] = rot.tok.Secret
		}
		return m
	}, frozeAt.Add(stalenessBound+5*time.Second))
	<-rot.got
	thaw()
	liveness(t, "n3 frozen")
	if rot.a.status != http.StatusOK {
		t.Fatalf("rotate on A with n3 frozen: %s", rot.a)
	}
	stored := s.storedAt(t, rot.tok.Sequence)
	t.Logf("n3 frozen: the rotation was stored %s after the freeze, and answered on A %s after",
		stored.Sub(frozeAt).Round(time.Millisecond), rot.a.done.Sub(frozeAt).Round(time.Millisecond))
	judgeCut(t, "n3 frozen, C on it", probes, map[string]time.Time{"old": stored, "new": stored}, "new")
	s.afterCut(t, c, tok.ID, map[string]int{tok.Secret: http.StatusUnauthorized, rot.tok.Secret: http.StatusOK})
}

// afterCut waits until l is ready again and checks what each secret gets
// there. Right after a cut, l may still say now and then that it cannot
// show it is current (503: the question that last showed it was sent a
// while before its answer came), which is not a wrong answer; any answer
// but 503 must be the right one, and the right one must come.
func (s *multiSuite) afterCut(t *testing.T, l *ledgerProc, id string, want map[string]int) {
	t.Helper()
	waitUntil(t, 60*time.Second, l.name+" ready again", func() (bool, string) { return s.ready(l) })
	s.knownEverywhere(t, s.head(t))
	for secret, status := range want {
		waitUntil(t, 10*time.Second, l.name+" answering after the cut", func() (bool, string) {
			a := s.call(l, "GET", "/v1/tokens/"+id, caller{secret: secret, source: s.http.newSource()}, nil, nil)
			if a.status != status && a.status != http.StatusServiceUnavailable {
				t.Errorf("after the cut, on %s: %s, want %d", l.name, a, status)
				return true, ""
			}
			return a.status == status, a.String()
		})
	}
}

// partitioned: C's every way to the cluster stops forwarding (nothing is
// closed: a partition), and through A one token is rotated and another
// deleted. C may accept the old secrets until the staleness bound has
// passed since the command was acknowledged, never after; it answers 503
// with Retry-After instead; its /healthz answers within 100 ms. After the
// partition heals C refuses both old secrets and accepts the new one.
func (s *multiSuite) partitioned(t *testing.T) {
	a, c := s.ledgers[0], s.ledgers[2]
	waitUntil(t, 30*time.Second, "C ready", func() (bool, string) { return s.ready(c) })
	rotated, ans := s.create(a, s.admin, httpapi.CreateRequest{Scope: "organization", Name: "rotated during a partition"})
	if ans.status != http.StatusCreated {
		t.Fatalf("create on A: %s", ans)
	}
	deleted, ans := s.create(a, s.admin, httpapi.CreateRequest{Scope: "organization", Name: "deleted during a partition"})
	if ans.status != http.StatusCreated {
		t.Fatalf("create on A: %s", ans)
	}
	s.knownEverywhere(t, deleted.Sequence)

	for _, p := range s.proxies {
		p.setCut(true)
	}
	cut := true
	heal := func() {
		if cut {
			for _, p := range s.proxies {
				p.setCut(false)
			}
			cut = false
		}
	}
	defer heal()
	cutAt := time.Now()
	liveness := s.sampleLiveness(c, cutAt.Add(3*time.Second))
	rot := s.sendDuringCut(a, "POST", "/v1/tokens/"+rotated.ID+"/rotate")
	del := s.sendDuringCut(a, "DELETE", "/v1/tokens/"+deleted.ID)
	until := cutAt.Add(stalenessBound + 5*time.Second)
	var probes []probe
	var wg sync.WaitGroup
	wg.Go(func() {
		probes = s.probeSecrets([]*ledgerProc{c}, rotated.ID, func() map[string]string {
			m := map[string]string{"rotated-away": rotated.Secret}
			if a, ok := rot.answered(); ok && a.status == http.StatusOK {
				m["new"] = rot.tok.Secret
			}
			return m
		}, until)
	})
	deletedProbes := s.probeSecrets([]*ledgerProc{c}, deleted.ID, func() map[string]string {
		return map[string]string{"deleted": deleted.Secret}
	}, until)
	wg.Wait()
	probes = append(probes, deletedProbes...)
	<-rot.got
	<-del.got
	t.Logf("partition of C lasted %s", time.Since(cutAt).Round(time.Millisecond))
	heal()
	liveness(t, "C partitioned")
	if rot.a.status != http.StatusOK || del.a.status != http.StatusOK {
		t.Fatalf("during the partition, through A: rotate %s; delete %s", rot.a, del.a)
	}
	rotStored, delStored := s.storedAt(t, rot.tok.Sequence), s.storedAt(t, del.tok.Sequence)
	judgeCut(t, "C partitioned", probes, map[string]time.Time{"rotated-away": rotStored, "new": rotStored, "deleted": delStored}, "new")
	newTok := rot.tok
	s.afterCut(t, c, rotated.ID, map[string]int{rotated.Secret: http.StatusUnauthorized, newTok.Secret: http.StatusOK})
	s.afterCut(t, c, deleted.ID, map[string]int{deleted.Secret: http.StatusUnauthorized})
}

// dataDirLocked: a second `ledger serve` on a data directory a running one
// holds fails at once, naming the running one's pid; the running one
// goes on. With --nats-url (A's directory), and with NATS embedded.
func (s *multiSuite) dataDirLocked(t *testing.T) {
	second := func(t *testing.T, first *ledgerProc, argv []string) {
		t.Helper()
		p := &ledgerProc{name: first.name + "'s second", argv: argv}
		startProc(t, s.ledgerBin, p, "")
		defer func() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}()
		pid := strconv.Itoa(first.cmd.Process.Pid)
		select {
		case <-p.done:
			if p.err == nil || !strings.Contains(p.logs.String(), pid) {
				t.Errorf("a second serve on %s's data directory exited (%v) without naming its pid %s:\n%s", first.name, p.err, pid, lastLines(p.logs.String(), 5))
			}
		case <-p.serving:
			t.Errorf("a second serve on %s's data directory (held by pid %s) is serving too: %s", first.name, pid, strings.TrimSpace(p.stdout.String()))
		case <-time.After(15 * time.Second):
			t.Errorf("a second serve on %s's data directory neither failed nor served within 15 s:\n%s", first.name, lastLines(p.logs.String(), 5))
		}
		if ok, why := s.ready(first); !ok {
			t.Errorf("%s after the second serve: %s", first.name, why)
		}
	}
	t.Run("nats-url", func(t *testing.T) {
		a := s.ledgers[0]
		second(t, a, []string{"serve", "--nats-url", a.natsURL, "--nats-credentials", s.cluster.credentials, "--replicas", "3",
			"--http", "127.0.0.1:0", "--data", a.dir, "--org", multiOrg, "--metrics-listen="})
	})
	t.Run("embedded", func(t *testing.T) {
		dir := t.TempDir()
		first := &ledgerProc{name: "embedded", argv: []string{"serve", "--data", dir, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--metrics-listen="}}
		startProc(t, s.ledgerBin, first, "")
		defer first.stop(t)
		if err := first.waitServing(60 * time.Second); err != nil {
			t.Fatal(err)
		}
		// ready() needs its address: it printed it.
		first.httpAddr = servingAddr(first)
		second(t, first, []string{"serve", "--data", dir, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--metrics-listen="})
	})
}

// servingAddr is the address a ledger said it serves on.
func servingAddr(l *ledgerProc) string {
	for _, line := range strings.Split(l.stdout.String(), "\n") {
		if a, ok := strings.CutPrefix(line, "ledger serving on http://"); ok {
			return strings.Fields(a)[0]
		}
	}
	return ""
}

// portHolder listens on a server's client port while the server is down:
// each connection is counted and closed, as a server that is not there yet
// refuses it.
type portHolder struct {
	ln    net.Listener
	tries atomic.Int32
	done  chan struct{}
}

func holdPort(t *testing.T, addr string) *portHolder {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("hold %s: %v", addr, err)
	}
	h := &portHolder{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.tries.Add(1)
			c.Close()
		}
	}()
	return h
}

func (h *portHolder) release() {
	h.ln.Close()
	<-h.done
}

// fullRestart: every ledger and every server stops; the ledgers start
// again first, at the same moment, with no server to reach; the servers
// come back one at a time, the first alone until every ledger has
// connected to it (a cluster without a JetStream leader), then the other
// two. Every ledger comes up, none exits, and each serves what the stream
// held.
func (s *multiSuite) fullRestart(t *testing.T) {
	before := s.head(t)
	s.viewAt(t, before)
	for _, l := range s.ledgers {
		l.stop(t)
	}
	for i := range s.cluster.nodes {
		s.cluster.stop(i)
	}
	var holders []*portHolder
	for _, n := range s.cluster.nodes {
		holders = append(holders, holdPort(t, n.clientAddr))
	}
	released := false
	release := func() {
		if !released {
			for _, h := range holders {
				h.release()
			}
			released = true
		}
	}
	defer release()
	for _, l := range s.ledgers {
		startProc(t, s.ledgerBin, l, s.cluster.credentials)
	}
	started := time.Now()
	exitedEarly := func() []string {
		var out []string
		for _, l := range s.ledgers {
			if gone, how := l.exited(); gone {
				out = append(out, l.name+": "+how)
			}
		}
		return out
	}
	// Until each ledger has had the time to try more than once: two
	// rounds of tries on every port (A tries n1 and n2, B all three, C all
	// three through its proxies).
	tried := waitFor(60*time.Second, func() bool {
		if len(exitedEarly()) > 0 {
			return true
		}
		total := 0
		for _, h := range holders {
			total += int(h.tries.Load())
		}
		return total >= 16
	})
	if gone := exitedEarly(); len(gone) > 0 {
		t.Errorf("ledgers started while no NATS server answered exited within %s instead of waiting for the cluster:\n%s",
			time.Since(started).Round(time.Millisecond), strings.Join(gone, "\n"))
	} else if !tried {
		t.Errorf("ledgers started while no NATS server answered: fewer than 16 connection tries in 60 s")
	}
	release()

	// n1 alone: no JetStream meta leader (it takes two of three).
	s.cluster.start(0)
	if len(exitedEarly()) == 0 {
		waitFor(60*time.Second, func() bool {
			return len(exitedEarly()) > 0 || s.cluster.connections(0, "ledger") >= len(s.ledgers)
		})
		if n := s.cluster.connections(0, "ledger"); n < len(s.ledgers) {
			t.Errorf("with n1 up alone, %d of %d ledgers connected to it within 60 s", n, len(s.ledgers))
		}
		if l := s.cluster.metaLeader(0); l != "" {
			t.Errorf("n1 alone has a JetStream meta leader (%s): the test meant to start the ledgers before there was one", l)
		}
	}
	s.cluster.start(1)
	s.cluster.start(2)
	s.cluster.waitHealthy(60 * time.Second)
	var down []string
	for _, l := range s.ledgers {
		if err := l.waitServing(90*time.Second - time.Since(started)); err != nil {
			down = append(down, err.Error())
		}
	}
	if len(down) > 0 {
		t.Fatalf("after a full restart, with the ledgers started before the cluster had a leader, %d of %d did not come up:\n%s",
			len(down), len(s.ledgers), strings.Join(down, "\n"))
	}
	t.Logf("after a full restart all ledgers serve, %s after they were started", time.Since(started).Round(time.Millisecond))
	for _, l := range s.ledgers {
		list := s.listAt(t, l, before)
		s.viewAt(t, list.Sequence)
		seq, want := s.viewList()
		if diffs := compareListing(seq, want, list.Sequence, list.Tokens); len(diffs) > 0 {
			t.Errorf("after the restart, ledger %s's tokens differ from the stream's: %s", l.name, strings.Join(diffs[:min(6, len(diffs))], "; "))
		}
	}
}
