package httpapi_test

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/httpapi"
)

var operations = []string{"create", "update", "rotate", "assign", "unassign", "delete", "read", "list", "roles", "verify", "export"}

func TestAForbiddenRequestIsLoggedWithItsActorAndCounted(t *testing.T) {
	h := newHarness(t)
	member := h.create(httpapi.CreateRequest{Scope: "organization", Name: "reader", Role: "ORGANIZATION_MEMBER"})
	l := h.limitedServer()

	send := func(method, path, requestID, body string) {
		t.Helper()
		req, err := http.NewRequest(method, l.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+member.Secret)
		req.Header.Set("X-Request-Id", requestID)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s %s as an ORGANIZATION_MEMBER: %d, want 403", method, path, resp.StatusCode)
		}
	}
	// An organization member may read but change nothing, and only an owner
	// exports. The path carries a secret by mistake: the log must not.
	send("POST", "/v1/tokens", "req-forbidden-create", `{"scope":"organization","name":"escalate","role":"ORGANIZATION_OWNER"}`)
	send("POST", "/v1/tokens/"+h.owner+"/rotate", "req-forbidden-rotate", "")
	send("GET", "/v1/audit/export?format=jsonl", "req-forbidden-export", "")

	logs := l.logs.String()
	for _, want := range []struct{ id, op, method, path string }{
		{"req-forbidden-create", "create", "POST", "/v1/tokens"},
		{"req-forbidden-rotate", "rotate", "POST", "/v1/tokens/[REDACTED]/rotate"},
		{"req-forbidden-export", "export", "GET", "/v1/audit/export"},
	} {
		line := logLine(logs, "msg=forbidden", "request_id="+want.id)
		if line == "" {
			t.Fatalf("no forbidden log line for %s:\n%s", want.id, logs)
		}
		for _, field := range []string{"level=WARN", "actor_token_id=" + member.ID, "operation=" + want.op, "method=" + want.method,
			"path=" + want.path, "field=", "rule="} {
			if !strings.Contains(line, field) {
				t.Fatalf("forbidden log line lacks %q:\n%s", field, line)
			}
		}
	}

	for _, op := range operations {
		want := int64(0)
		if op == "create" || op == "rotate" || op == "export" {
			want = 1
		}
		if got := l.metric(`tokenledger_forbidden_total{operation="` + op + `"}`); got != want {
			t.Fatalf(`tokenledger_forbidden_total{operation=%q} = %d, want %d`, op, got, want)
		}
	}
	if got := l.metric(`tokenledger_http_requests_total{code="403"}`); got != 3 {
		t.Fatalf(`tokenledger_http_requests_total{code="403"} = %d, want 3`, got)
	}
	for _, s := range []string{h.owner, member.Secret} {
		if strings.Contains(l.logs.String(), s) {
			t.Fatal("the server log holds a secret")
		}
	}
}

// logLine returns the first log line holding every one of parts.
func logLine(logs string, parts ...string) string {
next:
	for _, line := range strings.Split(logs, "\n") {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		return line
	}
	return ""
}

