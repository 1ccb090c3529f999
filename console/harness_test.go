package console_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/console"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/node"
	"github.com/tokenledger/tokenledger/projections"
	"github.com/tokenledger/tokenledger/shared"
)

// harness is a whole ledger as `ledger serve` runs it (node.Start, on a real
// embedded nats-server), its API and its console served together, with an
// ORGANIZATION_OWNER token for organization "acme".
type harness struct {
	t       testing.TB
	store   *eventstore.Store
	ledger  *app.Ledger
	srv     *httptest.Server
	owner   string // the bootstrap owner's secret
	ownerID string
	logs    *syncBuffer
	clock   *clock
	// sessions is the shared sessions' bucket (nil: in memory).
	sessions jetstream.KeyValue
	ns       *server.Server // the NATS server (newHarness only)
}

type harnessConfig struct {
	tls        bool
	serverOpts []httpapi.ServerOption
	// memory keeps sessions in the console's memory rather than in the
	// shared bucket `ledger serve` gives it.
	memory bool
}

type harnessOption func(*harnessConfig)

func overTLS() harnessOption { return func(c *harnessConfig) { c.tls = true } }

func inMemorySessions() harnessOption { return func(c *harnessConfig) { c.memory = true } }

func withServerOptions(o ...httpapi.ServerOption) harnessOption {
	return func(c *harnessConfig) { c.serverOpts = append(c.serverOpts, o...) }
}

// clock is the sessions' clock: the real time, moved on by advance.
type clock struct{ skew atomic.Int64 }

func (c *clock) now() time.Time { return time.Now().Add(time.Duration(c.skew.Load())) }

func (c *clock) advance(d time.Duration) { c.skew.Add(int64(d)) }

