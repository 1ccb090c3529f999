package httpapi_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/httpapi"
)

// hostileCase is one request a hostile or broken client might send. Exactly
// one of req (sent by net/http's client) and raw (bytes written to the socket
// as they are, for what the client refuses to send) is set.
type hostileCase struct {
	name   string
	req    func(base string) *http.Request
	raw    string
	status int    // the 4xx wanted; 0: any 4xx
	field  string // the field the problem names; "": net/http answered, not the API
}

// TestHostileInputIsRefusedAndWritesNothing sends malformed, oversized,
// mistyped and deceptive requests to the real server. Each gets a 4xx (never
// a 2xx, 3xx or 5xx); the API's own refusals are problem documents naming the
// field and a rule; none moves the stream; and no header or path a caller
// sent can forge or break a line of the server's log.
func TestHostileInputIsRefusedAndWritesNothing(t *testing.T) {
	h := newHarness(t)
	// Refused credentials are part of the table: the failed-authentication
	// limit would answer some of them 429 instead.
	srv := h.limitedServer(httpapi.WithFailureLimit(0, 0))
	target := h.create(httpapi.CreateRequest{Scope: "organization", Name: "target"})
	owner := "Bearer " + h.owner

	create := `{"scope":"organization","name":"ok"}`
	// post is a create with the owner's token, as JSON unless hdr names
	// another Content-Type.
	post := func(body string, hdr ...string) func(string) *http.Request {
		if !slices.Contains(hdr, "Content-Type") {
			hdr = append(hdr, "Content-Type", "application/json")
		}
		return request("POST", "/v1/tokens", body, append([]string{"Authorization", owner}, hdr...)...)
	}
	patch := func(body string) func(string) *http.Request {
		return request("PATCH", "/v1/tokens/"+target.ID, body, "Authorization", owner)
	}
	assign := func(ws, body string) func(string) *http.Request {
		return request("PUT", "/v1/tokens/"+target.ID+"/workspaces/"+ws, body, "Authorization", owner)
	}
	// rawCreate is a create whose headers are written as they are.
	rawCreate := func(headers string) string {
		return "POST /v1/tokens HTTP/1.1\r\nHost: ledger\r\nAuthorization: " + owner + "\r\n" + headers +
			"Content-Type: application/json\r\nContent-Length: " + fmt.Sprint(len(create)) + "\r\n\r\n" + create
	}
	lookalike := strings.Replace(target.ID, "o", "\u043e", 1) // Cyrillic o
	deep := strings.Repeat("[", 100_000)

	cases := []hostileCase{
		// Malformed JSON and trailing data.
		{name: "value missing", req: post(`{"scope":"organization","name":}`), status: 400, field: "body"},
		{name: "single quotes", req: post(`{'scope':'organization','name':'a'}`), status: 400, field: "body"},
		{name: "trailing comma", req: post(`{"scope":"organization","name":"a",}`), status: 400, field: "body"},
		{name: "byte order mark", req: post("\ufeff" + create), status: 400, field: "body"},
		{name: "stray ] after the object", req: post(create + `]`), status: 400, field: "body"},
		{name: "stray } after the object", req: post(create + `}`), status: 400, field: "body"},
		{name: "comment after the object", req: post(create + ` // admin`), status: 400, field: "body"},
		{name: "two objects, JSON Lines", req: post(create + "\n" + create), status: 400, field: "body"},
		{name: "NUL after the object", req: post(create + "\x00"), status: 400, field: "body"},
		// Wrong types.
		{name: "name a number", req: post(`{"scope":"organization","name":42}`), status: 400, field: "name"},
		{name: "name an array", req: post(`{"scope":"organization","name":["a"]}`), status: 400, field: "name"},
		{name: "name an object", req: post(`{"scope":"organization","name":{"a":1}}`), status: 400, field: "name"},
		{name: "scope a boolean", req: post(`{"scope":true,"name":"a"}`), status: 400, field: "scope"},
		{name: "days beyond float64", req: post(`{"scope":"organization","name":"a","expiration_days":1e400}`), status: 400, field: "expiration_days"},
		{name: "days beyond int64", req: post(`{"scope":"organization","name":"a","expiration_days":9223372036854775808}`), status: 400, field: "expiration_days"},
		{name: "days a boolean", req: post(`{"scope":"organization","name":"a","expiration_days":true}`), status: 400, field: "expiration_days"},
		{name: "body an array", req: post(`[` + create + `]`), status: 400, field: "body"},
		{name: "body a string", req: post(`"` + create + `"`), status: 400, field: "body"},
		{name: "body null", req: post(`null`), status: 400, field: "scope"},
		{name: "update name false", req: patch(`{"name":false}`), status: 400, field: "name"},
		{name: "assign role an array", req: assign("ws1", `{"role":["WORKSPACE_MEMBER"]}`), status: 400, field: "role"},
		{name: "verify token a number", req: request("POST", "/v1/verify", `{"token":123}`, "Authorization", owner), status: 400, field: "token"},
		// Unknown fields.
		{name: "camel-case field", req: post(`{"scope":"organization","name":"a","organizationId":"acme"}`), status: 400, field: "organizationId"},
		{name: "empty key", req: post(`{"scope":"organization","name":"a","":""}`), status: 400, field: "body"},
		{name: "a field given twice", req: post(`{"scope":"organization","name":"a","name":"b"}`), status: 400, field: "name"},
		{name: "a field given twice, the first null", req: patch(`{"name":null,"name":"b"}`), status: 400, field: "name"},
		{name: "upper-case field", req: post(`{"scope":"organization","Name":"a"}`), status: 400, field: "Name"},
		{name: "long s folding to scope", req: post(`{"\u017fcope":"organization","name":"a"}`), status: 400, field: "\u017fcope"},
		{name: "Kelvin sign folding to token", req: request("POST", "/v1/verify", `{"to\u212aen":"x"}`, "Authorization", owner), status: 400, field: "to\u212aen"},
		{name: "stored-only field", req: patch(`{"name":"a","secret_hash":"00"}`), status: 400, field: "secret_hash"},
		{name: "workspace in an assign body", req: assign("ws1", `{"role":"WORKSPACE_MEMBER","workspace_id":"ws2"}`), status: 400, field: "workspace_id"},
		{name: "10 kB field name", req: post(`{"scope":"organization","name":"a","` + strings.Repeat("k", 10_000) + `":1}`), status: 400, field: strings.Repeat("k", 64) + "..."},
		// Huge and deep bodies.
		{name: "2 MiB body", req: post(`{"scope":"organization","name":"a","description":"` + strings.Repeat("d", 2<<20) + `"}`), status: 413, field: "body"},
		{name: "2 MiB chunked body", req: chunked(post(`{"scope":"organization","name":"a","description":"` + strings.Repeat("d", 2<<20) + `"}`)), status: 413, field: "body"},
		{name: "100,000 nested arrays", req: post(`{"scope":"organization","name":` + deep), status: 400, field: "body"},
		{name: "5,000 nested arrays in an unknown field", req: post(`{"x":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`), status: 400, field: "x"},
		{name: "1,000 nested objects as a name", req: post(`{"name":` + strings.Repeat(`{"a":`, 1000) + `1` + strings.Repeat("}", 1000) + `}`), status: 400, field: "name"},
		// Invalid UTF-8.
		{name: "0xff in description", req: post("{\"scope\":\"organization\",\"name\":\"a\",\"description\":\"\xff\"}"), status: 400, field: "body"},
		{name: "overlong slash in name", req: post("{\"scope\":\"organization\",\"name\":\"a\xc0\xafb\"}"), status: 400, field: "body"},
		{name: "UTF-8 surrogate in name", req: post("{\"scope\":\"organization\",\"name\":\"a\xed\xa0\x80\"}"), status: 400, field: "body"},
		{name: "invalid UTF-8 in a key", req: post("{\"scope\":\"organization\",\"name\":\"a\",\"\xfe\":1}"), status: 400, field: "body"},
		// Control characters.
		{name: "NUL in name", req: post(`{"scope":"organization","name":"a\u0000b"}`), status: 400, field: "name"},
		{name: "newline inside name", req: post(`{"scope":"organization","name":"a\nlevel=ERROR"}`), status: 400, field: "name"},
		{name: "ANSI escape in name", req: post(`{"scope":"organization","name":"\u001b[31mred"}`), status: 400, field: "name"},
		{name: "C1 NEL inside name", req: post(`{"scope":"organization","name":"a\u0085b"}`), status: 400, field: "name"},
		{name: "line separator in name", req: post(`{"scope":"organization","name":"a\u2028b"}`), status: 400, field: "name"},
		{name: "right-to-left override in name", req: post(`{"scope":"organization","name":"ci\u202egnp.exe"}`), status: 400, field: "name"},
		{name: "NUL in description", req: post(`{"scope":"organization","name":"a","description":"x\u0000"}`), status: 400, field: "description"},
		{name: "ANSI escape in description", req: post(`{"scope":"organization","name":"a","description":"\u001b]0;owned\u0007"}`), status: 400, field: "description"},
		{name: "carriage return in description", req: post(`{"scope":"organization","name":"a","description":"x\ry"}`), status: 400, field: "description"},
		{name: "bidirectional isolate in description", req: post(`{"scope":"organization","name":"a","description":"x\u2066y"}`), status: 400, field: "description"},
		{name: "ANSI escape in an updated name", req: patch(`{"name":"\u001b[2Jwiped"}`), status: 400, field: "name"},
		// Secrets and invisible characters in names and descriptions.
		{name: "the owner's secret as a name", req: post(`{"scope":"organization","name":"` + h.owner + `"}`), status: 400, field: "name"},
		{name: "a secret inside a name", req: post(`{"scope":"organization","name":"ci key=` + h.owner + ` (old)"}`), status: 400, field: "name"},
		{name: "a secret with a wrong checksum in a description", req: post(`{"scope":"organization","name":"a","description":"use tld_` + strings.Repeat("Ab1", 16) + `x"}`), status: 400, field: "description"},
		{name: "a secret in an updated description", req: patch(`{"description":"rotated from ` + h.owner + `"}`), status: 400, field: "description"},
		{name: "zero width space in name", req: post(`{"scope":"organization","name":"boot\u200bstrap"}`), status: 400, field: "name"},
		{name: "Hangul filler as the whole name", req: post(`{"scope":"organization","name":"\u3164"}`), status: 400, field: "name"},
		{name: "byte order mark after a name", req: post(`{"scope":"organization","name":"bootstrap\ufeff"}`), status: 400, field: "name"},
		{name: "combining grapheme joiner in name", req: post(`{"scope":"organization","name":"boot\u034fstrap"}`), status: 400, field: "name"},
		{name: "braille blank in name", req: post(`{"scope":"organization","name":"\u2800bootstrap"}`), status: 400, field: "name"},
		{name: "word joiner in an updated name", req: patch(`{"name":"target\u2060"}`), status: 400, field: "name"},
		{name: "soft hyphen in description", req: post(`{"scope":"organization","name":"a","description":"pass\u00adword"}`), status: 400, field: "description"},
		{name: "Mongolian vowel separator in an updated description", req: patch(`{"description":"x\u180ey"}`), status: 400, field: "description"},
		{name: "NUL in workspace_id", req: post(`{"scope":"workspace","workspace_id":"ws\u0000","name":"a"}`), status: 400, field: "workspace_id"},
		{name: "newline in deployment_id", req: post(`{"scope":"deployment","workspace_id":"ws","deployment_id":"d\n","name":"a"}`), status: 400, field: "deployment_id"},
		{name: "NUL in organization_id", req: post(`{"organization_id":"acme\u0000","scope":"organization","name":"a"}`), status: 403, field: "organization_id"},
		{name: "NUL in a workspace path", req: assign("ws%00", `{"role":"WORKSPACE_MEMBER"}`), status: 400, field: "workspace_id"},
		{name: "newline in a workspace path", req: assign("ws%0Alevel=ERROR", `{"role":"WORKSPACE_MEMBER"}`), status: 400, field: "workspace_id"},
		{name: "ANSI escape in a workspace path", req: assign("ws%1B%5B31m", `{"role":"WORKSPACE_MEMBER"}`), status: 400, field: "workspace_id"},
		// Path tricks in ids.
		{name: "dot-dot to another token", req: request("PATCH", "/v1/tokens/"+target.ID+"/../"+h.ownerID, `{"name":"a"}`, "Authorization", owner), status: 400, field: "path"},
		{name: "empty segment", req: request("PATCH", "/v1/tokens//"+target.ID, `{"name":"a"}`, "Authorization", owner), status: 400, field: "path"},
		{name: "dot segment", req: request("DELETE", "/v1/tokens/./"+target.ID, ``, "Authorization", owner), status: 400, field: "path"},
		{name: "encoded dot-dot id", req: request("DELETE", "/v1/tokens/%2e%2e", ``, "Authorization", owner), status: 404, field: "token_id"},
		{name: "encoded slashes in id", req: request("DELETE", "/v1/tokens/..%2F"+h.ownerID, ``, "Authorization", owner), status: 404, field: "token_id"},
		{name: "encoded NUL after id", req: request("DELETE", "/v1/tokens/"+target.ID+"%00", ``, "Authorization", owner), status: 404, field: "token_id"},
		{name: "encoded slashes into a sub-route", req: request("DELETE", "/v1/tokens/"+target.ID+"%2Fworkspaces%2Fws1", ``, "Authorization", owner), status: 404, field: "token_id"},
		{name: "10 kB id", req: request("DELETE", "/v1/tokens/tok_"+strings.Repeat("a", 10_000), ``, "Authorization", owner), status: 404, field: "token_id"},
		{name: "Cyrillic lookalike id", req: request("DELETE", "/v1/tokens/"+url.PathEscape(lookalike), ``, "Authorization", owner), status: 404, field: "token_id"},
		{name: "upper-case id", req: request("DELETE", "/v1/tokens/"+strings.ToUpper(target.ID), ``, "Authorization", owner), status: 404, field: "token_id"},
		{name: "dot-dot workspace", req: assign("%2e%2e", `{"role":"WORKSPACE_MEMBER"}`), status: 400, field: "workspace_id"},
		{name: "encoded slash in workspace", req: assign("..%2Fws1", `{"role":"WORKSPACE_MEMBER"}`), status: 400, field: "workspace_id"},
		{name: "65-character workspace", req: assign(strings.Repeat("w", 65), `{"role":"WORKSPACE_MEMBER"}`), status: 400, field: "workspace_id"},
		// Headers.
		{name: "CR in Idempotency-Key", raw: rawCreate("Idempotency-Key: a\rX-Injected: 1\r\n"), status: 400},
		{name: "CR in X-Request-Id", raw: rawCreate("X-Request-Id: a\rb\r\n"), status: 400},
		{name: "ANSI escape in X-Request-Id", raw: rawCreate("X-Request-Id: \x1b[31mred\r\n"), status: 400},
		{name: "NUL in Authorization", raw: "POST /v1/tokens HTTP/1.1\r\nHost: ledger\r\nAuthorization: " + owner + "\x00\r\nContent-Length: 2\r\n\r\n{}", status: 400},
		{name: "folded Idempotency-Key", raw: rawCreate("Idempotency-Key: a\r\n b\r\n"), status: 400},
		{name: "1.1 MB header", raw: rawCreate("X-Pad: " + strings.Repeat("p", 1_100_000) + "\r\n"), status: 431},
		{name: "non-ASCII Idempotency-Key", req: post(create, "Idempotency-Key", "k\xff\xfe"), status: 400, field: "idempotency_key"},
		{name: "10 kB Idempotency-Key", req: post(create, "Idempotency-Key", strings.Repeat("k", 10_000)), status: 400, field: "idempotency_key"},
		{name: "two Idempotency-Keys", req: post(create, "Idempotency-Key", "first", "Idempotency-Key", "second"), status: 400, field: "idempotency_key"},
		{name: "a second Authorization after the owner's", req: request("POST", "/v1/tokens", create, "Authorization", owner, "Authorization", "Bearer junk"), status: 401, field: "Authorization"},
		{name: "the owner's Authorization second", req: request("POST", "/v1/tokens", create, "Authorization", "Bearer junk", "Authorization", owner), status: 401, field: "Authorization"},
		{name: "Bearer and a tab", req: request("POST", "/v1/tokens", create, "Authorization", "Bearer\t"+h.owner), status: 401, field: "Authorization"},
		{name: "Basic credentials", req: request("POST", "/v1/tokens", create, "Authorization", "Basic "+h.owner), status: 401, field: "Authorization"},
		{name: "100 kB bearer", req: request("POST", "/v1/tokens", create, "Authorization", "Bearer "+strings.Repeat("t", 100_000)), status: 401, field: "Authorization"},
		{name: "secret with a character added", req: request("POST", "/v1/tokens", create, "Authorization", owner+"x"), status: 401, field: "Authorization"},
		{name: "500 kB User-Agent, bad body", req: post(`{"scope":"organization"}`, "User-Agent", strings.Repeat("u", 500_000)), status: 400, field: "name"},
		// Content types.
		{name: "form", req: post(`scope=organization&name=a`, "Content-Type", "application/x-www-form-urlencoded"), status: 415, field: "Content-Type"},
		{name: "multipart", req: post(create, "Content-Type", "multipart/form-data; boundary=x"), status: 415, field: "Content-Type"},
		{name: "text/json", req: post(create, "Content-Type", "text/json"), status: 415, field: "Content-Type"},
		{name: "application/jsonx", req: post(create, "Content-Type", "application/jsonx"), status: 415, field: "Content-Type"},
		{name: "a list of types", req: post(create, "Content-Type", "application/json, text/plain"), status: 415, field: "Content-Type"},
		{name: "two Content-Types", req: request("POST", "/v1/tokens", create, "Authorization", owner, "Content-Type", "application/json", "Content-Type", "text/plain"), status: 415, field: "Content-Type"},
		// Methods.
		{name: "TRACE", req: request("TRACE", "/v1/tokens", ``, "Authorization", owner), status: 405, field: "method"},
		{name: "OPTIONS", req: request("OPTIONS", "/v1/tokens", ``, "Authorization", owner), status: 405, field: "method"},
		{name: "lower-case post", req: request("post", "/v1/tokens", create, "Authorization", owner), status: 405, field: "method"},
		{name: "made-up method", req: request("EXPLODE", "/v1/tokens", create, "Authorization", owner), status: 405, field: "method"},
		{name: "PUT a token", req: request("PUT", "/v1/tokens/"+target.ID, `{"name":"a"}`, "Authorization", owner), status: 405, field: "method"},
		{name: "DELETE verify", req: request("DELETE", "/v1/verify", ``, "Authorization", owner), status: 405, field: "method"},
		{name: "PATCH the export", req: request("PATCH", "/v1/audit/export", `{}`, "Authorization", owner), status: 405, field: "method"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.lastSeq()
			var (
				status int
				hdr    http.Header
				body   []byte
			)
			if tc.raw != "" {
				status, hdr, body = sendRaw(t, srv.url, tc.raw)
			} else {
				status, hdr, body = send(t, tc.req(srv.url))
			}
			if status < 400 || status >= 500 || (tc.status != 0 && status != tc.status) {
				t.Fatalf("status %d, want %d: %.300s", status, tc.status, body)
			}
			if tc.field != "" {
				p := decodeProblem(t, body)
				if hdr.Get("Content-Type") != "application/problem+json" || p.Status != status || p.Detail == "" {
					t.Fatalf("not a problem document for %d: %s %.300s", status, hdr.Get("Content-Type"), body)
				}
				named := false
				for _, fe := range p.Errors {
					named = named || (fe.Field == tc.field && fe.Rule != "")
				}
				if !named {
					t.Fatalf("the problem does not name %q with a rule: %.300s", tc.field, body)
				}
			}
			if hdr.Get("X-Injected") != "" {
				t.Fatal("a header injected into the request came back in the answer")
			}
			if after := h.lastSeq(); after != before {
				t.Fatalf("the stream's last sequence moved from %d to %d", before, after)
			}
		})
	}

	tok, err := h.client(h.owner).GetToken(ctxT(t), target.ID)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Version != target.Version || tok.Name != target.Name || len(tok.WorkspaceRoles) != 0 {
		t.Fatalf("the target token changed: %+v", tok)
	}

	t.Run("log lines cannot be forged", func(t *testing.T) {
		// A path and a request id each trying to end the line and start a
		// fake one, and to drive the terminal of whoever reads the log.
		status, hdr, _ := send(t, request("GET", "/v1/tokens/x%0Atime=2026-01-01T00:00:00Z%20level=ERROR%20msg=forged%1B%5B2J", ``,
			"Authorization", owner, "X-Request-Id", "id\xff\xfe")(srv.url))
		if status != 404 {
			t.Fatalf("status %d, want 404", status)
		}
		if id := hdr.Get("X-Request-Id"); !regexp.MustCompile(`^[0-9a-f]{24}$`).MatchString(id) {
			t.Fatalf("a request id that is not one was echoed: %q", id)
		}
		if status, hdr, _ := send(t, request("GET", "/v1/tokens", ``, "Authorization", owner, "X-Request-Id", "trace-1.2_b")(srv.url)); status != 200 || hdr.Get("X-Request-Id") != "trace-1.2_b" {
			t.Fatalf("a good request id is not echoed: %d %q", status, hdr.Get("X-Request-Id"))
		}
		logs := srv.logs.String()
		if !strings.Contains(logs, "forged") {
			t.Fatalf("the forged path was not logged at all:\n%s", logs)
		}
		for line := range strings.Lines(logs) {
			if !strings.HasPrefix(line, "time=") || strings.ContainsAny(line, "\x1b\x00\r\u2028") || strings.Contains(line, "\xff") {
				t.Fatalf("a log line was forged or carries raw control bytes: %q", line)
			}
		}
	})
}

