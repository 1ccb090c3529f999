package httpapi_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/httpapi"
)

// heldRequest is a request whose headers the server has and whose body it
// is waiting for: it sent "100 Continue", which the server does when the
// handler first reads the body, so authentication is behind it.
type heldRequest struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
	body []byte
}

// hold sends method path's headers (with Expect: 100-continue and hdr) to
// base, a server's URL, and returns once the server asks for the body.
func hold(t testing.TB, base, method, path string, hdr http.Header, body []byte) *heldRequest {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n", method, path, u.Host, len(body))
	for k, vs := range hdr {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("waiting for 100 Continue: %v", err)
	}
	if resp.StatusCode != http.StatusContinue {
		got, _ := io.ReadAll(resp.Body)
		t.Fatalf("the server answered %d before asking for the body: %s", resp.StatusCode, got)
	}
	return &heldRequest{t: t, conn: conn, br: br, body: body}
}

// finish sends the body and returns the answer's status and body.
func (r *heldRequest) finish() (int, []byte) {
	r.t.Helper()
	if _, err := r.conn.Write(r.body); err != nil {
		r.t.Fatal(err)
	}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		r.t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// answer reads the answer without sending the body.
func (r *heldRequest) answer() (int, []byte) {
	r.t.Helper()
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		r.t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func ptr[T any](v T) *T { return &v }

var secretShaped = regexp.MustCompile(`tl[owd]_[0-9A-Za-z]{20,}`)

// redacted is an answer fit for a test's log: no secret in it.
func redacted(b []byte) string { return secretShaped.ReplaceAllString(string(b), "[REDACTED]") }

// shortly describes a command's answer without its secret.
func shortly(t httpapi.Token) string {
	return fmt.Sprintf("{id %s, replay %t, secret shown %t}", t.ID, t.IdempotentReplay, t.Secret != "")
}

// A request authenticated from its headers is decided with its token as it
// is when the body has arrived: deleting, rotating or demoting the token
// while the body is on its way refuses the request as it would have been
// refused had it arrived after the change (401, or 403 with the token's new
// role), and nothing is written.
func TestARequestIsJudgedByItsTokenWhenItActs(t *testing.T) {
	h := newHarness(t)
	owner := h.client(h.owner)
	changes := []struct {
		name   string
		change func(id string)
		want   int
	}{
		{"deleted", func(id string) {
			if _, err := owner.DeleteToken(ctxT(t), id); err != nil {
				t.Fatal(err)
			}
		}, http.StatusUnauthorized},
		{"rotated", func(id string) {
			if _, err := owner.RotateToken(ctxT(t), id); err != nil {
				t.Fatal(err)
			}
		}, http.StatusUnauthorized},
		{"demoted", func(id string) {
			if _, err := owner.UpdateToken(ctxT(t), id, httpapi.UpdateRequest{Role: ptr("ORGANIZATION_MEMBER")}); err != nil {
				t.Fatal(err)
			}
		}, http.StatusForbidden},
	}
	commands := []struct {
		name   string
		method string
		path   func() string
		body   any
	}{
		{"create an owner", http.MethodPost, func() string { return "/v1/tokens" },
			httpapi.CreateRequest{Scope: "organization", Name: "backdoor", Role: "ORGANIZATION_OWNER"}},
		{"promote a member to owner", http.MethodPatch, func() string {
			return "/v1/tokens/" + h.create(httpapi.CreateRequest{Scope: "organization", Name: "member", Role: "ORGANIZATION_MEMBER"}).ID
		}, httpapi.UpdateRequest{Role: ptr("ORGANIZATION_OWNER")}},
	}
	for _, ch := range changes {
		for _, cmd := range commands {
			t.Run(cmd.name+" by a token "+ch.name+" meanwhile", func(t *testing.T) {
				actor := h.create(httpapi.CreateRequest{Scope: "organization", Name: "actor", Role: "ORGANIZATION_OWNER"})
				path := cmd.path()
				body, _ := json.Marshal(cmd.body)
				req := hold(t, h.srv.URL, cmd.method, path, http.Header{
					"Authorization": {"Bearer " + actor.Secret}, "Content-Type": {"application/json"},
				}, body)
				ch.change(actor.ID)
				before := h.lastSeq()
				status, answer := req.finish()
				if status != ch.want {
					t.Fatalf("answered %d, want %d: %s", status, ch.want, redacted(answer))
				}
				if after := h.lastSeq(); after != before {
					t.Fatalf("the stream moved from %d to %d: the refused command wrote", before, after)
				}
			})
		}
	}
}

// A body that does not arrive within the server's body read timeout is
// answered 408 naming the body, and nothing is written.
func TestABodyMustArriveInTime(t *testing.T) {
	h := newHarness(t)
	srv := h.server(httpapi.WithBodyReadTimeout(300 * time.Millisecond))
	before := h.lastSeq()
	req := hold(t, srv, http.MethodPost, "/v1/tokens", http.Header{
		"Authorization": {"Bearer " + h.owner}, "Content-Type": {"application/json"},
	}, []byte(`{"scope":"organization","name":"late","role":"ORGANIZATION_OWNER"}`))
	status, answer := req.answer()
	if status != http.StatusRequestTimeout {
		t.Fatalf("answered %d, want 408: %s", status, redacted(answer))
	}
	p := decodeProblem(t, answer)
	if len(p.Errors) != 1 || p.Errors[0].Field != "body" || !strings.Contains(p.Detail, "300ms") {
		t.Fatalf("the problem does not name the body and the time allowed: %+v", p)
	}
	if after := h.lastSeq(); after != before {
		t.Fatalf("the stream moved from %d to %d", before, after)
	}
}

// server serves the harness's ledger on another address, with opts.
func (h *harness) server(opts ...httpapi.ServerOption) string {
	h.t.Helper()
	srv := httptest.NewServer(httpapi.NewServer(h.ledger, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, opts...))
	h.t.Cleanup(srv.Close)
	return srv.URL
}
