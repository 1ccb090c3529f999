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

// serveMetrics answers GET /metrics without a token: it shows counters only,
// no id, path, rule or secret (see the README's "Metrics").
func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	counter := func(name, help string) {
		b.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " counter\n")
	}
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
	b.WriteString("# HELP tokenledger_auth_rate_limit_sources Source addresses (IPv6: /64 networks) whose failed-authentication budget is being tracked.\n# TYPE tokenledger_auth_rate_limit_sources gauge\n")
	value("tokenledger_auth_rate_limit_sources", "", uint64(s.limiter.sources()))
	counter("tokenledger_forbidden_total", "Requests refused with 403, by the operation the route performs.")
	for op := range numOperations {
		value("tokenledger_forbidden_total", `operation="`+op.String()+`"`, s.metrics.forbidden[op].Load())
	}
	reuse := s.ledger.ReuseStats()
	counter("tokenledger_reuse_detected_total", "Rotated-away secrets presented again: recorded, being recorded, dropped or failed.")
	value("tokenledger_reuse_detected_total", "", reuse.Queued+reuse.Dropped)
	counter("tokenledger_reuse_recorded_total", "TokenReuseDetected events stored.")
	value("tokenledger_reuse_recorded_total", "", reuse.Recorded)
	counter("tokenledger_reuse_dropped_total", "Reuses not recorded because the recording queue was full (or the ledger closing).")
	value("tokenledger_reuse_dropped_total", "", reuse.Dropped)
	counter("tokenledger_reuse_failed_total", "Reuses whose event could not be stored through every retry.")
	value("tokenledger_reuse_failed_total", "", reuse.Failed)

	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b.Bytes())
}