// request builds a request for a hostile case; hdr is name, value pairs, and
// a name given twice is sent twice.
func request(method, path, body string, hdr ...string) func(base string) *http.Request {
	return func(base string) *http.Request {
		req, err := http.NewRequest(method, base, strings.NewReader(body))
		if err != nil {
			panic(err)
		}
		// Set as the raw path, so that encoded bytes and dot segments reach
		// the server exactly as written.
		req.URL.Opaque = "//" + req.URL.Host + path
		if body == "" {
			req.Body, req.ContentLength = http.NoBody, 0
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Add(hdr[i], hdr[i+1])
		}
		return req
	}
}

// chunked sends the request's body without a length.
func chunked(build func(string) *http.Request) func(string) *http.Request {
	return func(base string) *http.Request {
		req := build(base)
		req.Body = io.NopCloser(io.MultiReader(req.Body))
		req.ContentLength = -1
		return req
	}
}

func send(t *testing.T, req *http.Request) (int, http.Header, []byte) {
	t.Helper()
	// No redirect is followed: a 3xx must show as one.
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// sendRaw writes req to the server's socket as it is and reads one answer.
func sendRaw(t *testing.T, base, req string) (int, http.Header, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	// Written alongside the read: the server may answer (431) and close
	// before it has taken the whole request.
	go func() { _, _ = io.WriteString(conn, req) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}
