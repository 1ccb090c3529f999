package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

//go:embed openapi.yaml
var openAPI []byte

// OpenAPI returns the API's OpenAPI 3 document.
func OpenAPI() []byte { return openAPI }

// Server answers the HTTP API.
type Server struct {
	ledger *app.Ledger
	log    *slog.Logger
	mux    *http.ServeMux
	// health reports the state of what the ledger depends on (health.go);
	// liveness, if set, is what /healthz reports instead (WithLiveness).
	health   func(context.Context) []Component
	liveness func(context.Context) []Component

	now     func() time.Time // the rate limiter's clock
	limiter *failureLimiter  // nil: failed authentications are not limited
	// failureKV, when set, holds the budget all instances share; shared
	// keeps limiter and it in step (sharedlimit.go).
	failureKV jetstream.KeyValue
	shared    *sharedFailures
	trusted   []netip.Prefix // proxies whose X-Forwarded-For is believed
	metrics   metrics

	failureBurst    int
	failureInterval time.Duration
	failureSources  int
	bodyWait        time.Duration // see WithBodyReadTimeout
}

// DefaultBodyReadTimeout is how long a request's body may take to arrive
// after its headers.
const DefaultBodyReadTimeout = 10 * time.Second

// WithBodyReadTimeout bounds how long a request's body may take to arrive
// once the request has begun to be served (DefaultBodyReadTimeout): a body
// that has not arrived by then is answered 408 and nothing is done. The
// ledger judges a command by its token as it is once the body is in, so
// this bounds how long a held-open request ties up a connection, not what
// it may do.
func WithBodyReadTimeout(d time.Duration) ServerOption { return func(s *Server) { s.bodyWait = d } }

// ServerOption changes a Server's defaults.
type ServerOption func(*Server)

// WithFailureLimit sets the failed-authentication budget of each source
// address: burst failures back to back, then one more every interval. A burst
// or interval of 0 turns the limit off.
func WithFailureLimit(burst int, interval time.Duration) ServerOption {
	return func(s *Server) { s.failureBurst, s.failureInterval = burst, interval }
}

// WithFailureSources bounds how many source addresses the limit tracks at
// once (65,536 by default).
func WithFailureSources(n int) ServerOption { return func(s *Server) { s.failureSources = n } }

// WithTrustedProxies makes the server believe X-Forwarded-For from peers in
// these networks (and only from them) for the source address: the rate
// limit's key and the source_ip of events.
func WithTrustedProxies(p []netip.Prefix) ServerOption { return func(s *Server) { s.trusted = p } }

// WithLiveness makes /healthz report live instead of the health NewServer
// was given. A liveness probe has a deadline of its own (Kubernetes gives it
// one second by default) and must meet it whatever NATS does: live must
// answer at once, from what it already knows, where health may ask NATS and
// wait for its answer.
func WithLiveness(live func(context.Context) []Component) ServerOption {
	return func(s *Server) { s.liveness = live }
}

// WithServerClock makes the rate limit read time from now (tests step it).
func WithServerClock(now func() time.Time) ServerOption { return func(s *Server) { s.now = now } }