func newHarness(t testing.TB, opts ...harnessOption) *harness {
	t.Helper()
	var hc harnessConfig
	for _, o := range opts {
		o(&hc)
	}
	h := &harness{t: t, logs: &syncBuffer{}, clock: &clock{}}
	// The ledger as `ledger serve` runs it (node.Start), its API and console
	// served by httptest (over TLS when asked).
	cfg := node.DefaultConfig()
	cfg.DataDir, cfg.HTTPAddr, cfg.NATSListen = t.TempDir(), "", "127.0.0.1:0"
	cfg.Org, cfg.Snapshot = "acme", false
	cfg.ServerOptions = hc.serverOpts
	cfg.ConsoleOptions = []console.Option{console.WithSessionClock(h.clock.now)}
	cfg.LocalSessions = hc.memory
	n, err := node.Start(ctxT(t), cfg, slog.New(slog.NewTextHandler(h.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	secret, err := os.ReadFile(n.BootstrapPath())
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	h.owner = strings.TrimSpace(string(secret))
	tok, err := n.Ledger().Authenticate(h.owner, app.Source{})
	if err != nil {
		t.Fatalf("bootstrap token: %v", err)
	}
	h.store, h.ledger, h.ownerID = n.Store(), n.Ledger(), tok.ID()
	h.sessions, h.ns = n.SessionsBucket(), n.NATSServer()
	// Stopped before the node (cleanups run last first).
	if hc.tls {
		h.srv = httptest.NewTLSServer(n.Handler())
	} else {
		h.srv = httptest.NewServer(n.Handler())
	}
	t.Cleanup(h.srv.Close)
	return h
}

// consoleOptions are the console's: the harness's clock, and sessions in
// the stream's shared bucket (opened on js) unless memory.
func (h *harness) consoleOptions(js jetstream.JetStream, memory bool) []console.Option {
	h.t.Helper()
	opts := []console.Option{console.WithSessionClock(h.clock.now)}
	if !memory {
		kv, err := console.SessionBucket(ctxT(h.t), js, shared.ConfigOf(eventstore.DefaultConfig()), console.DefaultIdle, console.DefaultAbsolute)
		if err != nil {
			h.t.Fatal(err)
		}
		opts = append(opts, console.WithSharedSessions(kv))
		h.sessions = kv
	}
	return opts
}

// syncBuffer is a log both the server and the test touch.
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

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// caller is the token of secret acting in-process, for setting a scene.
func (h *harness) caller(secret string) app.Caller {
	h.t.Helper()
	tok, err := h.ledger.Authenticate(secret, app.Source{})
	if err != nil {
		h.t.Fatalf("authenticate: %v", err)
	}
	return app.Caller{Token: tok}
}

// create makes a token as the bootstrap owner and returns it and its
// secret.
func (h *harness) create(cmd domain.CreateToken) (*domain.Token, string) {
	h.t.Helper()
	res, err := h.ledger.CreateToken(ctxT(h.t), h.caller(h.owner), cmd, "")
	if err != nil {
		h.t.Fatalf("create %+v: %v", cmd, err)
	}
	return res.Token, res.Secret.Reveal()
}

func (h *harness) lastSeq() uint64 {
	h.t.Helper()
	seq, err := h.store.LastSequence(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return seq
}

// verifies reports whether secret authenticates now.
func (h *harness) verifies(secret string) bool {
	v, err := h.ledger.Verify(ctxT(h.t), h.caller(h.owner), secret)
	if err != nil {
		h.t.Fatal(err)
	}
	return v.Outcome == projections.OutcomeActive
}

// visit is one answer the browser got.
type visit struct {
	method, url string
	status      int
	header      http.Header
	body        string
}

// browser is an HTTP client that keeps cookies, follows redirects itself
// and records every answer and every address it saw, as a person's browser
// would have seen them.
type browser struct {
	t      testing.TB
	h      *harness
	client *http.Client
	visits []visit
	// last is the latest page; its CSRF value goes with the next form.
	last visit
}

func (h *harness) browser() *browser {
	jar, _ := cookiejar.New(nil)
	client := h.srv.Client()
	client.Jar = jar
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: h.t, h: h, client: client}
}

func (b *browser) do(method, path string, form url.Values, header map[string]string) visit {
	b.t.Helper()
	target := b.h.srv.URL + path
	for hops := 0; ; hops++ {
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequest(method, target, body)
		if err != nil {
			b.t.Fatal(err)
		}
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := b.client.Do(req)
		if err != nil {
			b.t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		v := visit{method: method, url: req.URL.String(), status: resp.StatusCode, header: resp.Header, body: string(raw)}
		b.visits = append(b.visits, v)
		loc := resp.Header.Get("Location")
		if resp.StatusCode < 300 || resp.StatusCode >= 400 || loc == "" || hops == 10 {
			if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
				b.last = v
			}
			return v
		}
		next, err := req.URL.Parse(loc)
		if err != nil {
			b.t.Fatal(err)
		}
		target, method, form, header = next.String(), http.MethodGet, nil, nil
	}
}

func (b *browser) get(path string) visit { return b.do(http.MethodGet, path, nil, nil) }

// req is a request for the page's address, to set cookies for it.
func (v visit) req() *url.URL {
	u, _ := url.Parse(v.url)
	return u
}

// sessionCookie is the browser's session cookie now.
func (b *browser) sessionCookie() *http.Cookie {
	b.t.Helper()
	u, _ := url.Parse(b.h.srv.URL + "/console/")
	for _, c := range b.client.Jar.Cookies(u) {
		if c.Name == "tl_session" {
			return &http.Cookie{Name: c.Name, Value: c.Value, Path: "/console"}
		}
	}
	b.t.Fatal("the browser holds no session cookie")
	return nil
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the CSRF value of the latest page's forms.
func (b *browser) csrf() string {
	m := csrfField.FindStringSubmatch(b.last.body)
	if m == nil {
		b.t.Fatalf("the page at %s has no form with a CSRF value:\n%s", b.last.url, b.last.body)
	}
	return m[1]
}

// submit posts a form of the latest page, with its CSRF value.
func (b *browser) submit(path string, form url.Values) visit {
	b.t.Helper()
	form.Set("csrf", b.csrf())
	return b.do(http.MethodPost, path, form, nil)
}

// signIn signs in with secret from the sign-in page, and fails the test
// unless it lands on the token table.
func (b *browser) signIn(secret string) {
	b.t.Helper()
	b.get("/console/sign-in")
	v := b.submit("/console/sign-in", url.Values{"token": {secret}})
	if v.status != http.StatusOK || !strings.Contains(v.body, `id="tokens"`) {
		b.t.Fatalf("sign-in did not land on the token table: %d %s\n%s", v.status, v.url, v.body)
	}
}

var hiddenKey = regexp.MustCompile(`name="idempotency_key" value="([^"]+)"`)

// key is the idempotency key of the latest page's form.
func (b *browser) key() string {
	m := hiddenKey.FindStringSubmatch(b.last.body)
	if m == nil {
		b.t.Fatalf("the page at %s has no idempotency key", b.last.url)
	}
	return m[1]
}

var secretShown = regexp.MustCompile(`<code id="secret" class="secret">([^<]+)</code>`)

// secretOn is the secret a confirmation page shows.
func secretOn(t testing.TB, v visit) string {
	t.Helper()
	m := secretShown.FindStringSubmatch(v.body)
	if m == nil {
		t.Fatalf("no secret on the page at %s (%d):\n%s", v.url, v.status, v.body)
	}
	return m[1]
}

var tokenRowID = regexp.MustCompile(`data-token-id="(tok_[a-z2-7]+)" data-name="([^"]*)"`)

// tokenIDNamed is the id of the token row named name on the latest table.
func (b *browser) tokenIDNamed(name string) string {
	b.t.Helper()
	for _, m := range tokenRowID.FindAllStringSubmatch(b.last.body, -1) {
		if m[2] == name {
			return m[1]
		}
	}
	b.t.Fatalf("no token named %q on the page at %s", name, b.last.url)
	return ""
}

var fieldErrorText = regexp.MustCompile(`<p class="field-error" role="alert">([^<]*)</p>`)

// errorsBeside returns the error messages shown in the form field holding
// the input with id, up to the field's end.
func errorsBeside(t testing.TB, body, id string) []string {
	t.Helper()
	i := strings.Index(body, `id="`+id+`"`)
	if i < 0 {
		t.Fatalf("no input %q on the page", id)
	}
	rest := body[i:]
	end := strings.Index(rest, "</div>")
	if fs := strings.Index(rest, "</fieldset>"); fs >= 0 && (end < 0 || fs < end) {
		end = fs
	}
	if end < 0 {
		end = len(rest)
	}
	var out []string
	for _, m := range fieldErrorText.FindAllStringSubmatch(rest[:end], -1) {
		out = append(out, m[1])
	}
	return out
}
