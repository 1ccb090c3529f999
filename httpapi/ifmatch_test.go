package httpapi_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/httpapi"
)

// A token's ETag is its version; a command sent with If-Match applies only to
// that version: a stale one is a 409 and writes nothing, a malformed one a
// 400 on If-Match.
func TestCommandsWithIfMatchApplyOnlyToTheVersionRead(t *testing.T) {
	h := newHarness(t)
	tok := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "conditional"})
	path := "/v1/tokens/" + tok.ID

	status, hdr, body := h.raw("GET", path, h.owner, nil, nil)
	if status != http.StatusOK || hdr.Get("ETag") != `"1"` {
		t.Fatalf("GET: %d, ETag %q: %s", status, hdr.Get("ETag"), body)
	}

	status, hdr, body = h.raw("POST", path+"/rotate", h.owner, nil, map[string]string{"If-Match": `"1"`})
	if status != http.StatusOK || hdr.Get("ETag") != `"2"` {
		t.Fatalf("rotate at the version read: %d, ETag %q: %s", status, hdr.Get("ETag"), body)
	}

	before := h.lastSeq()
	for _, c := range []struct{ method, path, body, ifMatch string }{
		{"POST", path + "/rotate", "", `"1"`},
		{"PATCH", path, `{"name":"renamed"}`, `"1"`},
		{"PATCH", path, `{"name":"renamed"}`, `3`}, // a version not reached yet
		{"DELETE", path, "", `"1"`},
	} {
		status, _, body := h.raw(c.method, c.path, h.owner, strings.NewReader(c.body), map[string]string{"If-Match": c.ifMatch, "Content-Type": "application/json"})
		p := decodeProblem(t, body)
		if status != http.StatusConflict || p.Type != "urn:tokenledger:problem:conflict" {
			t.Errorf("%s %s with If-Match %s at version 2: %d %s, want 409 conflict", c.method, c.path, c.ifMatch, status, body)
		}
	}
	for _, bad := range []string{"abc", `"0"`, `W/"2"`, `"2", "3"`} {
		status, _, body := h.raw("POST", path+"/rotate", h.owner, nil, map[string]string{"If-Match": bad})
		p := decodeProblem(t, body)
		if status != http.StatusBadRequest || len(p.Errors) != 1 || p.Errors[0].Field != "If-Match" {
			t.Errorf("If-Match %s: %d %s, want 400 on If-Match", bad, status, body)
		}
	}
	if h.lastSeq() != before {
		t.Fatalf("refused conditional commands were written: sequence %d -> %d", before, h.lastSeq())
	}

	for i, ok := range []string{`"2"`, "3", "*"} { // the ETag, the bare version, any version
		status, _, body := h.raw("PATCH", path, h.owner, strings.NewReader(fmt.Sprintf(`{"description":"step %d"}`, i)), map[string]string{"If-Match": ok, "Content-Type": "application/json"})
		if status != http.StatusOK {
			t.Fatalf("PATCH with If-Match %s: %d %s", ok, status, body)
		}
	}
}
