package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
)

// Problem is an error answer, RFC 9457 application/problem+json. Errors lists
// each field and the rule it broke.
type Problem struct {
	Type      string              `json:"type"`
	Title     string              `json:"title"`
	Status    int                 `json:"status"`
	Detail    string              `json:"detail"`
	Errors    []domain.FieldError `json:"errors,omitempty"`
	RequestID string              `json:"request_id,omitempty"`
}

func (p *Problem) Error() string {
	if p.Detail != "" {
		return p.Detail
	}
	return fmt.Sprintf("%d %s", p.Status, p.Title)
}

const problemBase = "urn:tokenledger:problem:"

// unauthenticated is the same answer, byte for byte, whatever was wrong with
// the token, so it tells a guesser nothing.
var unauthenticated = &Problem{
	Type:   problemBase + "unauthenticated",
	Title:  "Unauthorized",
	Status: http.StatusUnauthorized,
	Detail: app.ErrUnauthenticated.Error(),
	Errors: []domain.FieldError{{Field: "Authorization", Rule: "Bearer and the secret of an active token"}},
}

// problemFor maps an error to its answer; this is the one place that does.
func problemFor(err error) *Problem {
	var (
		verr *domain.ValidationError
		serr *domain.StateError
		ferr *app.ForbiddenError
		nerr *domain.NotFoundError
		maxb *http.MaxBytesError
		prob *Problem
	)
	switch {
	case errors.As(err, &prob):
		return prob
	case errors.As(err, &verr):
		return &Problem{Type: problemBase + "validation", Title: "Invalid input", Status: http.StatusBadRequest, Detail: verr.Error(), Errors: verr.Problems}
	case errors.Is(err, app.ErrUnauthenticated):
		return unauthenticated
	case errors.As(err, &ferr):
		return &Problem{Type: problemBase + "forbidden", Title: "Forbidden", Status: http.StatusForbidden, Detail: ferr.Error(), Errors: []domain.FieldError{{Field: ferr.Field, Rule: ferr.Rule}}}
	case errors.As(err, &nerr):
		return &Problem{Type: problemBase + "not-found", Title: "Not found", Status: http.StatusNotFound, Detail: nerr.Error(), Errors: []domain.FieldError{{Field: nerr.Field, Rule: nerr.Rule}}}
	case errors.Is(err, domain.ErrDeleted):
		return &Problem{Type: problemBase + "deleted", Title: "Token deleted", Status: http.StatusConflict, Detail: err.Error() + "; it accepts no further command",
			Errors: []domain.FieldError{{Field: "token_id", Rule: "the token is deleted and accepts no further command"}}}
	case errors.As(err, &serr):
		return &Problem{Type: problemBase + "state", Title: "Not allowed in the token's state", Status: http.StatusConflict, Detail: serr.Error(), Errors: []domain.FieldError{{Field: serr.Field, Rule: serr.Rule}}}
	case errors.Is(err, domain.ErrConflict):
		return &Problem{Type: problemBase + "conflict", Title: "Conflict", Status: http.StatusConflict, Detail: "another command changed this token first; read it again and retry",
			Errors: []domain.FieldError{{Field: "token_id", Rule: "changed by another command first; read it again and retry"}}}
	case errors.As(err, &maxb):
		return &Problem{Type: problemBase + "too-large", Title: "Request body too large", Status: http.StatusRequestEntityTooLarge, Detail: fmt.Sprintf("body: at most %d bytes (1 MiB)", maxb.Limit), Errors: []domain.FieldError{{Field: "body", Rule: "at most 1 MiB"}}}
	}
	if errors.Is(err, app.ErrDisconnected) {
		return &Problem{Type: problemBase + "unavailable", Title: "Service unavailable", Status: http.StatusServiceUnavailable,
			Detail: "NATS is unreachable: the ledger cannot write or read the event stream now, so commands are refused and nothing is written, and once this ledger cannot show that its view is current (within its staleness bound) it authenticates and verifies nothing either. Try again shortly: GET /readyz answers 200 once NATS is back"}
	}
	if errors.Is(err, app.ErrStale) {
		return &Problem{Type: problemBase + "unavailable", Title: "Service unavailable", Status: http.StatusServiceUnavailable,
			Detail: "this ledger instance cannot show that it is in step with the event stream (within its staleness bound), so it authenticates and verifies nothing now rather than answer from a view that may have missed a rotation or a deletion. Try again shortly; another instance may answer"}
	}
	if errors.Is(err, app.ErrUnavailable) {
		return &Problem{Type: problemBase + "unavailable", Title: "Service unavailable", Status: http.StatusServiceUnavailable, Detail: "the event store did not answer in time; try again shortly"}
	}
	return &Problem{Type: problemBase + "internal", Title: "Internal error", Status: http.StatusInternalServerError, Detail: "internal error; quote the request id when reporting it"}
}

// writeProblem sends p. Problems quote what the caller sent (an id, a
// field's name, a value), and a caller may paste a secret anywhere: whatever
// is shaped like one is redacted here, the one place every error answer
// passes, so that no rule's wording can echo it.
func writeProblem(w http.ResponseWriter, r *http.Request, p *Problem) {
	out := shown(r, p)
	if p == unauthenticated {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tokenledger"`)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(out.Status)
	_ = json.NewEncoder(w).Encode(out)
}

// shown is p as it is answered to r: with r's request id, and anything
// shaped like a secret redacted.
func shown(r *http.Request, p *Problem) Problem {
	out := *p
	if p == unauthenticated {
		return out
	}
	out.RequestID = requestID(r.Context())
	out.Detail = redactSecrets(out.Detail)
	if len(p.Errors) > 0 {
		out.Errors = make([]domain.FieldError, len(p.Errors))
		for i, e := range p.Errors {
			e.Field, e.Rule = redactSecrets(e.Field), redactSecrets(e.Rule)
			out.Errors[i] = e
		}
	}
	return out
}

func redactSecrets(s string) string {
	if !secretLike.MatchString(s) {
		return s
	}
	return secretLike.ReplaceAllString(s, "[REDACTED]")
}
