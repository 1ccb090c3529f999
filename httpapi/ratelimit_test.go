package httpapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/httpapi"
)

// lockedBuffer is a log sink the test may read while the server writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// limited is a second API server on the harness's ledger, with its own
// options, log and a clock the test steps by hand.
type limited struct {
	t     testing.TB
	url   string
	logs  *lockedBuffer
	clock atomic.Int64 // unix nanoseconds
}

func (h *harness) limitedServer(opts ...httpapi.ServerOption) *limited {
	h.t.Helper()
	l := &limited{t: h.t, logs: &lockedBuffer{}}
	l.clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	opts = append([]httpapi.ServerOption{httpapi.WithServerClock(func() time.Time { return time.Unix(0, l.clock.Load()) })}, opts...)
	srv := httptest.NewServer(httpapi.NewServer(h.ledger, slog.New(slog.NewTextHandler(l.logs, nil)), nil, opts...))
	h.t.Cleanup(srv.Close)
	l.url = srv.URL
	return l
}

func (l *limited) advance(d time.Duration) { l.clock.Add(int64(d)) }

// get sends GET path with the secret as bearer ("" for none) and, if from is
// not empty, X-Forwarded-For: from.
func (l *limited) get(path, secret, from string) (int, http.Header, []byte) {
	l.t.Helper()
	return l.do("GET", path, secret, from, nil)
}

func (l *limited) do(method, path, secret, from string, body io.Reader) (int, http.Header, []byte) {
	l.t.Helper()
	req, err := http.NewRequest(method, l.url+path, body)
	if err != nil {
		l.t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	if from != "" {
		req.Header.Set("X-Forwarded-For", from)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// metric returns one sample's value from /metrics (-1 when absent).
func (l *limited) metric(series string) int64 {
	l.t.Helper()
	_, _, body := l.get("/metrics", "", "")
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				l.t.Fatalf("metric %s: %q", series, line)
			}
			return n
		}
	}
	return -1
}

