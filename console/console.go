// Package console is the ledger's web console: the "Access Management > API
// Tokens" pages an admin knows from the product the ledger follows, served
// by `ledger serve` under /console on the API's own address. It is an
// adapter, like httpapi: its handlers call app.Ledger in-process, so the
// same domain.Authorize judges every action, and it authenticates and
// reports errors through the API server (Gate), so a secret typed into the
// sign-in form meets the API's failed-authentication limit and a refusal
// reads as it does over the API.
//
// Pages are html/template files and one small stylesheet and script,
// embedded in the binary: no front-end framework and no build step. A
// person signs in by pasting a token; the browser then holds only a random
// session id in an HttpOnly, SameSite=Strict cookie, and the server only the
// token's id and its secret's hash (sessions.go), in its memory or, with
// WithSharedSessions, in a bucket every instance of the ledger shares
// (sessions_kv.go). A secret is shown once, in
// the answer to the form that created or rotated it, never in a URL.
package console

import (
	"embed"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Path is where the console is served.
const Path = "/console/"

// ContentSecurityPolicy is sent with every console answer: scripts, styles
// and images from the console's own files only (none inline), forms posted
// only to it, and never framed.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Gate is how the console authenticates and reports like the API does
// (*httpapi.Server implements it).
type Gate interface {
	// SignIn authenticates a secret a person typed in, under the API's
	// failed-authentication limit (*httpapi.RateLimitedError when over it,
	// app.ErrUnauthenticated for every other failure).
	SignIn(r *http.Request, secret string) (*domain.Token, error)
	// CallerOf is tok acting through r, as the API records callers.
	CallerOf(r *http.Request, tok *domain.Token) app.Caller
	// Failure is err as the API answers it, redacted, logged and counted.
	Failure(r *http.Request, c app.Caller, op domain.Operation, err error) httpapi.Problem
	// OverTLS reports whether the browser reached r over TLS (directly or
	// through a trusted proxy), so cookies are marked Secure.
	OverTLS(r *http.Request) bool
}

// Server is the API server the console is mounted on.
type Server interface {
	Gate
	Mount(pattern string, h http.Handler)
}

// Console serves the web console.
type Console struct {
	ledger   *app.Ledger
	gate     Gate
	log      *slog.Logger
	sessions sessionStore
	pages    map[string]*template.Template
	mux      *http.ServeMux
	origin   *http.CrossOriginProtection
}

// Option changes a Console's defaults.
type Option func(*config)

type config struct {
	idle, absolute time.Duration
	now            func() time.Time
	sessionsKV     jetstream.KeyValue // see WithSharedSessions
}

// WithSessionLimits ends a session idle minutes after its last request, and
// absolute after it was opened, whatever its use (by default 1 hour and 12
// hours).
func WithSessionLimits(idle, absolute time.Duration) Option {
	return func(c *config) { c.idle, c.absolute = idle, absolute }
}

// WithSessionClock makes sessions read time from now (tests step it).
func WithSessionClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// Default session limits: an admin page left open over lunch asks again;
// nobody stays signed in from one working day to the next.
const (
	DefaultIdle     = time.Hour
	DefaultAbsolute = 12 * time.Hour
)

// New returns a console for ledger that authenticates and reports through
// gate.
func New(ledger *app.Ledger, gate Gate, log *slog.Logger, opts ...Option) *Console {
	cfg := config{idle: DefaultIdle, absolute: DefaultAbsolute, now: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	var store sessionStore = newMemSessions(cfg.idle, cfg.absolute, cfg.now)
	if cfg.sessionsKV != nil {
		store = newKVSessions(cfg.sessionsKV, cfg.idle, cfg.absolute, cfg.now)
	}
	c := &Console{
		ledger:   ledger,
		gate:     gate,
		log:      log,
		sessions: store,
		pages:    parsePages(),
		mux:      http.NewServeMux(),
		origin:   http.NewCrossOriginProtection(),
	}
	c.routes()
	return c
}

// Attach serves a console for ledger on api at /console/ and redirects the
// site's root there, so the address `ledger serve` prints opens it.
func Attach(api Server, ledger *app.Ledger, log *slog.Logger, opts ...Option) *Console {
	c := New(ledger, api, log, opts...)
	api.Mount(Path, c)
	api.Mount("GET /{$}", http.RedirectHandler(Path, http.StatusSeeOther))
	return c
}

func (c *Console) routes() {
	static, _ := fs.Sub(staticFS, "static")
	c.mux.Handle("GET /console/static/", http.StripPrefix("/console/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /console/sign-in", c.signInPage)
	c.mux.HandleFunc("POST /console/sign-in", c.signIn)
	c.mux.HandleFunc("POST /console/sign-out", c.authed(c.signOut))
	c.mux.HandleFunc("GET /console/{$}", c.authed(c.tokens))
	c.mux.HandleFunc("GET /console/tokens/new", c.authed(c.newToken))
	c.mux.HandleFunc("POST /console/tokens", c.authed(c.createToken))
	c.mux.HandleFunc("GET /console/tokens/{id}", c.authed(c.details))
	c.mux.HandleFunc("GET /console/tokens/{id}/edit", c.authed(c.editPage))
	c.mux.HandleFunc("POST /console/tokens/{id}/edit", c.authed(c.edit))
	c.mux.HandleFunc("GET /console/tokens/{id}/rotate", c.authed(c.rotatePage))
	c.mux.HandleFunc("POST /console/tokens/{id}/rotate", c.authed(c.rotate))
	c.mux.HandleFunc("GET /console/tokens/{id}/delete", c.authed(c.deletePage))
	c.mux.HandleFunc("POST /console/tokens/{id}/delete", c.authed(c.delete))
	c.mux.HandleFunc("POST /console/tokens/{id}/workspaces", c.authed(c.assign))
	c.mux.HandleFunc("POST /console/tokens/{id}/workspaces/{workspace}/remove", c.authed(c.unassign))
	c.mux.HandleFunc("GET /console/assign", c.authed(c.assignPage))
	c.mux.HandleFunc("POST /console/assign", c.authed(c.assignFromPage))
	c.mux.HandleFunc("GET /console/audit", c.authed(c.auditPage))
	c.mux.HandleFunc("POST /console/audit", c.authed(c.auditDownload))
	c.mux.HandleFunc("/console/", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, nil, http.StatusNotFound, "error.html", view{Title: "Not found",
			Data: errorPage{Heading: "Not found", Message: "There is no console page at this address."}})
	})
}

// ServeHTTP sets the headers every console answer carries, then routes.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	// The one-time secret is in a page's body: no page may be kept by the
	// browser or a proxy, nor come back with the Back button.
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	c.mux.ServeHTTP(w, r)
}
