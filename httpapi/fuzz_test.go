package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/tokenledger/tokenledger/httpapi"
)

// The command bodies FuzzCommandBody sends, chosen by its first argument.
const (
	fuzzCreate = iota
	fuzzUpdate
	fuzzAssign
	fuzzVerify
	fuzzRoutes
)

// FuzzCommandBody sends arbitrary bodies to create, update, assign and verify
// on one real ledger (embedded NATS, the real server) and holds every answer
// to the API's promises: never a 5xx; a refusal is a problem document naming
// a field and its rule, and writes nothing; an accepted body was one valid
// JSON object and wrote at most one event (a create exactly one), and what it
// stored has no control characters (bidirectional ones included). Run it with
//
//	go test -run '^$' -fuzz '^FuzzCommandBody$' ./httpapi
//
// One ledger serves every input, so an input costs a request, not a server.
func FuzzCommandBody(f *testing.F) {
	h := newHarness(f)
	target := h.create(httpapi.CreateRequest{Scope: "organization", Name: "fuzz target"})
	for _, seed := range []struct {
		route uint8
		body  string
	}{
		{fuzzCreate, `{"scope":"organization","name":"ci"}`},
		{fuzzCreate, `{"scope":"WORKSPACE","workspace_id":"analytics","name":"ops","role":"workspace_operator","expiration_days":90}`},
		{fuzzCreate, `{"scope":"deployment","workspace_id":"w1","deployment_id":"d1","name":"  etl  ","description":"line one\nline two\ttab"}`},
		{fuzzCreate, `{"scope":"organization","name":"a\u0000b"}`},
		{fuzzCreate, `{"scope":"organization","name":"a\u202eb"}`},
		{fuzzCreate, `{"scope":"organization","name":"ok","description":"\u001b[31mred"}`},
		{fuzzCreate, `{"scope":"organization","name":"x","expiration_days":1e400}`},
		{fuzzCreate, `{"scope":"organization","name":"x","expiration_days":-9223372036854775809}`},
		{fuzzCreate, `{"scope":"organization","name":"x"}]`},
		{fuzzCreate, `{"scope":"organization","name":"x"} {}`},
		{fuzzCreate, `{"scope":"organization","name":"x","scope":"workspace"}`},
		{fuzzCreate, `{"SCOPE":"organization","Name":"x"}`},
		{fuzzCreate, "{\"scope\":\"organization\",\"name\":\"\xff\"}"},
		{fuzzCreate, "\xef\xbb\xbf{\"scope\":\"organization\",\"name\":\"bom\"}"},
		{fuzzCreate, `{"scope":"organization","name":` + strings.Repeat("[", 10001)},
		{fuzzCreate, `null`},
		{fuzzCreate, `[]`},
		{fuzzCreate, `"x"`},
		{fuzzUpdate, `{"name":"renamed"}`},
		{fuzzUpdate, `{"description":""}`},
		{fuzzUpdate, `{"role":"ORGANIZATION_OWNER"}`},
		{fuzzUpdate, `{"name":null,"role":null}`},
		{fuzzUpdate, `{"name":["a"]}`},
		{fuzzUpdate, `{}`},
		{fuzzAssign, `{"role":"WORKSPACE_AUTHOR"}`},
		{fuzzAssign, `{"role":"ORGANIZATION_OWNER"}`},
		{fuzzAssign, `{"role":1}`},
		{fuzzVerify, `{"token":"tlo_` + strings.Repeat("A", 49) + `"}`},
		{fuzzVerify, `{"token":""}`},
	} {
		f.Add(seed.route, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		method, path := "POST", "/v1/tokens"
		switch route % fuzzRoutes {
		case fuzzUpdate:
			method, path = "PATCH", "/v1/tokens/"+target.ID
		case fuzzAssign:
			method, path = "PUT", "/v1/tokens/"+target.ID+"/workspaces/ws1"
		case fuzzVerify:
			path = "/v1/verify"
		}
		before := fuzzLastSeq(t, h)
		status, hdr, answer := fuzzSend(t, h, method, path, body)
		moved := fuzzLastSeq(t, h) - before
		switch {
		case status >= 500:
			t.Fatalf("%s %s %q: %d: %s", method, path, body, status, answer)
		case status >= 400:
			if moved != 0 {
				t.Fatalf("%s %s %q: refused with %d, yet the stream moved by %d", method, path, body, status, moved)
			}
			var p httpapi.Problem
			if err := json.Unmarshal(answer, &p); err != nil || hdr.Get("Content-Type") != "application/problem+json" ||
				p.Status != status || len(p.Errors) == 0 || p.Errors[0].Field == "" || p.Errors[0].Rule == "" {
				t.Fatalf("%s %s %q: %d without a problem naming a field and rule: %s", method, path, body, status, answer)
			}
			return
		case status < 200 || status >= 300:
			t.Fatalf("%s %s %q: unexpected status %d: %s", method, path, body, status, answer)
		}
		if !utf8.Valid(body) || !json.Valid(body) || !bytes.HasPrefix(bytes.TrimLeft(body, " \t\r\n"), []byte("{")) {
			t.Fatalf("%s %s %q: accepted (%d) a body that is not one JSON object", method, path, body, status)
		}
		if route%fuzzRoutes == fuzzVerify {
			if moved != 0 {
				t.Fatalf("verify %q moved the stream by %d", body, moved)
			}
			return
		}
		var tok httpapi.Token
		if err := json.Unmarshal(answer, &tok); err != nil {
			t.Fatalf("%s %s %q: %d with an answer that is not a token: %s", method, path, body, status, answer)
		}
		wantMoved := moved <= 1
		if route%fuzzRoutes == fuzzCreate {
			wantMoved = moved == 1 && status == http.StatusCreated
		}
		if !wantMoved || (moved == 1 && tok.Sequence != before+1) {
			t.Fatalf("%s %s %q: %d wrote %d events (answer at sequence %d, stream was at %d)", method, path, body, status, moved, tok.Sequence, before)
		}
		if n := utf8.RuneCountInString(tok.Name); n == 0 || n > 100 || tok.Name != strings.TrimSpace(tok.Name) ||
			strings.ContainsFunc(tok.Name, func(r rune) bool { return unicode.IsControl(r) || hidesText(r) || r == '\u2028' || r == '\u2029' }) {
			t.Fatalf("%s %s %q stored the name %q", method, path, body, tok.Name)
		}
		if strings.ContainsFunc(tok.Description, func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\t' || hidesText(r) }) {
			t.Fatalf("%s %s %q stored the description %q", method, path, body, tok.Description)
		}
	})
}

// fuzzSend sends body as JSON with the owner's token. It takes the input's
// *testing.T: the harness's own helpers report to the fuzz target's F, which
// must not be used inside an input.
func fuzzSend(t *testing.T, h *harness, method, path string, body []byte) (int, http.Header, []byte) {
	req, err := http.NewRequest(method, h.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+h.owner)
	req.Header.Set("Content-Type", "application/json")
	return send(t, req)
}

func fuzzLastSeq(t *testing.T, h *harness) uint64 {
	seq, err := h.store.LastSequence(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// hidesText: the bidirectional controls, which make text display as other
// text than it holds.
func hidesText(r rune) bool { return unicode.Is(unicode.Bidi_Control, r) }