func loopback(t *testing.T) []netip.Prefix {
	p, err := httpapi.ParseTrustedProxies("127.0.0.1/32, ::1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// badSecret is shaped like a secret but fails its checksum.
const badSecret = "tlo_0000000000000000000000000000000000000000000000000"

func decodeToken(t *testing.T, b []byte) httpapi.Token {
	t.Helper()
	var tok httpapi.Token
	if err := json.Unmarshal(b, &tok); err != nil {
		t.Fatalf("answer is not a token: %v: %s", err, b)
	}
	return tok
}

func TestAFailingSourceGets429AndOthersAreUnaffected(t *testing.T) {
	h := newHarness(t)
	l := h.limitedServer(httpapi.WithFailureLimit(3, 10*time.Second), httpapi.WithTrustedProxies(loopback(t)))
	const attacker, neighbour = "203.0.113.7", "198.51.100.9"

	// The burst: every kind of 401 charges it (no header, another scheme, a
	// bad secret).
	if s, _, _ := l.get("/v1/tokens", "", attacker); s != 401 {
		t.Fatalf("no Authorization: %d, want 401", s)
	}
	if s, _, _ := l.get("/v1/tokens", "tlo_short", attacker); s != 401 {
		t.Fatalf("malformed secret: %d, want 401", s)
	}
	req, _ := http.NewRequest("GET", l.url+"/v1/tokens", nil)
	req.Header.Set("Authorization", "Basic "+h.owner)
	req.Header.Set("X-Forwarded-For", attacker)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("Basic scheme: %d, want 401", resp.StatusCode)
	}

	// Over budget: refused before the token is looked at, a valid one too
	// (a 200 among the 429s would tell a guesser it had won).
	for _, secret := range []string{badSecret, h.owner} {
		status, hdr, body := l.get("/v1/tokens", secret, attacker)
		if status != http.StatusTooManyRequests || hdr.Get("Retry-After") != "10" {
			t.Fatalf("over budget: %d Retry-After %q, want 429 after 10 s: %s", status, hdr.Get("Retry-After"), body)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/problem+json" {
			t.Fatalf("429 Content-Type %q", ct)
		}
		p := decodeProblem(t, body)
		if p.Type != "urn:tokenledger:problem:rate-limited" || len(p.Errors) != 1 || p.Errors[0].Field != "Authorization" ||
			!strings.Contains(p.Errors[0].Rule, "at most 3 failed authentications") || p.RequestID == "" {
			t.Fatalf("429 problem = %+v", p)
		}
	}

	// Another source, and the proxy's own address, are not held back, and a
	// bad secret from the neighbour is its own 401, not a 429.
	if s, _, b := l.get("/v1/tokens", h.owner, neighbour); s != 200 {
		t.Fatalf("valid token from another source: %d %s", s, b)
	}
	if s, _, b := l.get("/v1/tokens", h.owner, ""); s != 200 {
		t.Fatalf("valid token from the proxy itself: %d %s", s, b)
	}
	if s, _, _ := l.get("/v1/tokens", badSecret, neighbour); s != 401 {
		t.Fatalf("first failure from another source: %d, want 401", s)
	}
	// Successes never charge the budget: many of them, and the neighbour
	// still has its two remaining failures.
	for range 50 {
		if s, _, _ := l.get("/v1/tokens", h.owner, neighbour); s != 200 {
			t.Fatalf("successful traffic was limited: %d", s)
		}
	}
	for i := range 2 {
		if s, _, _ := l.get("/v1/tokens", badSecret, neighbour); s != 401 {
			t.Fatalf("neighbour's failure %d: %d, want 401", i+2, s)
		}
	}
	if s, _, _ := l.get("/v1/tokens", h.owner, neighbour); s != 429 {
		t.Fatalf("neighbour after its own 3 failures: %d, want 429", s)
	}

	// The clock, not sleeps: 9 s on, still 1 s to go; at 10 s one attempt
	// has been earned back, and only one.
	l.advance(9 * time.Second)
	if s, hdr, _ := l.get("/v1/tokens", badSecret, attacker); s != 429 || hdr.Get("Retry-After") != "1" {
		t.Fatalf("9 s later: %d Retry-After %q, want 429 after 1 s", s, hdr.Get("Retry-After"))
	}
	l.advance(time.Second)
	if s, _, _ := l.get("/v1/tokens", badSecret, attacker); s != 401 {
		t.Fatalf("after Retry-After: %d, want the secret evaluated (401)", s)
	}
	if s, hdr, _ := l.get("/v1/tokens", h.owner, attacker); s != 429 || hdr.Get("Retry-After") != "10" {
		t.Fatalf("after spending the earned attempt: %d Retry-After %q, want 429 after 10 s", s, hdr.Get("Retry-After"))
	}
	l.advance(10 * time.Second)
	if s, _, b := l.get("/v1/tokens", h.owner, attacker); s != 200 {
		t.Fatalf("valid token once the wait is over: %d %s", s, b)
	}

	// 3 + 3 + 1 failures were answered 401; 2 + 1 + 1 + 1 requests 429.
	if got := l.metric("tokenledger_auth_failures_total"); got != 7 {
		t.Fatalf("tokenledger_auth_failures_total = %d, want 7", got)
	}
	if got := l.metric("tokenledger_auth_rate_limited_total"); got != 5 {
		t.Fatalf("tokenledger_auth_rate_limited_total = %d, want 5", got)
	}
	if got := l.metric(`tokenledger_http_requests_total{code="429"}`); got != 5 {
		t.Fatalf(`tokenledger_http_requests_total{code="429"} = %d, want 5`, got)
	}
	if !strings.Contains(l.logs.String(), "failed-authentication limit reached") || strings.Contains(l.logs.String(), h.owner) {
		t.Fatalf("the lockout is logged once per source, never with a secret:\n%s", l.logs.String())
	}
}

func TestIPv6SourcesShareABudgetPerSlash64(t *testing.T) {
	h := newHarness(t)
	l := h.limitedServer(httpapi.WithFailureLimit(2, time.Minute), httpapi.WithTrustedProxies(loopback(t)))
	l.get("/v1/tokens", badSecret, "2001:db8:1:2::1")
	l.get("/v1/tokens", badSecret, "2001:db8:1:2:aaaa:bbbb:cccc:dddd")
	if s, _, _ := l.get("/v1/tokens", h.owner, "2001:db8:1:2::ffff"); s != 429 {
		t.Fatalf("a third address of the same /64: %d, want 429", s)
	}
	if s, _, _ := l.get("/v1/tokens", h.owner, "2001:db8:1:3::1"); s != 200 {
		t.Fatalf("the next /64: %d, want 200", s)
	}
	// An IPv4 address written as IPv6 is the IPv4 address.
	l.get("/v1/tokens", badSecret, "192.0.2.1")
	l.get("/v1/tokens", badSecret, "::ffff:192.0.2.1")
	if s, _, _ := l.get("/v1/tokens", h.owner, "192.0.2.1"); s != 429 {
		t.Fatalf("IPv4 and its mapped form: %d, want 429 (one budget)", s)
	}
}

func TestForwardedForIsIgnoredUnlessTheProxyIsTrusted(t *testing.T) {
	h := newHarness(t)
	l := h.limitedServer(httpapi.WithFailureLimit(2, time.Minute))
	// A client cannot buy a fresh budget per request by making up headers.
	for i := range 2 {
		l.get("/v1/tokens", badSecret, "192.0.2."+strconv.Itoa(i+1))
	}
	if s, _, _ := l.get("/v1/tokens", badSecret, "192.0.2.99"); s != 429 {
		t.Fatalf("X-Forwarded-For from an untrusted peer changed the source: %d, want 429", s)
	}

	// Through a trusted proxy, the event records the client's address; only
	// the entry the proxy appended is believed, not what the client wrote.
	trusted := h.limitedServer(httpapi.WithTrustedProxies(loopback(t)))
	status, _, body := trusted.do("POST", "/v1/tokens", h.owner, "10.9.9.9, 198.51.100.20", strings.NewReader(`{"scope":"organization","name":"via proxy"}`))
	if status != 201 {
		t.Fatalf("create through the proxy: %d %s", status, body)
	}
	tok := decodeToken(t, body)
	hist, err := h.client(h.owner).TokenHistory(ctxT(t), tok.ID)
	if err != nil || len(hist.Events) != 1 {
		t.Fatalf("history: %+v, %v", hist, err)
	}
	if got := hist.Events[0].SourceIP; got != "198.51.100.20" {
		t.Fatalf("source_ip through a trusted proxy = %q, want 198.51.100.20", got)
	}
	status, _, body = l.do("POST", "/v1/tokens", h.owner, "198.51.100.20", strings.NewReader(`{"scope":"organization","name":"not via proxy"}`))
	if status != 429 {
		// The untrusted server's budget for 127.0.0.1 is spent above.
		t.Fatalf("create through an untrusted peer: %d %s", status, body)
	}
}

func TestTheLimitTracksABoundedNumberOfSources(t *testing.T) {
	h := newHarness(t)
	l := h.limitedServer(httpapi.WithFailureLimit(2, time.Second), httpapi.WithFailureSources(64), httpapi.WithTrustedProxies(loopback(t)))
	for i := range 300 {
		l.get("/v1/tokens", badSecret, "10.0."+strconv.Itoa(i/250)+"."+strconv.Itoa(i%250))
	}
	if n := l.metric("tokenledger_auth_rate_limit_sources"); n < 1 || n > 64 {
		t.Fatalf("tracked sources = %d, want 1..64", n)
	}
	// Once their buckets are full again, sources are forgotten at the next
	// failure.
	l.advance(3 * time.Second)
	l.get("/v1/tokens", badSecret, "10.1.0.1")
	if n := l.metric("tokenledger_auth_rate_limit_sources"); n != 1 {
		t.Fatalf("tracked sources after they went idle = %d, want 1", n)
	}
}

func TestTheLimitCanBeTurnedOff(t *testing.T) {
	h := newHarness(t)
	l := h.limitedServer(httpapi.WithFailureLimit(0, 0))
	for i := range 100 {
		if s, _, _ := l.get("/v1/tokens", badSecret, ""); s != 401 {
			t.Fatalf("failure %d without a limit: %d, want 401", i+1, s)
		}
	}
}
