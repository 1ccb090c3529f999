package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
)

// A front end served beside the API on its address (the web console,
// package console) goes through these, so that a secret typed into a form
// meets the same failed-authentication budget as one sent in an
// Authorization header, and a refused command the same log line, counter
// and words as over the API.

// Mount serves h at pattern (a ServeMux pattern) behind what every API
// request goes through: the request id, the source address (trusted
// proxies included), the body limit, the log line, the metrics and the
// recovery. Call it before the server serves.
func (s *Server) Mount(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// RateLimitedError refuses a sign-in from a source that has used up its
// failed-authentication budget; the secret was not looked at.
type RateLimitedError struct{ RetryAfter time.Duration }

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("too many failed authentications from this address; retry after %d s", retryAfterSeconds(e.RetryAfter))
}

// RetryAfterSeconds is the wait in whole seconds, rounded up, as the API's
// Retry-After says it.
func (e *RateLimitedError) RetryAfterSeconds() int64 { return retryAfterSeconds(e.RetryAfter) }

// SignIn authenticates a secret a person typed in as the API authenticates
// a bearer secret: a source over its budget is refused with
// *RateLimitedError before the secret is looked at, even a valid one, and
// every other failure is app.ErrUnauthenticated, alike whatever was wrong,
// and charged to the source's budget.
func (s *Server) SignIn(r *http.Request, secret string) (*domain.Token, error) {
	src := sourceKey(sourceIP(r))
	if wait := s.limiter.blocked(src, s.now()); wait > 0 {
		s.metrics.rateLimited.Add(1)
		return nil, &RateLimitedError{RetryAfter: wait}
	}
	tok, err := s.ledger.Authenticate(strings.TrimSpace(secret), app.Source{RequestID: requestID(r.Context()), SourceIP: sourceIP(r), UserAgent: clipHeader(r.UserAgent())})
	if errors.Is(err, app.ErrStale) {
		return nil, err // not the secret's fault: nothing charged
	}
	if err != nil {
		s.chargeFailure(r, src)
		return nil, app.ErrUnauthenticated
	}
	return tok, nil
}

// CallerOf is tok acting through r, with the request id, source address and
// user agent the API records for its own callers.
func (s *Server) CallerOf(r *http.Request, tok *domain.Token) app.Caller {
	return app.Caller{Token: tok, RequestID: requestID(r.Context()), SourceIP: sourceIP(r), UserAgent: clipHeader(r.UserAgent())}
}

// Failure is err as the API answers it (the one mapping from errors to
// problems), with r's request id and anything shaped like a secret
// redacted; it is logged and counted as the API logs and counts its own
// failures of operation op.
func (s *Server) Failure(r *http.Request, c app.Caller, op domain.Operation, err error) Problem {
	p := problemFor(err)
	s.noteFailure(r, c, operationOf[op], err, p)
	return shown(r, p)
}

// operationOf names a domain operation as the API's metrics do. Listing
// tokens is reading them.
var operationOf = map[domain.Operation]operation{
	domain.OpCreate: opCreate, domain.OpUpdate: opUpdate, domain.OpRotate: opRotate, domain.OpAssign: opAssign,
	domain.OpUnassign: opUnassign, domain.OpDelete: opDelete, domain.OpRead: opRead, domain.OpExport: opExport,
}

// RolesOf lists every role t has, as the API's token object does (its
// "roles").
func RolesOf(t *domain.Token) []RoleGrant { return roleGrants(t) }

// OverTLS reports whether the browser reached r over TLS: directly, or
// through a trusted proxy (--trusted-proxy) that says so in
// X-Forwarded-Proto. `ledger serve` itself speaks plain HTTP, so behind a
// TLS-terminating proxy this is how a front end knows to mark its cookies
// Secure. The header from any other peer is ignored: a client could send it.
func (s *Server) OverTLS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	peer, err := netip.ParseAddr(peerIP(r))
	if err != nil || !trustedAddr(peer.Unmap(), s.trusted) {
		return false
	}
	protos := r.Header.Values("X-Forwarded-Proto")
	if len(protos) == 0 {
		return false
	}
	// The proxy nearest us appends last.
	hops := strings.Split(protos[len(protos)-1], ",")
	return strings.EqualFold(strings.TrimSpace(hops[len(hops)-1]), "https")
}
