package main

// Issue 17: many ledgers, one truth. This suite runs what an operator runs
// to make the ledger highly available: three nats-server processes in one
// JetStream cluster (docker/nats.conf, locked down by `ledger nats setup`)
// and three `ledger serve --nats-url ... --replicas 3` processes on one
// stream, each with a data directory of its own. The test is the load
// balancer: it spreads requests over the three, round robin, without
// stickiness, and each subtest is one finding of the issue, stated as what
// a user gets when it is fixed: every answer is what one ledger would give.
//
// Ledger A reaches the servers n1 and n2, B all three, and C reaches each
// server through a TCP proxy of the test's (multi_harness_test.go), which
// can cut C off from the cluster (a partition) or steer it to n3 (which the
// freeze subtest then stops with SIGSTOP). The servers do not advertise the
// cluster's other URLs, so each ledger uses only the URLs it was given.
//
// Every request that may fail authentication comes from a loopback source
// address of its own (127.100.x.y), so that one subtest's 401s never spend
// the budget of another's requests.
//
// Where the binary has them, the ledgers run with --max-staleness 2s (the
// bound the cut subtests measure against) and one --audit-key file, and
// `ledger bootstrap` makes the first owner token; otherwise the first serve
// does, as it does today.
//
//	go test -race -run TestManyLedgersOnOneJetStreamCluster ./cmd/ledger
//
// takes about two minutes on two cores, most of it waiting: for the last
// use to show (up to 70 s after it, by when most of the suite has run) and,
// on today's code, for the ledgers started together to give up (30 s).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/projections"
)

const (
	// multiOrg is the suite's organization.
	multiOrg = "acme"
	// stalenessBound is --max-staleness's default: an instance that cannot
	// show it is within this of the stream's head answers 503 rather than
	// authenticate or verify from what it knows.
	stalenessBound = 2 * time.Second
	// stalenessSlack is what the measurement itself may add to the bound:
	// a probe goes out every 50 ms, and an acceptance is timed by when its
	// request was sent, the acknowledgement by when its answer came.
	stalenessSlack = 500 * time.Millisecond
)

// multiSuite is the cluster, the three ledgers and what the test knows.
type multiSuite struct {
	t         *testing.T
	ledgerBin string
	cluster   *restartableCluster
	ledgers   []*ledgerProc // A, B, C
	proxies   []*tcpProxy   // C's way to n1, n2, n3
	http      clients

	// What the binary offers of the interfaces issue 17 adds.
	hasBootstrap, hasMaxStaleness, hasAuditKey bool

	// The test's own reading of the stream: a view fed from the first
	// event by the same code as a ledger's, in this process.
	nc    *nats.Conn
	store *eventstore.Store
	view  *projections.Tokens

	bootstrapSecret string
	admin           caller // an owner token that expires: never the lasting owner
	// secrets the suite issued, by token id: the current one.
	mu      sync.Mutex
	secrets map[string]string
	// refused is what the test's view refused of the stream: an event
	// that does not follow its token's history, which only a writer that
	// got concurrency control wrong stores.
	refused []string
	// lastUse: a token used once, on A, early on.
	lastUseID string
	lastUseAt time.Time
}

// TestManyLedgersOnOneJetStreamCluster is issue 17's multi-instance suite.
// The subtests share one cluster and one set of ledgers where the finding
// allows, and run in order: each leaves the ledgers serving.
func TestManyLedgersOnOneJetStreamCluster(t *testing.T) {
	s := newMultiSuite(t)
	t.Run("InstancesStartedTogetherOnAnEmptyClusterAllComeUp", s.startTogether)
	s.ensureServing(t)
	s.prepare(t)
	t.Run("TwoOwnersDeletingEachOtherLeaveALastingOwner", s.ownersDeletingEachOther)
	t.Run("ADeploymentGetsTokensInOneWorkspaceOnly", s.deploymentInTwoWorkspaces)
	t.Run("AnOwnersLossAndAnotherChangeToItAreStoredInOrder", s.ownerLossBesideAnotherChange)
	t.Run("ATokenMadeOnOneInstanceIsAcceptedOnTheNext", s.madeHereAcceptedThere)
	t.Run("AConsoleSessionIsEveryInstances", s.consoleSession)
	t.Run("FailedAuthenticationsSpendOneBudget", s.oneFailureBudget)
	t.Run("HistoryReadsAndIdempotentRetriesGetNo503", s.noSpurious503)
	t.Run("EveryInstancesExportVerifiesWithOneKey", s.oneAuditKey)
	t.Run("RandomCommandsSpreadOverTheInstances", s.randomCommands)
	t.Run("LastUseAgreesAcrossInstances", s.lastUseAgrees)
	t.Run("FrozenServerStaleInstanceAnswers503", s.frozenServer)
	t.Run("PartitionedInstanceAnswers503", s.partitioned)
	t.Run("ASecondServeOnOneDataDirectoryFailsNamingThePID", s.dataDirLocked)
	t.Run("AfterAFullRestartInstancesStartedBeforeALeaderAllComeUp", s.fullRestart)
	t.Run("EveryStoredEventFollowsItsTokensHistory", s.everyEventApplies)
}

var refusedToken = regexp.MustCompile(`token (tok_[a-z2-7]+)`)

// everyEventApplies: the stream the ledgers wrote, read from the first
// event by the test, holds no event its token's history refuses (one
// decided on a version that was not the token's last, say). For each
// refusal it logs the token's events as the stream holds them.
func (s *multiSuite) everyEventApplies(t *testing.T) {
	s.viewAt(t, s.head(t))
	s.mu.Lock()
	refused := slices.Clone(s.refused)
	s.mu.Unlock()
	if n := s.view.Rejected(); n > 0 || len(refused) > 0 {
		t.Errorf("the test's view refused %d events of the stream: %s", n, strings.Join(refused, "; "))
	}
	for _, r := range refused {
		if m := refusedToken.FindStringSubmatch(r); m != nil {
			t.Logf("token %s in the stream: %s", m[1], s.eventsOf(t, m[1]))
		}
	}
}