func TestMetricsAreValidPrometheusTextAndHoldNoSecret(t *testing.T) {
	h := newHarness(t)
	member := h.create(httpapi.CreateRequest{Scope: "organization", Name: "reader", Role: "ORGANIZATION_MEMBER"})
	ws := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "ws"})
	rot, err := h.client(h.owner).RotateToken(ctxT(t), ws.ID)
	if err != nil {
		t.Fatal(err)
	}
	l, api := h.metricsServer(httpapi.WithFailureLimit(2, time.Minute))

	// A little of everything: 200, 404, 403, 401 (one a reused rotated-away
	// secret), 429.
	l.get("/v1/tokens", h.owner, "")
	l.get("/v1/tokens/"+ws.ID, h.owner, "")
	l.get("/v1/tokens/tok_nope", h.owner, "")
	l.do("DELETE", "/v1/tokens/"+ws.ID, member.Secret, "", nil)
	l.get("/v1/tokens", ws.Secret, "")
	l.get("/v1/tokens", "", "")
	l.get("/v1/tokens", member.Secret, "")

	// Served without a token.
	status, hdr, body := l.get("/metrics", "", "")
	if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("GET /metrics without a token: %d %q", status, hdr.Get("Content-Type"))
	}
	checkExposition(t, string(body))

	for _, want := range []string{
		`tokenledger_http_requests_total{code="200"} 2`,
		`tokenledger_http_requests_total{code="404"} 1`,
		`tokenledger_http_requests_total{code="403"} 1`,
		`tokenledger_http_requests_total{code="401"} 2`,
		`tokenledger_http_requests_total{code="429"} 1`,
		"tokenledger_auth_failures_total 2",
		"tokenledger_auth_rate_limited_total 1",
		`tokenledger_forbidden_total{operation="delete"} 1`,
		"tokenledger_auth_rate_limit_sources 1",
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Fatalf("/metrics lacks %q:\n%s", want, body)
		}
	}
	// The reuse detector's series tell a rotated-away secret from an
	// unknown one: only the operator's address serves them, with the rest.
	if strings.Contains(string(body), "reuse") {
		t.Fatalf("the API's /metrics holds reuse series:\n%s", body)
	}
	op := operatorMetrics(t, api)
	checkExposition(t, op)
	if !strings.Contains(op, "tokenledger_reuse_detected_total 1\n") || !strings.Contains(op, `tokenledger_forbidden_total{operation="delete"} 1`+"\n") {
		t.Fatalf("the operator's /metrics lacks the reuse or the API series:\n%s", op)
	}
	for _, exposed := range []string{string(body), op} {
		for _, s := range []string{h.owner, member.Secret, ws.Secret, rot.Secret} {
			sum := sha256.Sum256([]byte(s))
			for _, bad := range []string{s, hex.EncodeToString(sum[:]), s[:12]} {
				if strings.Contains(exposed, bad) {
					t.Fatal("/metrics holds a secret or its hash")
				}
			}
		}
		for _, id := range []string{h.ownerID, member.ID, ws.ID, "ws1", "tok_"} {
			if strings.Contains(exposed, id) {
				t.Fatalf("/metrics holds an id (%s): labels come from fixed sets only", id)
			}
		}
	}
	if s, hdr, _ := l.do("POST", "/metrics", "", "", nil); s != 405 || hdr.Get("Allow") != "GET" {
		t.Fatalf("POST /metrics: %d Allow %q", s, hdr.Get("Allow"))
	}
}

// metricsServer is limitedServer, with the server itself for its operator
// handler.
func (h *harness) metricsServer(opts ...httpapi.ServerOption) (*limited, *httpapi.Server) {
	h.t.Helper()
	l := &limited{t: h.t, logs: &lockedBuffer{}}
	l.clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	opts = append([]httpapi.ServerOption{httpapi.WithServerClock(func() time.Time { return time.Unix(0, l.clock.Load()) })}, opts...)
	api := httpapi.NewServer(h.ledger, slog.New(slog.NewTextHandler(l.logs, nil)), nil, opts...)
	srv := httptest.NewServer(api)
	h.t.Cleanup(srv.Close)
	l.url = srv.URL
	return l, api
}

// operatorMetrics reads GET /metrics from the server's operator handler
// (what `ledger serve --metrics-listen` serves).
func operatorMetrics(t *testing.T, api *httpapi.Server) string {
	t.Helper()
	rec := httptest.NewRecorder()
	api.OperatorMetrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("operator GET /metrics: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	return rec.Body.String()
}

// Issue 16: the public /metrics moved tokenledger_reuse_detected_total for
// a rotated-away secret only, telling whoever held a leaked secret that it
// was real. Every series the API's address serves now moves alike for a
// rotated-away and a never-issued secret.
func TestPublicMetricsMoveAlikeForARotatedAwayAndAnUnknownSecret(t *testing.T) {
	h := newHarness(t)
	ws := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "ws"})
	if _, err := h.client(h.owner).RotateToken(ctxT(t), ws.ID); err != nil {
		t.Fatal(err)
	}
	l := h.limitedServer(httpapi.WithFailureLimit(0, 0))
	samples := func() map[string]string {
		t.Helper()
		_, _, body := l.get("/metrics", "", "")
		out := map[string]string{}
		for _, line := range strings.Split(string(body), "\n") {
			if m := sampleLine.FindStringSubmatch(line); m != nil {
				out[m[1]+m[2]] = m[3]
			}
		}
		return out
	}
	unknown := neverIssued(t)
	// Each kind once, then again, so that a count moving from 0 to 1
	// compares with one moving from 1 to 2 only by how much it moved.
	var diffs [2][]map[string]string
	for round := range 3 {
		for k, secret := range []string{ws.Secret, unknown} {
			before := samples()
			if s, _, _ := l.get("/v1/tokens", secret, ""); s != 401 {
				t.Fatalf("bad secret: %d", s)
			}
			after := samples()
			if round == 0 {
				continue // first moves: new series appear
			}
			d := map[string]string{}
			for key, v := range after {
				if before[key] != v {
					a, _ := strconv.Atoi(v)
					b, _ := strconv.Atoi(before[key])
					d[key] = strconv.Itoa(a - b)
				}
			}
			diffs[k] = append(diffs[k], d)
		}
	}
	for i := range diffs[0] {
		if !maps.Equal(diffs[0][i], diffs[1][i]) {
			t.Fatalf("the API's /metrics moves differently: rotated-away secret %v, unknown secret %v", diffs[0][i], diffs[1][i])
		}
	}
}