// NewServer routes the API to ledger. health, which /healthz and /readyz
// report, may be nil: everything is then reported ok.
func NewServer(ledger *app.Ledger, log *slog.Logger, health func(context.Context) []Component, opts ...ServerOption) *Server {
	s := &Server{ledger: ledger, log: log, mux: http.NewServeMux(), health: health, now: time.Now,
		failureBurst: DefaultFailureBurst, failureInterval: DefaultFailureInterval, failureSources: DefaultFailureSources,
		bodyWait: DefaultBodyReadTimeout}
	for _, o := range opts {
		o(s)
	}
	s.limiter = newFailureLimiter(s.failureBurst, s.failureInterval, s.failureSources)
	if s.failureKV != nil && s.limiter != nil {
		s.shared = startSharedFailures(s.failureKV, s.limiter, s.now, log)
	}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /openapi.yaml", s.openapi)
	s.mux.HandleFunc("GET /metrics", s.serveMetrics)
	s.mux.Handle("POST /v1/tokens", s.authed(opCreate, s.createToken))
	s.mux.Handle("GET /v1/tokens", s.authed(opList, s.listTokens))
	s.mux.Handle("GET /v1/tokens/{id}", s.authed(opRead, s.getToken))
	s.mux.Handle("GET /v1/tokens/{id}/history", s.authed(opRead, s.tokenHistory))
	s.mux.Handle("GET /v1/roles", s.authed(opRoles, s.roles))
	s.mux.Handle("PATCH /v1/tokens/{id}", s.authed(opUpdate, s.updateToken))
	s.mux.Handle("DELETE /v1/tokens/{id}", s.authed(opDelete, s.deleteToken))
	s.mux.Handle("POST /v1/tokens/{id}/rotate", s.authed(opRotate, s.rotateToken))
	s.mux.Handle("PUT /v1/tokens/{id}/workspaces/{workspace_id}", s.authed(opAssign, s.assignToken))
	s.mux.Handle("DELETE /v1/tokens/{id}/workspaces/{workspace_id}", s.authed(opUnassign, s.unassignToken))
	s.mux.Handle("POST /v1/verify", s.authed(opVerify, s.verify))
	s.mux.Handle("GET /v1/audit/export", s.authed(opExport, s.auditExport))
	s.mux.HandleFunc("GET /v1/audit/public-key", s.auditPublicKey)
	// A known path with another method gets 405 and the methods it takes.
	for path, allow := range map[string]string{
		"/healthz":                "GET",
		"/readyz":                 "GET",
		"/openapi.yaml":           "GET",
		"/metrics":                "GET",
		"/v1/tokens":              "GET, POST",
		"/v1/tokens/{id}":         "GET, PATCH, DELETE",
		"/v1/tokens/{id}/rotate":  "POST",
		"/v1/tokens/{id}/history": "GET",
		"/v1/roles":               "GET",
		"/v1/tokens/{id}/workspaces/{workspace_id}": "PUT, DELETE",
		"/v1/verify":           "POST",
		"/v1/audit/export":     "GET",
		"/v1/audit/public-key": "GET",
	} {
		s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeProblem(w, r, &Problem{Type: problemBase + "method", Title: "Method not allowed", Status: http.StatusMethodNotAllowed,
				Detail: "method: " + clipPath(r.Method) + " is not allowed here; allowed: " + allow, Errors: []domain.FieldError{{Field: "method", Rule: "allowed: " + allow}}})
		})
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, &Problem{Type: problemBase + "no-route", Title: "Not found", Status: http.StatusNotFound,
			Detail: "path: no API route " + clipPath(r.Method) + " " + clipPath(r.URL.Path), Errors: []domain.FieldError{{Field: "path", Rule: "no such API route"}}})
	})
	return s
}

