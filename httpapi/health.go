package httpapi

import (
	"context"
	"net/http"
	"strings"
)

// Component is one part the ledger depends on (NATS, the stream, the token
// view) and its state now: a nil Err is ok.
type Component struct {
	Name string
	Err  error
}

// Health is the answer of GET /healthz and GET /readyz.
type Health struct {
	// Status is "ok" when every component is; otherwise "degraded" from
	// /healthz and "unavailable" from /readyz.
	Status string `json:"status"`
	// Detail names each component that is not ok, and why.
	Detail string `json:"detail,omitempty"`
	// Components maps each component to "ok" or "down: " and the reason.
	Components map[string]string `json:"components,omitempty"`
}

// healthz is liveness: it answers 200 while the process serves HTTP, and
// says which components are down. Restarting the ledger would not bring NATS
// back, so a liveness probe must not fail for it.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	check := s.health
	if s.liveness != nil {
		check = s.liveness
	}
	h, ok := checkHealth(r, check)
	if !ok {
		h.Status = "degraded"
	}
	writeJSON(w, http.StatusOK, h)
}

// readyz is readiness: 200 when the ledger can take commands (NATS
// connected, the stream answering, the view caught up), else 503.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	h, ok := checkHealth(r, s.health)
	if !ok {
		h.Status = "unavailable"
		writeJSON(w, http.StatusServiceUnavailable, h)
		return
	}
	writeJSON(w, http.StatusOK, h)
}

func checkHealth(r *http.Request, check func(context.Context) []Component) (Health, bool) {
	h := Health{Status: "ok"}
	if check == nil {
		return h, true
	}
	var down []string
	h.Components = map[string]string{}
	for _, c := range check(r.Context()) {
		if c.Err == nil {
			h.Components[c.Name] = "ok"
			continue
		}
		h.Components[c.Name] = "down: " + c.Err.Error()
		down = append(down, c.Name+" down: "+c.Err.Error())
	}
	h.Detail = strings.Join(down, "; ")
	return h, len(down) == 0
}