// eventsOf is a token's events as the stream holds them: sequence, type,
// version, actor.
func (s *multiSuite) eventsOf(t *testing.T, id string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recs, err := s.store.Load(ctx, multiOrg, id)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, r := range recs {
		out = append(out, fmt.Sprintf("%d %s v%d by %s", r.Sequence, r.Event.Type, r.Event.Version, r.Event.Actor.TokenID))
	}
	return strings.Join(out, ", ")
}

func newMultiSuite(t *testing.T) *multiSuite {
	s := &multiSuite{t: t, secrets: map[string]string{}}
	natsBin := goBuild(t, "nats-server", "github.com/nats-io/nats-server/v2")
	s.ledgerBin = goBuild(t, "ledger", ".")
	help, _ := exec.Command(s.ledgerBin, "serve", "--help").CombinedOutput()
	s.hasMaxStaleness = strings.Contains(string(help), "--max-staleness")
	s.hasAuditKey = strings.Contains(string(help), "--audit-key")
	bhelp, err := exec.Command(s.ledgerBin, "bootstrap", "--help").CombinedOutput()
	s.hasBootstrap = err == nil && strings.Contains(string(bhelp), "--out")
	t.Logf("ledger serve --max-staleness: %v; --audit-key: %v; ledger bootstrap: %v", s.hasMaxStaleness, s.hasAuditKey, s.hasBootstrap)

	s.cluster = newRestartableCluster(t, natsBin, 3)
	for i := range s.cluster.nodes {
		s.cluster.start(i)
	}
	s.cluster.waitHealthy(60 * time.Second)
	for _, n := range s.cluster.nodes {
		s.proxies = append(s.proxies, startProxy(t, n.clientAddr))
	}
	var extra []string
	if s.hasMaxStaleness {
		extra = append(extra, "--max-staleness", stalenessBound.String())
	}
	if s.hasAuditKey {
		// One signing key for every instance, as an operator gives it.
		dir := t.TempDir()
		if _, err := exporters.LoadOrCreateKey(dir); err != nil {
			t.Fatal(err)
		}
		extra = append(extra, "--audit-key", filepath.Join(dir, exporters.KeyFile))
	}
	proxied := make([]string, len(s.proxies))
	for i, p := range s.proxies {
		proxied[i] = p.url()
	}
	for i, urls := range []string{s.cluster.urls(0, 1), s.cluster.urls(0, 1, 2), strings.Join(proxied, ",")} {
		l := &ledgerProc{name: string(rune('A' + i)), dir: t.TempDir(), httpAddr: freeAddr(t), natsURL: urls, extra: extra}
		s.ledgers = append(s.ledgers, l)
	}
	t.Cleanup(func() {
		for _, l := range s.ledgers {
			if l.cmd != nil {
				_ = l.cmd.Process.Kill()
				<-l.done
			}
			if t.Failed() && l.logs != nil {
				t.Logf("ledger %s, last lines:\n%s", l.name, lastLines(l.logs.String(), 30))
			}
		}
	})
	return s
}