// ServeHTTP gives every request an id, a body limit, a log line and a recovery
// that never echoes the request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := r.Header.Get("X-Request-Id")
	if !validRequestID(id) {
		id = newRequestID()
	}
	ctx := context.WithValue(r.Context(), requestIDKey{}, id)
	r = r.WithContext(context.WithValue(ctx, sourceIPKey{}, clientAddr(r, s.trusted)))
	w.Header().Set("X-Request-Id", id)
	if r.Body != nil && r.Body != http.NoBody && s.bodyWait > 0 {
		// Only a request with a body: without one, net/http is already
		// reading the connection in the background, and a deadline there
		// would cancel the request's context. Once the body has been read
		// to its end, net/http clears the deadline itself (as it starts
		// that background read), so a command may take longer than this.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.bodyWait))
		r = r.WithContext(context.WithValue(r.Context(), bodyWaitKey{}, s.bodyWait))
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	defer func() {
		if p := recover(); p != nil {
			// The panic value may hold request data: log its type only.
			s.log.Error("panic serving request", "request_id", id, "panic_type", fmt.Sprintf("%T", p))
			writeProblem(rec, r, &Problem{Type: problemBase + "internal", Title: "Internal error", Status: http.StatusInternalServerError, Detail: "internal error; quote the request id when reporting it"})
		}
		s.log.Info("http request", "request_id", id, "method", clipPath(r.Method), "path", clipPath(r.URL.Path),
			"status", rec.status, "duration_ms", float64(time.Since(start).Microseconds())/1000)
		s.metrics.request(rec.status)
	}()
	if p := r.URL.EscapedPath(); p != cleanPath(p) {
		// ServeMux would redirect it, method and body kept, to another
		// path than the one the caller (or a proxy judging it) saw.
		writeProblem(rec, r, &Problem{Type: problemBase + "validation", Title: "Invalid input", Status: http.StatusBadRequest,
			Detail: "path: must not contain empty, '.' or '..' segments", Errors: []domain.FieldError{{Field: "path", Rule: "must not contain empty, '.' or '..' segments"}}})
		return
	}
	s.mux.ServeHTTP(rec, r)
}

// cleanPath is p as ServeMux cleans it: path.Clean, keeping a trailing slash.
func cleanPath(p string) string {
	c := path.Clean("/" + p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

// Unwrap lets http.ResponseController reach the connection (to flush, or to
// lift the write deadline for an export).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

type (
	requestIDKey struct{}
	sourceIPKey  struct{}
	bodyWaitKey  struct{}
)

// ReadBodyError is err, from reading r's body, as the API answers it: a body
// that did not arrive within the server's body read timeout
// (WithBodyReadTimeout) is a *Problem of status 408 naming the body and the
// time allowed; a body too large stays an *http.MaxBytesError (413); any
// other failure is a 400 naming the body. Front ends served beside the API
// (the web console) judge their form bodies with it too.
func ReadBodyError(r *http.Request, err error) error {
	var maxb *http.MaxBytesError
	switch {
	case errors.As(err, &maxb):
		return err
	case errors.Is(err, os.ErrDeadlineExceeded):
		wait, _ := r.Context().Value(bodyWaitKey{}).(time.Duration)
		rule := fmt.Sprintf("must arrive within %s of the request's headers", wait)
		return &Problem{Type: problemBase + "body-timeout", Title: "Request body too slow", Status: http.StatusRequestTimeout,
			Detail: "body: did not arrive within " + wait.String() + "; nothing was done", Errors: []domain.FieldError{{Field: "body", Rule: rule}}}
	}
	return badBody("could not be read")
}

func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 || secretLike.MatchString(id) {
		return false
	}
	for _, c := range id {
		if !(c == '-' || c == '_' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// clipPath makes a request path safe to log or echo: bounded, valid UTF-8, and
// with anything shaped like a secret (a caller may paste one into a URL by
// mistake) redacted.
func clipPath(p string) string {
	p = secretLike.ReplaceAllString(strings.ToValidUTF8(p, "?"), "[REDACTED]")
	if len(p) > 200 {
		p = strings.ToValidUTF8(p[:200], "") + "..."
	}
	return p
}

var secretLike = regexp.MustCompile(`tl[owd]_[0-9A-Za-z]{20,}`)

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(openAPI)
}

type authedHandler func(w http.ResponseWriter, r *http.Request, c app.Caller) error

// authed resolves the bearer token before the handler runs; every failure gets
// the same 401 and charges the source's failure budget. A source whose budget
// is used up is refused before its token is looked at, even a valid one:
// otherwise a 200 among the 429s would still tell a guesser it had won.
func (s *Server) authed(op operation, h authedHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src := sourceKey(sourceIP(r))
		if wait := s.limiter.blocked(src, s.now()); wait > 0 {
			s.metrics.rateLimited.Add(1)
			s.writeRateLimited(w, r, wait)
			return
		}
		scheme, secret, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		// A second Authorization header is refused, not ignored: a proxy in
		// front may have judged the other one.
		if !ok || !strings.EqualFold(scheme, "Bearer") || len(r.Header.Values("Authorization")) > 1 {
			s.refuse(w, r, src)
			return
		}
		tok, err := s.ledger.Authenticate(strings.TrimSpace(secret), app.Source{RequestID: requestID(r.Context()), SourceIP: sourceIP(r), UserAgent: clipHeader(r.UserAgent())})
		if errors.Is(err, app.ErrStale) {
			// This instance cannot vouch for its answer: neither a 401 nor
			// a 200 (see app.WithMaxStaleness). Another instance may.
			w.Header().Set("Retry-After", "1")
			writeProblem(w, r, problemFor(err))
			return
		}
		if err != nil {
			s.refuse(w, r, src)
			return
		}
		c := app.Caller{Token: tok, RequestID: requestID(r.Context()), SourceIP: sourceIP(r), UserAgent: clipHeader(r.UserAgent())}
		if err := h(w, r, c); err != nil {
			p := problemFor(err)
			if p == unauthenticated {
				s.refuse(w, r, src)
				return
			}
			s.noteFailure(r, c, op, err, p)
			if p.Status == http.StatusServiceUnavailable {
				// NATS reconnects every 2 s.
				w.Header().Set("Retry-After", "2")
			}
			writeProblem(w, r, p)
		}
	})
}

// noteFailure logs and counts a request that failed with err, answered p,
// for the API and the web console alike (see Failure).
func (s *Server) noteFailure(r *http.Request, c app.Caller, op operation, err error, p *Problem) {
	var ferr *app.ForbiddenError
	switch {
	case p.Status >= 500:
		s.log.Error("request failed", "request_id", c.RequestID, "error", err)
	case errors.As(err, &ferr):
		// Every refusal is an audit fact: which token tried what,
		// and which rule stopped it. The rule is the ledger's text,
		// but it may quote request values, so it is redacted too.
		s.metrics.forbidden[op].Add(1)
		s.log.Warn("forbidden", "request_id", c.RequestID, "actor_token_id", c.Token.ID(), "operation", op.String(),
			"method", clipPath(r.Method), "path", clipPath(r.URL.Path), "field", clipHeader(ferr.Field), "rule", clipHeader(ferr.Rule))
	}
}

// refuse answers 401 and charges the source, alike whatever was wrong: a
// budget that drained faster for some kinds of bad secret than for others
// would tell a guesser which kind it had sent.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, src netip.Addr) {
	s.chargeFailure(r, src)
	writeProblem(w, r, unauthenticated)
}