var (
	metricName  = `[a-zA-Z_:][a-zA-Z0-9_:]*`
	labelPair   = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"`
	sampleLine  = regexp.MustCompile(`^(` + metricName + `)(\{` + labelPair + `(?:,` + labelPair + `)*\})? (-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|NaN|[+-]Inf)$`)
	helpLine    = regexp.MustCompile(`^# HELP (` + metricName + `) \S.*$`)
	typeLine    = regexp.MustCompile(`^# TYPE (` + metricName + `) (counter|gauge|histogram|summary|untyped)$`)
	labelOfLine = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"`)
)

// checkExposition checks the Prometheus text format (0.0.4) line by line:
// every sample belongs to a family declared once by HELP and TYPE before it,
// families are not interleaved, no series repeats, counters end in _total,
// and labels are only the fixed ones.
func checkExposition(t *testing.T, body string) {
	t.Helper()
	if !strings.HasSuffix(body, "\n") {
		t.Fatal("exposition does not end with a newline")
	}
	typed := map[string]string{}
	helped := map[string]bool{}
	series := map[string]bool{}
	done := map[string]bool{} // families whose samples are over
	current := ""
	for i, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		switch {
		case helpLine.MatchString(line):
			name := helpLine.FindStringSubmatch(line)[1]
			if helped[name] {
				t.Fatalf("line %d: second HELP for %s", i+1, name)
			}
			helped[name] = true
		case typeLine.MatchString(line):
			m := typeLine.FindStringSubmatch(line)
			if typed[m[1]] != "" {
				t.Fatalf("line %d: second TYPE for %s", i+1, m[1])
			}
			if m[2] == "counter" && !strings.HasSuffix(m[1], "_total") {
				t.Fatalf("line %d: counter %s does not end in _total", i+1, m[1])
			}
			typed[m[1]] = m[2]
		case sampleLine.MatchString(line):
			m := sampleLine.FindStringSubmatch(line)
			name := m[1]
			if typed[name] == "" || !helped[name] {
				t.Fatalf("line %d: sample of %s before its HELP and TYPE", i+1, name)
			}
			if !strings.HasPrefix(name, "tokenledger_") {
				t.Fatalf("line %d: %s is not in the tokenledger_ namespace", i+1, name)
			}
			if name != current {
				if done[name] {
					t.Fatalf("line %d: samples of %s are split", i+1, name)
				}
				done[current], current = true, name
			}
			if series[m[1]+m[2]] {
				t.Fatalf("line %d: series %s%s repeats", i+1, m[1], m[2])
			}
			series[m[1]+m[2]] = true
			for _, l := range labelOfLine.FindAllStringSubmatch(m[2], -1) {
				switch l[1] {
				case "code":
					if !regexp.MustCompile(`^[1-5][0-9][0-9]$`).MatchString(l[2]) {
						t.Fatalf("line %d: code=%q", i+1, l[2])
					}
				case "operation":
					if !strings.Contains(" "+strings.Join(operations, " ")+" ", " "+l[2]+" ") {
						t.Fatalf("line %d: operation=%q is not in the fixed set", i+1, l[2])
					}
				default:
					t.Fatalf("line %d: label %s is not one of the fixed labels", i+1, l[1])
				}
			}
		default:
			t.Fatalf("line %d is not Prometheus text format: %q", i+1, line)
		}
	}
	for name := range typed {
		if !done[name] && current != name {
			t.Fatalf("family %s has no sample", name)
		}
	}
}

func TestErrorAnswersNeverEchoASecret(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/v1/tokens/" + h.owner, ""},                                   // 404 quoting the id
		{"POST", "/v1/tokens", `{"scope":"organization","` + h.owner + `":1}`}, // 400 naming an unknown field
	} {
		status, _, body := h.raw(tc.method, tc.path, h.owner, strings.NewReader(tc.body), nil)
		if status < 400 || strings.Contains(string(body), h.owner) || !strings.Contains(string(body), "[REDACTED]") {
			t.Fatalf("%s %s: %d %s; want an error with the secret redacted", tc.method, tc.path[:12], status, body)
		}
	}
}