// startTogether starts the three ledgers at the same moment on the empty
// cluster (and, where `ledger bootstrap` exists, two of those at the same
// moment too): all come up, none exits, and the organization gets exactly
// one bootstrap token, whose secret is written once, mode 0600.
func (s *multiSuite) startTogether(t *testing.T) {
	for _, l := range s.ledgers {
		startProc(t, s.ledgerBin, l, s.cluster.credentials)
	}
	var boots []*exec.Cmd
	var outs []string
	var bootOut []*syncBuffer
	if s.hasBootstrap {
		for range 2 {
			out := filepath.Join(t.TempDir(), "bootstrap-token")
			cmd := exec.Command(s.ledgerBin, s.bootstrapArgs(out)...)
			buf := &syncBuffer{}
			cmd.Stdout, cmd.Stderr = buf, buf
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			boots, outs, bootOut = append(boots, cmd), append(outs, out), append(bootOut, buf)
		}
	}
	started := time.Now()
	var failed []string
	for _, l := range s.ledgers {
		if err := l.waitServing(90*time.Second - time.Since(started)); err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		t.Errorf("of three ledgers started at the same moment on an empty cluster, %d did not come up within 90 s:\n%s",
			len(failed), strings.Join(failed, "\n"))
	} else {
		t.Logf("three ledgers started together on an empty cluster: all serving after %s", time.Since(started).Round(time.Millisecond))
	}
	var secretFiles []string
	for i, cmd := range boots {
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var err error
		select {
		case err = <-exited:
		case <-time.After(90*time.Second - time.Since(started)):
			_ = cmd.Process.Kill()
			err = fmt.Errorf("still running after 90 s: %v", <-exited)
		}
		if err != nil {
			t.Errorf("ledger bootstrap #%d, run beside another: %v\n%s", i+1, err, bootOut[i].String())
		}
		if info, err := os.Stat(outs[i]); err == nil {
			secretFiles = append(secretFiles, outs[i])
			if info.Mode().Perm() != 0o600 {
				t.Errorf("ledger bootstrap wrote %s with mode %v, want 0600", outs[i], info.Mode().Perm())
			}
		}
	}
	if !s.hasBootstrap {
		for _, l := range s.ledgers {
			if _, err := os.Stat(filepath.Join(l.dir, "bootstrap-token")); err == nil {
				secretFiles = append(secretFiles, filepath.Join(l.dir, "bootstrap-token"))
			}
		}
	}
	if len(secretFiles) > 1 {
		t.Errorf("bootstrap secrets written %d times (%v): exactly one bootstrap token per organization", len(secretFiles), secretFiles)
	}
	if len(secretFiles) == 0 {
		return
	}
	b, err := os.ReadFile(secretFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	s.bootstrapSecret = strings.TrimSpace(string(b))
	// The stream holds one token, the bootstrap token, and the secret
	// written is its.
	for _, l := range s.ledgers {
		select {
		case <-l.serving:
		default:
			continue
		}
		a := s.call(l, "GET", "/v1/tokens", caller{secret: s.bootstrapSecret}, nil, nil)
		var list httpapi.TokenList
		if a.status != http.StatusOK || json.Unmarshal(a.body, &list) != nil {
			t.Errorf("ledger %s, the bootstrap secret listing tokens: %s", l.name, a)
			continue
		}
		// Nothing else has been made yet: the organization's one token.
		if len(list.Tokens) != 1 || list.Tokens[0].Role != domain.RoleOrganizationOwner {
			var names []string
			for _, tok := range list.Tokens {
				names = append(names, fmt.Sprintf("%s (%s)", tok.Name, tok.Role))
			}
			t.Errorf("ledger %s lists %v on a stream just bootstrapped, want exactly one ORGANIZATION_OWNER", l.name, names)
		}
		break
	}
}

// bootstrapArgs is the command line of `ledger bootstrap` on the suite's
// cluster, as docker-compose.yml runs it (with the suite's organization and
// the ledgers' replicas where it takes them).
func (s *multiSuite) bootstrapArgs(out string) []string {
	args := []string{"bootstrap", "--nats-url", s.cluster.urls(0, 1, 2), "--nats-credentials", s.cluster.credentials, "--out", out}
	help, _ := exec.Command(s.ledgerBin, "bootstrap", "--help").CombinedOutput()
	if strings.Contains(string(help), "--org") {
		args = append(args, "--org", multiOrg)
	}
	if strings.Contains(string(help), "--replicas") {
		args = append(args, "--replicas", "3")
	}
	return args
}

// ensureServing brings up, one at a time, the ledgers the first subtest
// left down, so that the other findings can be shown all the same, and
// makes the bootstrap token if none was.
func (s *multiSuite) ensureServing(t *testing.T) {
	for _, l := range s.ledgers {
		select {
		case <-l.serving:
			continue
		default:
		}
		if l.cmd != nil {
			_ = l.cmd.Process.Kill()
			<-l.done
		}
		t.Logf("starting ledger %s again, alone", l.name)
		startProc(t, s.ledgerBin, l, s.cluster.credentials)
		if err := l.waitServing(60 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if s.bootstrapSecret != "" {
		return
	}
	if s.hasBootstrap {
		out := filepath.Join(t.TempDir(), "bootstrap-token")
		cmd := exec.Command(s.ledgerBin, s.bootstrapArgs(out)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ledger bootstrap: %v\n%s", err, b)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("ledger bootstrap on a stream without a bootstrap token wrote no secret: %v", err)
		}
		s.bootstrapSecret = strings.TrimSpace(string(b))
		return
	}
	for _, l := range s.ledgers {
		if b, err := os.ReadFile(filepath.Join(l.dir, "bootstrap-token")); err == nil {
			s.bootstrapSecret = strings.TrimSpace(string(b))
			return
		}
	}
	t.Fatal("no ledger wrote a bootstrap token")
}

// prepare opens the test's own reading of the stream and makes the
// suite's admin: an ORGANIZATION_OWNER that expires, so that it never
// counts as the organization's lasting owner.
func (s *multiSuite) prepare(t *testing.T) {
	var err error
	s.nc, err = nats.Connect(s.cluster.urls(0, 1, 2), nats.Name("observer"), nats.MaxReconnects(-1),
		nats.UserInfo(natsaccess.LedgerUser, s.cluster.creds.LedgerPassword),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.nc.Close)
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := eventstore.DefaultConfig()
	cfg.Replicas = 3
	if s.store, err = eventstore.Open(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	s.view = projections.NewTokens()
	t.Cleanup(app.Feed(s.store, s.view, func(err error) {
		t.Logf("the test's view: %v", err)
		if strings.HasPrefix(err.Error(), "refused") {
			s.mu.Lock()
			s.refused = append(s.refused, err.Error())
			s.mu.Unlock()
		}
	}))

	boot := caller{secret: s.bootstrapSecret}
	admin, a := s.create(s.ledgers[0], boot, httpapi.CreateRequest{Scope: "organization", Name: "suite admin",
		Role: string(domain.RoleOrganizationOwner), ExpirationDays: ptr(365)})
	if a.status != http.StatusCreated {
		t.Fatalf("create the suite's admin on A with the bootstrap secret: %s", a)
	}
	s.admin = caller{secret: admin.Secret}
	s.knownEverywhere(t, admin.Sequence)

	// One token used once, on A, now: its last use is read on every
	// instance at the end.
	u, a := s.create(s.ledgers[0], s.admin, httpapi.CreateRequest{Scope: "organization", Name: "used once on A"})
	if a.status != http.StatusCreated {
		t.Fatalf("create: %s", a)
	}
	s.lastUseID, s.lastUseAt = u.ID, time.Now()
	if a := s.call(s.ledgers[0], "GET", "/v1/tokens/"+u.ID, caller{secret: u.Secret}, nil, nil); a.status != http.StatusOK {
		t.Fatalf("a token reading itself on the instance that made it: %s", a)
	}
	s.knownEverywhere(t, u.Sequence)
}

// call sends one request to ledger l.
func (s *multiSuite) call(l *ledgerProc, method, path string, who caller, body any, header http.Header) answer {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return s.http.call(ctx, l.base(), method, path, who, body, header)
}

// create makes a token through l and keeps its secret.
func (s *multiSuite) create(l *ledgerProc, who caller, req httpapi.CreateRequest) (httpapi.Token, answer) {
	a := s.call(l, "POST", "/v1/tokens", who, req, nil)
	tok, _ := a.token()
	if a.ok2xx() && tok.Secret != "" {
		s.keep(tok.ID, tok.Secret)
	}
	return tok, a
}

func (s *multiSuite) keep(id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets[id] = secret
}

func (s *multiSuite) secretOf(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.secrets[id]
}

// head is the stream's last sequence, as the test reads it.
func (s *multiSuite) head(t *testing.T) uint64 {
	t.Helper()
	var last uint64
	var err error
	ok := waitFor(20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		last, err = s.store.LastSequence(ctx)
		return err == nil
	})
	if !ok {
		t.Fatalf("the stream's last sequence: %v", err)
	}
	return last
}

// viewAt waits until the test's view has seq.
func (s *multiSuite) viewAt(t *testing.T, seq uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.view.WaitFor(ctx, seq); err != nil {
		t.Fatalf("the test's view did not reach sequence %d: %v", seq, err)
	}
}

// knownEverywhere waits until every ledger's view has seq.
func (s *multiSuite) knownEverywhere(t *testing.T, seq uint64) {
	t.Helper()
	for _, l := range s.ledgers {
		s.listAt(t, l, seq)
	}
}

// listAt lists every token of the organization on l once its view has
// seq.
func (s *multiSuite) listAt(t *testing.T, l *ledgerProc, seq uint64) httpapi.TokenList {
	t.Helper()
	var list httpapi.TokenList
	var a answer
	ok := waitFor(30*time.Second, func() bool {
		a = s.call(l, "GET", "/v1/tokens?min_sequence="+strconv.FormatUint(seq, 10), s.admin, nil, nil)
		return a.status == http.StatusOK && json.Unmarshal(a.body, &list) == nil
	})
	if !ok {
		t.Fatalf("ledger %s: list at sequence %d: %s", l.name, seq, a)
	}
	return list
}

// lasting is whether a token is a lasting owner: an active
// ORGANIZATION_OWNER that never expires.
func lasting(tok *domain.Token, now time.Time) bool {
	return tok.Scope() == domain.ScopeOrganization && tok.Role() == domain.RoleOrganizationOwner &&
		tok.Status(now) == domain.StatusActive && tok.ExpiresAt().IsZero()
}

func lastingJSON(tok httpapi.Token) bool {
	return tok.Scope == domain.ScopeOrganization && tok.Role == domain.RoleOrganizationOwner &&
		tok.Status == domain.StatusActive && tok.ExpiresAt == nil
}

// lastingOwners is the organization's lasting owners in the test's view
// once it has seq.
func (s *multiSuite) lastingOwners(t *testing.T, seq uint64) []string {
	t.Helper()
	s.viewAt(t, seq)
	var out []string
	now := time.Now()
	for _, l := range s.view.List(multiOrg) {
		if !l.Quarantined && lasting(l.Token, now) {
			out = append(out, l.Token.ID())
		}
	}
	return out
}

// splitDeployments is the deployments whose active tokens, in the test's
// view once it has seq, name more than one workspace.
func (s *multiSuite) splitDeployments(t *testing.T, seq uint64) map[string][]string {
	t.Helper()
	s.viewAt(t, seq)
	return splitIn(s.view.List(multiOrg))
}

func splitIn(list []projections.Listed) map[string][]string {
	now := time.Now()
	byDep := map[string]map[string]bool{}
	for _, l := range list {
		tok := l.Token
		if tok.Scope() != domain.ScopeDeployment || tok.Status(now) != domain.StatusActive {
			continue
		}
		if byDep[tok.DeploymentID()] == nil {
			byDep[tok.DeploymentID()] = map[string]bool{}
		}
		byDep[tok.DeploymentID()][tok.WorkspaceID()] = true
	}
	out := map[string][]string{}
	for dep, ws := range byDep {
		if len(ws) > 1 {
			out[dep] = slices.Sorted(func(yield func(string) bool) {
				for w := range ws {
					if !yield(w) {
						return
					}
				}
			})
		}
	}
	return out
}

// race sends requests at the same moment, each on its own goroutine, and
// returns their answers in order.
func (s *multiSuite) race(reqs ...func() answer) []answer {
	out := make([]answer, len(reqs))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Go(func() {
			<-start
			out[i] = r()
		})
	}
	close(start)
	wg.Wait()
	return out
}

// ownersDeletingEachOther: the organization has exactly two lasting
// owners, X and Y; X deletes Y through one ledger while Y deletes X through
// another, at the same moment. However the two are spread, a lasting owner
// is left: one deletion is refused (409, or 401 once its own token is
// gone). Many rounds, each on a fresh pair.
func (s *multiSuite) ownersDeletingEachOther(t *testing.T) {
	const rounds = 12
	mk := func(l *ledgerProc, name string) string {
		tok, a := s.create(l, s.admin, httpapi.CreateRequest{Scope: "organization", Name: name, Role: string(domain.RoleOrganizationOwner)})
		if a.status != http.StatusCreated {
			t.Fatalf("create owner %s on %s: %s", name, l.name, a)
		}
		return tok.ID
	}
	pair := []string{mk(s.ledgers[0], "owner x0"), mk(s.ledgers[1], "owner y0")}
	head := s.head(t)
	for _, id := range s.lastingOwners(t, head) {
		if !slices.Contains(pair, id) {
			if a := s.call(s.ledgers[0], "DELETE", "/v1/tokens/"+id, s.admin, nil, nil); a.status != http.StatusOK {
				t.Fatalf("delete lasting owner %s: %s", id, a)
			}
		}
	}
	bothStored := 0
	outcomes := map[string]int{}
	for round := range rounds {
		s.knownEverywhere(t, s.head(t))
		x, y := pair[0], pair[1]
		lx, ly := s.ledgers[round%3], s.ledgers[(round+1)%3]
		srcX, srcY := s.http.newSource(), s.http.newSource()
		got := s.race(
			func() answer {
				return s.call(lx, "DELETE", "/v1/tokens/"+y, caller{secret: s.secretOf(x), source: srcX}, nil, nil)
			},
			func() answer {
				return s.call(ly, "DELETE", "/v1/tokens/"+x, caller{secret: s.secretOf(y), source: srcY}, nil, nil)
			},
		)
		outcomes[fmt.Sprintf("%d+%d", min(got[0].status, got[1].status), max(got[0].status, got[1].status))]++
		head := s.head(t)
		left := s.lastingOwners(t, head)
		if len(left) == 0 {
			bothStored++
			if bothStored == 1 {
				t.Errorf("round %d: X deleted Y through %s (%d) while Y deleted X through %s (%d): the organization has no lasting owner left",
					round, lx.name, got[0].status, ly.name, got[1].status)
			}
		}
		// Every instance agrees on who is left.
		for _, l := range s.ledgers {
			var n int
			for _, tok := range s.listAt(t, l, head).Tokens {
				if lastingJSON(tok) {
					n++
				}
			}
			if n != len(left) {
				t.Errorf("round %d: ledger %s lists %d lasting owners at sequence %d, the stream has %d", round, l.name, n, head, len(left))
			}
		}
		// The next pair: the survivor and a new owner.
		for len(left) < 2 {
			left = append(left, mk(s.ledgers[round%3], fmt.Sprintf("owner r%d-%d", round, len(left))))
		}
		pair = left[:2]
		for _, id := range left[2:] {
			if a := s.call(s.ledgers[0], "DELETE", "/v1/tokens/"+id, s.admin, nil, nil); a.status != http.StatusOK {
				t.Fatalf("delete lasting owner %s: %s", id, a)
			}
		}
	}
	t.Logf("%d rounds; answers (lower+higher status): %v", rounds, outcomes)
	if bothStored > 0 {
		t.Errorf("in %d of %d rounds both deletions were stored and no lasting owner was left", bothStored, rounds)
	}
}

// deploymentInTwoWorkspaces: two deployment tokens for one new deployment,
// one in workspace ws-east and one in ws-west, created through two ledgers
// at the same moment: one is refused (409), and the deployment's active
// tokens are in one workspace, on every instance.
func (s *multiSuite) deploymentInTwoWorkspaces(t *testing.T) {
	const rounds = 12
	both := 0
	for round := range rounds {
		dep := fmt.Sprintf("dep-race-%d", round)
		la, lb := s.ledgers[round%3], s.ledgers[(round+1)%3]
		req := func(l *ledgerProc, ws string) func() answer {
			return func() answer {
				tok, a := s.create(l, s.admin, httpapi.CreateRequest{Scope: "deployment", Name: dep + " in " + ws, WorkspaceID: ws, DeploymentID: dep})
				_ = tok
				return a
			}
		}
		got := s.race(req(la, "ws-east"), req(lb, "ws-west"))
		for _, a := range got {
			if a.status != http.StatusCreated && a.status != http.StatusConflict {
				t.Errorf("round %d: a deployment token: %s, want 201 or 409", round, a)
			}
		}
		if got[0].status == http.StatusCreated && got[1].status == http.StatusCreated {
			both++
		}
		head := s.head(t)
		if split := s.splitDeployments(t, head); len(split[dep]) > 1 && both == 1 {
			t.Errorf("round %d: deployment %s has active tokens in %v (made through %s and %s at the same moment)", round, dep, split[dep], la.name, lb.name)
		}
		for _, l := range s.ledgers {
			ws := map[string]bool{}
			for _, tok := range s.listAt(t, l, head).Tokens {
				if tok.DeploymentID != nil && *tok.DeploymentID == dep && tok.Status == domain.StatusActive {
					ws[*tok.WorkspaceID] = true
				}
			}
			if len(ws) > 1 && both == 1 {
				t.Errorf("round %d: ledger %s lists deployment %s in workspaces %v", round, l.name, dep, ws)
			}
		}
	}
	if both > 0 {
		t.Errorf("in %d of %d rounds both tokens were created: one deployment with tokens in two workspaces", both, rounds)
	}
}

// ownerLossBesideAnotherChange: an owner token loses its role (deleted, or
// demoted) through one ledger while another change is made to it
// (assigned to a workspace, renamed) through another, at the same moment.
// Either may win, or both in turn, but every event stored follows the
// token's history: none is stored on a version that was not the token's
// last (which every view would refuse, quarantining the token instead of
// applying the acknowledged command). The owner's loss is the command a
// rule spans (it expects the organization's last sequence), the other one
// expects only the token's.
func (s *multiSuite) ownerLossBesideAnotherChange(t *testing.T) {
	const rounds = 16
	s.mu.Lock()
	before := len(s.refused)
	s.mu.Unlock()
	// A lasting owner that stays: the rule lets the others go.
	keeper, a := s.create(s.ledgers[0], s.admin, httpapi.CreateRequest{Scope: "organization", Name: "keeper", Role: string(domain.RoleOrganizationOwner)})
	if a.status != http.StatusCreated {
		t.Fatalf("create: %s", a)
	}
	_ = keeper
	outcomes := map[string]int{}
	for round := range rounds {
		tok, a := s.create(s.ledgers[round%3], s.admin, httpapi.CreateRequest{Scope: "organization", Name: fmt.Sprintf("owner %d", round), Role: string(domain.RoleOrganizationOwner)})
		if a.status != http.StatusCreated {
			t.Fatalf("create: %s", a)
		}
		s.knownEverywhere(t, tok.Sequence)
		l1, l2 := s.ledgers[round%3], s.ledgers[(round+1)%3]
		loss := func() answer { return s.call(l1, "DELETE", "/v1/tokens/"+tok.ID, s.admin, nil, nil) }
		if round%2 == 1 {
			loss = func() answer {
				return s.call(l1, "PATCH", "/v1/tokens/"+tok.ID, s.admin, httpapi.UpdateRequest{Role: ptr(string(domain.RoleOrganizationMember))}, nil)
			}
		}
		other := func() answer {
			return s.call(l2, "PUT", "/v1/tokens/"+tok.ID+"/workspaces/ws-owner-race", s.admin, httpapi.AssignRequest{Role: string(domain.RoleWorkspaceOwner)}, nil)
		}
		if round%4 >= 2 {
			other = func() answer {
				return s.call(l2, "PATCH", "/v1/tokens/"+tok.ID, s.admin, httpapi.UpdateRequest{Name: ptr(fmt.Sprintf("owner %d renamed", round))}, nil)
			}
		}
		got := s.race(loss, other)
		outcomes[fmt.Sprintf("%d+%d", got[0].status, got[1].status)]++
		s.viewAt(t, s.head(t))
	}
	s.mu.Lock()
	refused := slices.Clone(s.refused[before:])
	s.mu.Unlock()
	t.Logf("%d rounds; answers (loss+other): %v", rounds, outcomes)
	if len(refused) > 0 {
		t.Errorf("%d of %d rounds stored an event on a version that was not its token's last: %s", len(refused), rounds, strings.Join(refused, "; "))
		for _, r := range refused {
			if m := refusedToken.FindStringSubmatch(r); m != nil {
				t.Logf("token %s in the stream: %s", m[1], s.eventsOf(t, m[1]))
			}
		}
	}
}

// authFailures is the failed authentications the ledgers have counted.
func (s *multiSuite) authFailures(t *testing.T) int {
	t.Helper()
	total := 0
	for _, l := range s.ledgers {
		a := s.call(l, "GET", "/metrics", caller{}, nil, nil)
		if a.status != http.StatusOK {
			t.Fatalf("ledger %s /metrics: %s", l.name, a)
		}
		for _, line := range strings.Split(string(a.body), "\n") {
			if v, ok := strings.CutPrefix(line, "tokenledger_auth_failures_total "); ok {
				n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					t.Fatalf("ledger %s: %q", l.name, line)
				}
				total += int(n)
			}
		}
	}
	return total
}

// madeHereAcceptedThere: a token created through one ledger is accepted by
// the next right after the 201 (not 401, and nothing charged to the
// failed-authentication budget); the next after that shows it to the admin
// without min_sequence (200, not 404); a rotation's new secret is accepted
// on the next one at once, and verifies there.
func (s *multiSuite) madeHereAcceptedThere(t *testing.T) {
	const rounds = 15
	before := s.authFailures(t)
	failed := map[string]int{}
	var first []string
	note := func(what string, a answer) {
		failed[what]++
		if len(first) < 4 {
			first = append(first, what+": "+a.String())
		}
	}
	for i := range rounds {
		a, b, c := s.ledgers[i%3], s.ledgers[(i+1)%3], s.ledgers[(i+2)%3]
		tok, ans := s.create(a, s.admin, httpapi.CreateRequest{Scope: "organization", Name: fmt.Sprintf("fresh %d", i)})
		if ans.status != http.StatusCreated {
			t.Fatalf("create on %s: %s", a.name, ans)
		}
		if r := s.call(b, "GET", "/v1/tokens/"+tok.ID, caller{secret: tok.Secret, source: s.http.newSource()}, nil, nil); r.status != http.StatusOK {
			note("the new token reading itself on the next instance", r)
		}
		if r := s.call(c, "GET", "/v1/tokens/"+tok.ID, caller{secret: s.admin.secret, source: s.http.newSource()}, nil, nil); r.status != http.StatusOK {
			note("the admin reading the new token on the one after, without min_sequence", r)
		}
		ans = s.call(a, "POST", "/v1/tokens/"+tok.ID+"/rotate", s.admin, nil, nil)
		rot, err := ans.token()
		if err != nil || ans.status != http.StatusOK {
			t.Fatalf("rotate on %s: %s", a.name, ans)
		}
		if r := s.call(b, "GET", "/v1/tokens/"+tok.ID, caller{secret: rot.Secret, source: s.http.newSource()}, nil, nil); r.status != http.StatusOK {
			note("the rotated token's new secret on the next instance", r)
		}
		r := s.call(c, "POST", "/v1/verify", caller{secret: s.admin.secret, source: s.http.newSource()}, httpapi.VerifyRequest{Token: rot.Secret}, nil)
		var v httpapi.Verification
		if r.status != http.StatusOK || json.Unmarshal(r.body, &v) != nil || !v.Valid {
			note("verify of the new secret on the one after", r)
		}
	}
	if len(failed) > 0 {
		t.Errorf("over %d tokens, each made and rotated on one instance and used on the next at once: %v; first: %s",
			rounds, failed, strings.Join(first, "; "))
	}
	if after := s.authFailures(t); after != before {
		t.Errorf("the ledgers counted %d failed authentications meanwhile, all of them valid secrets: want none", after-before)
	}
}

var csrfValue = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// consoleSession: a browser signs in to the console through one ledger
// and goes on through the others, as a load balancer without stickiness
// sends it: every page is the signed-in table, never the sign-in page. Its
// sign-out, through one, ends the session on all.
func (s *multiSuite) consoleSession(t *testing.T) {
	jar, _ := cookiejar.New(nil)
	// One host, as behind a load balancer: cookies do not tell ports apart.
	browser := &http.Client{Jar: jar, Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(l *ledgerProc, method, path string, form url.Values, cookie *http.Cookie) (int, string, string) {
		t.Helper()
		req, err := http.NewRequest(method, l.base()+path, strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		client := browser
		if cookie != nil { // a request carrying only this cookie
			client = &http.Client{Timeout: 20 * time.Second, CheckRedirect: browser.CheckRedirect}
			req.AddCookie(cookie)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s on %s: %v", method, path, l.name, err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Location"), readAll(resp)
	}
	a := s.ledgers[0]
	code, _, page := do(a, "GET", "/console/sign-in", nil, nil)
	m := csrfValue.FindStringSubmatch(page)
	if code != http.StatusOK || m == nil {
		t.Fatalf("sign-in page on A: %d", code)
	}
	code, loc, _ := do(a, "POST", "/console/sign-in", url.Values{"csrf": {m[1]}, "token": {s.admin.secret}}, nil)
	if code != http.StatusSeeOther || loc != "/console/" {
		t.Fatalf("sign in on A: %d to %q, want 303 to /console/", code, loc)
	}
	var session *http.Cookie
	u, _ := url.Parse(a.base() + "/console/")
	for _, c := range jar.Cookies(u) {
		if c.Name == "tl_session" {
			session = &http.Cookie{Name: c.Name, Value: c.Value}
		}
	}
	if session == nil {
		t.Fatal("signed in on A, and no session cookie")
	}
	var csrf string
	var signedOut []string
	for i := range 6 {
		l := s.ledgers[i%3]
		code, loc, page := do(l, "GET", "/console/", nil, nil)
		if code != http.StatusOK || !strings.Contains(page, `id="tokens"`) {
			signedOut = append(signedOut, fmt.Sprintf("click %d on %s: %d to %q", i+1, l.name, code, loc))
			// The browser lost its cookie to the sign-in redirect: it would
			// sign in again; this one goes on with its session.
			if jar.Cookies(u) == nil || !slices.ContainsFunc(jar.Cookies(u), func(c *http.Cookie) bool { return c.Name == "tl_session" }) {
				jar.SetCookies(u, []*http.Cookie{{Name: session.Name, Value: session.Value, Path: "/console"}})
			}
			continue
		}
		if m := csrfValue.FindStringSubmatch(page); m != nil {
			csrf = m[1]
		}
	}
	if len(signedOut) > 0 {
		t.Errorf("a session made on A, its clicks spread over the three instances: %d of 6 were sent to sign in: %s",
			len(signedOut), strings.Join(signedOut, "; "))
	}
	if csrf == "" {
		t.Fatal("no signed-in page held a form")
	}
	// Sign out through B: the session is over on A too.
	if code, loc, _ := do(s.ledgers[1], "POST", "/console/sign-out", url.Values{"csrf": {csrf}}, session); code != http.StatusSeeOther || !strings.HasPrefix(loc, "/console/sign-in") {
		t.Errorf("sign out on B: %d to %q, want 303 to the sign-in page", code, loc)
	}
	for _, l := range []*ledgerProc{s.ledgers[0], s.ledgers[2]} {
		if code, loc, page := do(l, "GET", "/console/", nil, session); code == http.StatusOK || strings.Contains(page, `id="tokens"`) {
			t.Errorf("signed out through B, the session still opens the token table on %s (%d %q)", l.name, code, loc)
		}
	}
}

func readAll(resp *http.Response) string {
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// oneFailureBudget: one source address sends bad secrets, spread round
// robin over the three ledgers. The organization's budget is one: the
// first 429 comes right after the burst in total (not three bursts), and
// from then on every instance refuses that source, even its valid secret.
func (s *multiSuite) oneFailureBudget(t *testing.T) {
	burst, interval := httpapi.DefaultFailureBurst, httpapi.DefaultFailureInterval
	src := s.http.newSource()
	bad := "tlo_" + strings.Repeat("A", 49)
	start := time.Now()
	first := 0
	for i := 1; i <= 3*burst+3 && first == 0; i++ {
		a := s.call(s.ledgers[i%3], "GET", "/v1/tokens", caller{secret: bad, source: src}, nil, nil)
		switch a.status {
		case http.StatusTooManyRequests:
			first = i
		case http.StatusUnauthorized:
		default:
			t.Fatalf("bad secret, attempt %d on %s: %s", i, s.ledgers[i%3].name, a)
		}
	}
	// Attempts earned back while the test sent, and one in flight on each
	// of the other two instances when the budget ran out.
	allowed := burst + 1 + int(time.Since(start)/interval) + len(s.ledgers) - 1
	switch {
	case first == 0:
		t.Errorf("%d failed authentications from one address over three instances, none refused with 429: the budget (burst %d) is per instance", 3*burst+3, burst)
	case first > allowed:
		t.Errorf("the first 429 came at failed attempt %d, spread over three instances; one budget of burst %d gives it by attempt %d", first, burst, allowed)
	default:
		t.Logf("the first 429 came at failed attempt %d (burst %d)", first, burst)
	}
	for _, l := range s.ledgers {
		a := s.call(l, "GET", "/v1/tokens", caller{secret: s.admin.secret, source: src}, nil, nil)
		if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
			t.Errorf("ledger %s, the spent source with a valid secret: %s, want 429 with Retry-After", l.name, a)
		}
	}
}

// noSpurious503: while the cluster has a leader, token history reads and
// reads at a past time (both read the stream) never answer 503, and
// concurrent retries of one Idempotency-Key, spread over the instances,
// never answer 5xx: they make one token, answered once with its secret and
// otherwise as a replay of it.
func (s *multiSuite) noSpurious503(t *testing.T) {
	var ids []string
	for _, l := range s.view.List(multiOrg) {
		ids = append(ids, l.Token.ID())
		if len(ids) == 6 {
			break
		}
	}
	const workers, reads = 4, 60
	var mu sync.Mutex
	statuses := map[int]int{}
	var firstBad []string
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range reads {
				l := s.ledgers[(w+i)%3]
				id := ids[(w*reads+i)%len(ids)]
				path := "/v1/tokens/" + id + "/history"
				if i%2 == 1 {
					path = "/v1/tokens/" + id + "?at=" + url.QueryEscape(time.Now().UTC().Format(time.RFC3339Nano))
				}
				a := s.call(l, "GET", path, s.admin, nil, nil)
				mu.Lock()
				statuses[a.status]++
				if a.status != http.StatusOK && len(firstBad) < 3 {
					firstBad = append(firstBad, l.name+" "+path+": "+a.String())
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if statuses[http.StatusOK] != workers*reads {
		t.Errorf("%d reads of the stream (history, ?at=) spread over the instances: %v (status: count); first: %s",
			workers*reads, statuses, strings.Join(firstBad, "; "))
	}

	const keys, retries = 8, 6
	for k := range keys {
		key := fmt.Sprintf("suite-key-%d-%d", k, time.Now().UnixNano())
		name := fmt.Sprintf("keyed %d", k)
		reqs := make([]func() answer, retries)
		for i := range reqs {
			reqs[i] = func() answer {
				return s.call(s.ledgers[i%3], "POST", "/v1/tokens", s.admin, httpapi.CreateRequest{Scope: "organization", Name: name},
					http.Header{"Idempotency-Key": {key}})
			}
		}
		got := s.race(reqs...)
		ids := map[string]bool{}
		secrets, oks, failed := 0, 0, 0
		var codes []string
		for _, a := range got {
			codes = append(codes, strconv.Itoa(a.status))
			switch {
			case a.ok2xx():
				oks++
				tok, err := a.token()
				if err != nil {
					t.Fatal(err)
				}
				ids[tok.ID] = true
				if tok.Secret != "" {
					secrets++
				}
			case a.err != nil || a.status >= 500:
				failed++
				if failed == 1 {
					codes[len(codes)-1] = a.String()
				}
			}
		}
		if failed > 0 || oks == 0 || len(ids) != 1 || secrets != 1 {
			t.Errorf("key %d: %d concurrent requests with one Idempotency-Key, spread over the instances, got [%s]: %d failed, %d succeeded naming %d tokens, %d with a secret; want one token, its secret shown once, and no 5xx",
				k, retries, strings.Join(codes, ", "), failed, oks, len(ids), secrets)
		}
		head := s.head(t)
		s.viewAt(t, head)
		n := 0
		for _, l := range s.view.List(multiOrg) {
			if l.Token.Name() == name {
				n++
			}
		}
		if n != 1 {
			t.Errorf("key %d: the stream has %d tokens named %q, want 1", k, n, name)
		}
	}
}

// oneAuditKey: an export made through any instance verifies with the one
// public key an auditor pinned, read from A.
func (s *multiSuite) oneAuditKey(t *testing.T) {
	dir := t.TempDir()
	on := func(l *ledgerProc) cli {
		return cli{t: t, env: map[string]string{"LEDGER_URL": l.base(), "LEDGER_API_TOKEN": s.admin.secret}}
	}
	pinned := strings.TrimSpace(on(s.ledgers[0]).ok("audit", "pubkey"))
	offline := cli{t: t, env: map[string]string{"LEDGER_URL": "http://127.0.0.1:1"}}
	for _, l := range s.ledgers {
		if got := strings.TrimSpace(on(l).ok("audit", "pubkey")); got != pinned {
			t.Errorf("ledger %s's audit public key is %s, A's %s", l.name, got, pinned)
		}
		out := filepath.Join(dir, l.name+".jsonl")
		if code, stdout, stderr := on(l).run("", "audit", "export", "--format", "jsonl", "--out", out); code != 0 {
			t.Fatalf("export on %s: exit %d: %s %s", l.name, code, stdout, stderr)
		}
		if code, stdout, stderr := offline.run("", "audit", "verify", out, "--pubkey", pinned); code != 0 {
			t.Errorf("the export made on %s does not verify with the key pinned from A: exit %d: %s %s", l.name, code, strings.TrimSpace(stdout), strings.TrimSpace(stderr))
		}
	}
}

// lastUseAgrees: a token used once, on A, at the start of the suite shows
// a last use on every instance within a minute of it (last use is fresh to
// within a minute), and the instances agree on it to within that minute.
func (s *multiSuite) lastUseAgrees(t *testing.T) {
	deadline := s.lastUseAt.Add(70 * time.Second)
	seen := map[string]*time.Time{}
	head := s.head(t)
	for {
		for _, l := range s.ledgers {
			if seen[l.name] != nil {
				continue
			}
			a := s.call(l, "GET", "/v1/tokens/"+s.lastUseID+"?min_sequence="+strconv.FormatUint(head, 10), s.admin, nil, nil)
			tok, err := a.token()
			if err != nil || a.status != http.StatusOK {
				t.Fatalf("ledger %s: %s", l.name, a)
			}
			seen[l.name] = tok.LastUsedAt
		}
		done := true
		for _, l := range s.ledgers {
			done = done && seen[l.name] != nil
		}
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	var got []string
	var lo, hi time.Time
	for _, l := range s.ledgers {
		at := seen[l.name]
		if at == nil {
			got = append(got, l.name+": null")
			continue
		}
		got = append(got, l.name+": "+at.Format(time.RFC3339Nano))
		if lo.IsZero() || at.Before(lo) {
			lo = *at
		}
		if at.After(hi) {
			hi = *at
		}
		if at.Before(s.lastUseAt.Add(-time.Minute)) || at.After(time.Now()) {
			t.Errorf("ledger %s: last_used_at %s, the token was used at %s", l.name, at, s.lastUseAt)
		}
	}
	if slices.ContainsFunc(got, func(g string) bool { return strings.HasSuffix(g, "null") }) || hi.Sub(lo) > time.Minute {
		t.Errorf("a token used once on A, read on every instance %s after: last_used_at %s; want it on all, agreeing to within a minute",
			time.Since(s.lastUseAt).Round(time.Second), strings.Join(got, ", "))
	}
}