// chargeFailure counts a failed authentication and charges it to src's
// budget, whichever front end it came through.
func (s *Server) chargeFailure(r *http.Request, src netip.Addr) {
	s.metrics.authFailures.Add(1)
	now := s.now()
	if s.limiter.fail(src, now) {
		// Once per source and lockout, not per refused request.
		s.log.Warn("failed-authentication limit reached", "request_id", requestID(r.Context()), "source_ip", sourceIP(r),
			"retry_after_s", retryAfterSeconds(s.failureInterval))
	}
	if s.shared != nil {
		// After the local charge, not before: the shared write can come
		// back through the bucket (merge) before a local charge made
		// after it, which would then count the failure twice.
		s.shared.charge(src, now)
		// The refusal is answered once the failure is in the shared budget
		// (for at most sharedChargeWait): a guesser that waits for its
		// answers before the next try, on any ledger, finds every earlier
		// try counted there. Only refusals wait; successes never do.
		s.shared.written(r.Context(), sharedChargeWait)
	}
}

// sharedChargeWait bounds how long a refusal waits for its failure to be
// written to the shared budget.
const sharedChargeWait = time.Second

// writeRateLimited answers 429. The wait is rounded up to whole seconds, as
// Retry-After takes them, so a client that honours it is never refused again
// for being early.
func (s *Server) writeRateLimited(w http.ResponseWriter, r *http.Request, wait time.Duration) {
	secs := retryAfterSeconds(wait)
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	rule := fmt.Sprintf("at most %d failed authentications in a row from one source address, then one every %s", s.failureBurst, s.failureInterval)
	writeProblem(w, r, &Problem{Type: problemBase + "rate-limited", Title: "Too many failed authentications", Status: http.StatusTooManyRequests,
		Detail: fmt.Sprintf("Authorization: too many failed authentications from this address; retry after %d s", secs),
		Errors: []domain.FieldError{{Field: "Authorization", Rule: rule}}})
}

func retryAfterSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// sourceIP is the address the request came from, as ServeHTTP resolved it
// (see clientAddr).
func sourceIP(r *http.Request) string {
	if ip, ok := r.Context().Value(sourceIPKey{}).(string); ok {
		return ip
	}
	return peerIP(r)
}

func peerIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// clipHeader makes a header value safe to store in an event: valid UTF-8,
// anything shaped like a secret redacted, at most 256 characters.
func clipHeader(v string) string {
	v = secretLike.ReplaceAllString(strings.ToValidUTF8(v, "?"), "[REDACTED]")
	if utf8.RuneCountInString(v) > 256 {
		v = string([]rune(v)[:256])
	}
	return v
}

// decode reads a JSON body into v: one object, no unknown fields, no trailing
// data. Its errors name the field and the rule.
func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); (ct != "" && !isJSON(ct)) || len(r.Header.Values("Content-Type")) > 1 {
		return &Problem{Type: problemBase + "media-type", Title: "Unsupported media type", Status: http.StatusUnsupportedMediaType,
			Detail: "Content-Type: must be application/json", Errors: []domain.FieldError{{Field: "Content-Type", Rule: "must be application/json"}}}
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return ReadBodyError(r, err)
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return badBody("required: a JSON object")
	}
	if !utf8.Valid(body) {
		return badBody("must be valid UTF-8")
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var (
			syn *json.SyntaxError
			typ *json.UnmarshalTypeError
		)
		switch {
		case errors.As(err, &syn):
			return badBody(fmt.Sprintf("malformed JSON at byte %d", syn.Offset))
		case errors.As(err, &typ):
			field := typ.Field
			if field == "" {
				return badBody("must be a JSON object")
			}
			return domain.Invalid(field, "must be a JSON "+jsonKind(typ.Type.Kind().String()))
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			if name == "" {
				return badBody(`unknown field "" (an empty key)`)
			}
			return domain.Invalid(clipField(name), "unknown field")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return badBody("malformed JSON: ends too early")
		}
		return badBody("malformed JSON")
	}
	// Not dec.More(), which is false before a stray ']' or '}'.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badBody("one JSON object only; trailing data found")
	}
	return exactKeys(body)
}

// exactKeys refuses what encoding/json would quietly accept: a key given twice
// (the last would win) and a key that only folds to a field's name ("Name",
// or "ſcope" with U+017F). A proxy or WAF in front of us may read such a body
// differently from the way we do, so we take only the one reading. Every
// field of our bodies is lower-case ASCII.
func exactKeys(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	// One entry per open object or array: the keys seen so far, nil for an
	// array; and whether the next string in an object is a key.
	var seen []map[string]bool
	wantKey := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return badBody("malformed JSON")
		}
		inObject := len(seen) > 0 && seen[len(seen)-1] != nil
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				seen = append(seen, map[string]bool{})
				wantKey = true
				continue
			case '[':
				seen = append(seen, nil)
			default:
				seen = seen[:len(seen)-1]
			}
		case string:
			if inObject && wantKey {
				if !lowerASCII(t) {
					return domain.Invalid(clipField(t), "unknown field (field names are lower case)")
				}
				if seen[len(seen)-1][t] {
					return domain.Invalid(clipField(t), "given twice")
				}
				seen[len(seen)-1][t] = true
				wantKey = false
				continue
			}
		}
		// A value ended: in an object, a key comes next.
		wantKey = len(seen) > 0 && seen[len(seen)-1] != nil
	}
}

func lowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "int", "int64", "uint64":
		return "whole number"
	case "ptr":
		return "value of the documented type"
	}
	return goKind
}

func clipField(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func badBody(rule string) error { return domain.Invalid("body", rule) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// idempotencyKey reads the Idempotency-Key header. The key is stored in the
// event, so one shaped like a secret is refused rather than kept.
func idempotencyKey(r *http.Request) (string, error) {
	key := r.Header.Get("Idempotency-Key")
	if len(r.Header.Values("Idempotency-Key")) > 1 {
		return "", domain.Invalid("idempotency_key", "give it once")
	}
	if secretLike.MatchString(key) {
		return "", domain.Invalid("idempotency_key", "looks like a token secret; use a random value of your own")
	}
	return key, nil
}

// minSequence reads ?min_sequence=N: the read waits until the view has it.
func minSequence(r *http.Request) (uint64, error) {
	v := r.URL.Query().Get("min_sequence")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, domain.Invalid("min_sequence", "must be a whole number")
	}
	return n, nil
}

func (s *Server) commandAnswer(w http.ResponseWriter, res app.Result, created bool) error {
	out := tokenJSON(res.Token, s.ledger.Now())
	out.Sequence = res.Sequence
	out.IdempotentReplay = res.Replayed
	if !res.Secret.IsZero() {
		out.Secret = res.Secret.Reveal()
	}
	status := http.StatusOK
	if created && !res.Replayed {
		status = http.StatusCreated
	}
	w.Header().Set("ETag", etag(out.Version))
	writeJSON(w, status, out)
	return nil
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	var req CreateRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	res, err := s.ledger.CreateToken(r.Context(), c, domain.CreateToken{
		OrganizationID: req.OrganizationID,
		Scope:          req.Scope,
		WorkspaceID:    req.WorkspaceID,
		DeploymentID:   req.DeploymentID,
		Name:           req.Name,
		Description:    req.Description,
		Role:           req.Role,
		ExpirationDays: req.ExpirationDays,
	}, key)
	if err != nil {
		return err
	}
	return s.commandAnswer(w, res, true)
}

// queryValue returns a query parameter, or nil when it is absent. One given
// empty is present, and judged like any other value: a script whose variable
// is unset must not get an unfiltered answer.
func queryValue(r *http.Request, name string) *string {
	q := r.URL.Query()
	if !q.Has(name) {
		return nil
	}
	v := q.Get(name)
	return &v
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	min, err := minSequence(r)
	if err != nil {
		return err
	}
	filter := app.TokenFilter{
		Scope:        queryValue(r, "scope"),
		WorkspaceID:  queryValue(r, "workspace_id"),
		DeploymentID: queryValue(r, "deployment_id"),
		Role:         queryValue(r, "role"),
		Status:       queryValue(r, "status"),
	}
	toks, seq, err := s.ledger.FindTokens(r.Context(), c, filter, min)
	if err != nil {
		return err
	}
	now := s.ledger.Now()
	out := TokenList{Tokens: make([]Token, len(toks)), Sequence: seq}
	for i, t := range toks {
		out.Tokens[i] = tokenJSON(t.Token, now)
		out.Tokens[i].Sequence = t.Sequence
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getToken(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	min, err := minSequence(r)
	if err != nil {
		return err
	}
	if at := queryValue(r, "at"); at != nil {
		return s.getTokenAt(w, r, c, *at)
	}
	tok, seq, err := s.ledger.GetToken(r.Context(), c, r.PathValue("id"), min)
	if err != nil {
		return err
	}
	out := tokenJSON(tok, s.ledger.Now())
	out.Sequence = seq
	w.Header().Set("ETag", etag(out.Version))
	writeJSON(w, http.StatusOK, out)
	return nil
}

// getTokenAt answers GET /v1/tokens/{id}?at=T: the token as it was at T,
// read from the stream (so min_sequence has nothing to wait for), with its
// status judged at T.
func (s *Server) getTokenAt(w http.ResponseWriter, r *http.Request, c app.Caller, raw string) error {
	at, err := time.Parse(time.RFC3339, strings.TrimSpace(raw))
	if err != nil {
		return domain.Invalid("at", "must be a time in RFC 3339 form, such as 2026-01-02T15:04:05Z")
	}
	tok, seq, err := s.ledger.TokenAt(r.Context(), c, r.PathValue("id"), at)
	if err != nil {
		return err
	}
	out := tokenJSON(tok, at)
	out.Sequence = seq
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) tokenHistory(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	id := r.PathValue("id")
	recs, err := s.ledger.TokenHistory(r.Context(), c, id)
	if err != nil {
		return err
	}
	out := History{TokenID: id, Events: make([]HistoryEvent, len(recs))}
	for i, rec := range recs {
		if out.Events[i], err = HistoryEventOf(rec.Sequence, rec.Event); err != nil {
			return err
		}
		out.Sequence = rec.Sequence
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) roles(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	min, err := minSequence(r)
	if err != nil {
		return err
	}
	ws, dep := queryValue(r, "workspace_id"), queryValue(r, "deployment_id")
	hs, seq, err := s.ledger.Holdings(r.Context(), c, ws, dep, min)
	if err != nil {
		return err
	}
	place := "" // a deployment's holders are deployment tokens, which name their workspace
	if ws != nil {
		place = *ws
	}
	out := HoldingList{Holdings: make([]Holding, len(hs)), Sequence: seq}
	for i, h := range hs {
		out.Holdings[i] = holdingJSON(h, place)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) updateToken(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	var req UpdateRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	cond, err := ifMatch(r)
	if err != nil {
		return err
	}
	res, err := s.ledger.UpdateToken(r.Context(), c, r.PathValue("id"), domain.UpdateToken{Name: req.Name, Description: req.Description, Role: req.Role}, key, cond...)
	if err != nil {
		return err
	}
	return s.commandAnswer(w, res, false)
}

func (s *Server) rotateToken(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	cond, err := ifMatch(r)
	if err != nil {
		return err
	}
	res, err := s.ledger.RotateToken(r.Context(), c, r.PathValue("id"), key, cond...)
	if err != nil {
		return err
	}
	return s.commandAnswer(w, res, false)
}

func (s *Server) assignToken(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	var req AssignRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	cond, err := ifMatch(r)
	if err != nil {
		return err
	}
	res, err := s.ledger.AssignToken(r.Context(), c, r.PathValue("id"), r.PathValue("workspace_id"), req.Role, key, cond...)
	if err != nil {
		return err
	}
	return s.commandAnswer(w, res, false)
}

func (s *Server) unassignToken(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	cond, err := ifMatch(r)
	if err != nil {
		return err
	}
	res, err := s.ledger.UnassignToken(r.Context(), c, r.PathValue("id"), r.PathValue("workspace_id"), key, cond...)
	if err != nil {
		return err
	}
	return s.commandAnswer(w, res, false)
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	cond, err := ifMatch(r)
	if err != nil {
		return err
	}
	res, err := s.ledger.DeleteToken(r.Context(), c, r.PathValue("id"), key, cond...)
	if err != nil {
		return err
	}
	return s.commandAnswer(w, res, false)
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	var req VerifyRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if strings.TrimSpace(req.Token) == "" {
		return domain.Invalid("token", "required: the secret to verify")
	}
	min, err := minSequence(r)
	if err != nil {
		return err
	}
	v, err := s.ledger.VerifyAfter(r.Context(), c, strings.TrimSpace(req.Token), min)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, verificationJSON(v))
	return nil
}
