package console_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

// heldForm is a form post whose headers the server has and whose body it is
// waiting for: it sent "100 Continue", which it does when a handler first
// reads the body.
type heldForm struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
	body []byte
}

// holdForm sends the headers of a form post to path, with the browser's
// session cookie, and returns once the server asks for the body.
func (b *browser) holdForm(path string, form url.Values) *heldForm {
	b.t.Helper()
	u, err := url.Parse(b.h.srv.URL)
	if err != nil {
		b.t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	body := []byte(form.Encode())
	ck := b.sessionCookie()
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\nExpect: 100-continue\r\nCookie: %s=%s\r\n\r\n",
		path, u.Host, len(body), ck.Name, ck.Value)
	if _, err := io.WriteString(conn, head); err != nil {
		b.t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		b.t.Fatalf("waiting for 100 Continue: %v", err)
	}
	if resp.StatusCode != http.StatusContinue {
		b.t.Fatalf("the server answered %d before asking for the form", resp.StatusCode)
	}
	return &heldForm{t: b.t, conn: conn, br: br, body: body}
}

// finish sends the form and returns the answer; send false reads the
// answer without sending it.
func (f *heldForm) finish(send bool) (*http.Response, string) {
	f.t.Helper()
	if send {
		if _, err := f.conn.Write(f.body); err != nil {
			f.t.Fatal(err)
		}
	}
	resp, err := http.ReadResponse(f.br, nil)
	if err != nil {
		f.t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// A console form is judged by the signed-in token as it is once the form
// has arrived: a token deleted or rotated while the form was on its way
// ends the session and does nothing; one demoted meanwhile acts with its new
// role and is refused. Nothing is written.
func TestAFormIsJudgedByItsTokenWhenItArrives(t *testing.T) {
	h := newHarness(t)
	member := "ORGANIZATION_MEMBER"
	for _, tc := range []struct {
		name   string
		change func(id string) error
		want   int
	}{
		{"deleted", func(id string) error {
			_, err := h.ledger.DeleteToken(ctxT(t), h.caller(h.owner), id, "")
			return err
		}, http.StatusSeeOther},
		{"rotated", func(id string) error {
			_, err := h.ledger.RotateToken(ctxT(t), h.caller(h.owner), id, "")
			return err
		}, http.StatusSeeOther},
		{"demoted", func(id string) error {
			_, err := h.ledger.UpdateToken(ctxT(t), h.caller(h.owner), id, domain.UpdateToken{Role: &member}, "")
			return err
		}, http.StatusForbidden},
	} {
		t.Run("signed in with a token "+tc.name+" meanwhile", func(t *testing.T) {
			actor, secret := h.create(domain.CreateToken{Scope: "organization", Name: "actor", Role: "ORGANIZATION_OWNER"})
			b := h.browser()
			b.signIn(secret)
			b.get("/console/tokens/new?scope=organization")
			form := url.Values{"csrf": {b.csrf()}, "idempotency_key": {b.key()}, "scope": {"organization"},
				"name": {"backdoor"}, "role": {"ORGANIZATION_OWNER"}, "expires": {"never"}}
			held := b.holdForm("/console/tokens", form)
			if err := tc.change(actor.ID()); err != nil {
				t.Fatal(err)
			}
			before := h.lastSeq()
			resp, body := held.finish(true)
			if resp.StatusCode != tc.want {
				t.Fatalf("answered %d, want %d (secret shown: %t)", resp.StatusCode, tc.want, secretShown.MatchString(body))
			}
			if loc := resp.Header.Get("Location"); tc.want == http.StatusSeeOther && loc != "/console/sign-in?m=ended" {
				t.Fatalf("sent to %q, want the sign-in page saying the session ended", loc)
			}
			if secretShown.MatchString(body) {
				t.Fatal("the answer shows a new secret")
			}
			if after := h.lastSeq(); after != before {
				t.Fatalf("the stream moved from %d to %d: the refused form wrote", before, after)
			}
		})
	}
}

// A form that does not arrive within the server's body read timeout is
// answered 408 with a page saying so, and nothing is done.
func TestAFormMustArriveInTime(t *testing.T) {
	h := newHarness(t, withServerOptions(httpapi.WithBodyReadTimeout(300*time.Millisecond)))
	_, secret := h.create(domain.CreateToken{Scope: "organization", Name: "actor", Role: "ORGANIZATION_OWNER"})
	b := h.browser()
	b.signIn(secret)
	b.get("/console/tokens/new?scope=organization")
	before := h.lastSeq()
	held := b.holdForm("/console/tokens", url.Values{"csrf": {b.csrf()}, "idempotency_key": {b.key()}, "scope": {"organization"},
		"name": {"late"}, "role": {"ORGANIZATION_OWNER"}, "expires": {"never"}})
	resp, body := held.finish(false)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(body, "did not arrive in time") || !strings.Contains(body, "300ms") {
		t.Fatalf("answered %d, want 408 and a page saying the form did not arrive within 300ms:\n%s", resp.StatusCode, body)
	}
	if after := h.lastSeq(); after != before {
		t.Fatalf("the stream moved from %d to %d", before, after)
	}
}
