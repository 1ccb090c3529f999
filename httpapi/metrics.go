package httpapi

import (
	"bytes"
	"net/http"
	"strconv"
	"sync/atomic"
)

// operation names what a route does, for the forbidden counter and log. The
// set is fixed, so a metric labelled with it cannot grow with traffic.
type operation uint8

const (
	opCreate operation = iota
	opUpdate
	opRotate
	opAssign
	opUnassign
	opDelete
	opRead
	opList
	opRoles
	opVerify
	opExport
	numOperations
)

var operationNames = [numOperations]string{
	opCreate: "create", opUpdate: "update", opRotate: "rotate", opAssign: "assign", opUnassign: "unassign",
	opDelete: "delete", opRead: "read", opList: "list", opRoles: "roles", opVerify: "verify", opExport: "export",
}

func (o operation) String() string { return operationNames[o] }

// metrics are plain counters, written out by hand in Prometheus' text format:
// nothing here is worth a dependency. Every label value comes from a fixed
// set (status codes, operation names); ids, paths, rules and anything a
// client sent never become labels.
type metrics struct {
	requests     [600]atomic.Uint64 // by status code
	authFailures atomic.Uint64
	rateLimited  atomic.Uint64
	forbidden    [numOperations]atomic.Uint64
}

func (m *metrics) request(status int) {
	if status < 100 || status >= len(m.requests) {
		return // net/http sends no such status
	}
	m.requests[status].Add(1)
}

// serveMetrics answers GET /metrics on the API's address, without a token:
// the aggregate series only, which move alike for every bad secret (see
// writeMetrics). No id, path, rule or secret (see the README's "Metrics").
func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	s.writeMetrics(w, false)
}

// OperatorMetrics is the handler for the operator's metrics address (`ledger
// serve --metrics-listen`, loopback by default): GET /metrics with every
// series of the API's /metrics and the reuse detector's. Those tell a
// rotated-away secret from an unknown one (only the first moves them), so
// they are not served where anyone holding a leaked secret can read them.
func (s *Server) OperatorMetrics() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) { s.writeMetrics(w, true) })
	return mux
}

// writeMetrics writes the counters in Prometheus' text format: the public
// series, and with operator the reuse detector's too.
func (s *Server) writeMetrics(w http.ResponseWriter, operator bool) {
	var b bytes.Buffer
	help := func(name, kind, text string) {
		b.WriteString("# HELP " + name + " " + text + "\n# TYPE " + name + " " + kind + "\n")
	}
	counter := func(name, text string) { help(name, "counter", text) }
	value := func(name, labels string, v uint64) {
		b.WriteString(name)
		if labels != "" {
			b.WriteString("{" + labels + "}")
		}
		b.WriteString(" " + strconv.FormatUint(v, 10) + "\n")
	}

	counter("tokenledger_http_requests_total", "HTTP requests answered, by status code.")
	for code := range s.metrics.requests {
		if n := s.metrics.requests[code].Load(); n > 0 {
			value("tokenledger_http_requests_total", `code="`+strconv.Itoa(code)+`"`, n)
		}
	}
	counter("tokenledger_auth_failures_total", "Requests refused with 401: missing, malformed, unknown, expired, rotated-away or deleted token.")
	value("tokenledger_auth_failures_total", "", s.metrics.authFailures.Load())
	counter("tokenledger_auth_rate_limited_total", "Requests refused with 429, before their token was looked at, because their source address used up its failed-authentication budget.")
	value("tokenledger_auth_rate_limited_total", "", s.metrics.rateLimited.Load())
	help("tokenledger_auth_rate_limit_sources", "gauge", "Source addresses (IPv6: /64 networks) whose failed-authentication budget is being tracked.")
	value("tokenledger_auth_rate_limit_sources", "", uint64(s.limiter.sources()))
	counter("tokenledger_forbidden_total", "Requests refused with 403, by the operation the route performs.")
	for op := range numOperations {
		value("tokenledger_forbidden_total", `operation="`+op.String()+`"`, s.metrics.forbidden[op].Load())
	}
	if operator {
		reuse := s.ledger.ReuseStats()
		counter("tokenledger_reuse_detected_total", "Rotated-away secrets presented again (each try).")
		value("tokenledger_reuse_detected_total", "", reuse.Tries)
		counter("tokenledger_reuse_recorded_total", "TokenReuseDetected events stored (each stands for one or more tries).")
		value("tokenledger_reuse_recorded_total", "", reuse.Recorded)
		counter("tokenledger_reuse_recorded_tries_total", "Tries the stored TokenReuseDetected events stand for (the sum of their counts).")
		value("tokenledger_reuse_recorded_tries_total", "", reuse.RecordedTries)
		help("tokenledger_reuse_pending", "gauge", "Tries counted and not yet in a stored event: they go into the next event of their token and source.")
		value("tokenledger_reuse_pending", "", reuse.Pending)
		counter("tokenledger_reuse_dropped_total", "Tries not recorded because every token-and-source slot was taken (or the ledger was closing).")
		value("tokenledger_reuse_dropped_total", "", reuse.Dropped)
		counter("tokenledger_reuse_failed_total", "TokenReuseDetected events that could not be stored through every retry.")
		value("tokenledger_reuse_failed_total", "", reuse.Failed)
	}

	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b.Bytes())
}
