package httpapi_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tokenledger/tokenledger/httpapi"
)

func intp(n int) *int       { return &n }
func strp(s string) *string { return &s }

func TestEveryCommandThroughTheAPI(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	ctx := ctxT(t)

	ws := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "  deploy bot  ", Role: "WORKSPACE_OPERATOR", ExpirationDays: intp(30)})
	if ws.Name != "deploy bot" || ws.Status != "active" || ws.ExpiresAt == nil || ws.Secret == "" || ws.Version != 1 {
		t.Fatalf("created workspace token = %+v", ws)
	}
	dep := h.create(httpapi.CreateRequest{Scope: "deployment", WorkspaceID: "ws1", DeploymentID: "dep1", Name: "dag deploy"})
	if dep.Role != "DEPLOYMENT_ADMIN" || *dep.DeploymentID != "dep1" {
		t.Fatalf("deployment token = %+v", dep)
	}
	org := h.create(httpapi.CreateRequest{Scope: "organization", Name: "org bot"})
	if org.Role != "ORGANIZATION_MEMBER" || org.ExpiresAt != nil {
		t.Fatalf("organization token defaults = role %s, expires %v", org.Role, org.ExpiresAt)
	}

	got, err := c.GetToken(ctx, ws.ID)
	if err != nil || got.Secret != "" || got.Name != "deploy bot" {
		t.Fatalf("show = %+v, %v (a read never carries the secret)", got, err)
	}

	up, err := c.UpdateToken(ctx, ws.ID, httpapi.UpdateRequest{Name: strp("deploy bot 2"), Description: strp("ships DAGs"), Role: strp("WORKSPACE_AUTHOR")})
	if err != nil || up.Name != "deploy bot 2" || up.Description != "ships DAGs" || up.Role != "WORKSPACE_AUTHOR" || up.Version != 2 {
		t.Fatalf("update = %+v, %v", up, err)
	}

	rot, err := c.RotateToken(ctx, ws.ID)
	if err != nil || rot.Secret == "" || rot.Secret == ws.Secret || rot.Role != "WORKSPACE_AUTHOR" || rot.Name != "deploy bot 2" || rot.RotatedAt == nil {
		t.Fatalf("rotate = %+v, %v", rot, err)
	}

	as, err := c.AssignToken(ctx, org.ID, "ws1", "WORKSPACE_OWNER")
	if err != nil || as.WorkspaceRoles["ws1"] != "WORKSPACE_OWNER" {
		t.Fatalf("assign = %+v, %v", as, err)
	}
	as, err = c.AssignToken(ctx, org.ID, "ws1", "WORKSPACE_MEMBER")
	if err != nil || as.WorkspaceRoles["ws1"] != "WORKSPACE_MEMBER" {
		t.Fatalf("assign again with another role = %+v, %v", as, err)
	}
	un, err := c.UnassignToken(ctx, org.ID, "ws1")
	if err != nil || len(un.WorkspaceRoles) != 0 {
		t.Fatalf("unassign = %+v, %v", un, err)
	}

	del, err := c.DeleteToken(ctx, dep.ID)
	if err != nil || del.Status != "deleted" {
		t.Fatalf("delete = %+v, %v", del, err)
	}
	_, err = c.RotateToken(ctx, dep.ID)
	var p *httpapi.Problem
	if !errors.As(err, &p) || p.Status != http.StatusConflict {
		t.Fatalf("rotate a deleted token: %v, want 409", err)
	}

	list, err := c.ListTokens(ctx)
	if err != nil || len(list.Tokens) != 4 {
		t.Fatalf("list = %d tokens, %v; want 4 (bootstrap + 3, deleted kept)", len(list.Tokens), err)
	}
	for _, tok := range list.Tokens {
		if tok.Secret != "" {
			t.Fatalf("list shows a secret for %s", tok.ID)
		}
	}
}

func TestRotatedAwayAndDeletedSecretsFailVerifyAndCannotCallTheAPI(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	ctx := ctxT(t)
	tok := h.create(httpapi.CreateRequest{Scope: "organization", Name: "admin 2", Role: "ORGANIZATION_OWNER"})
	old := tok.Secret
	if _, err := h.client(old).ListTokens(ctx); err != nil {
		t.Fatalf("fresh secret cannot call the API: %v", err)
	}
	rot, err := c.RotateToken(ctx, tok.ID)
	if err != nil {
		t.Fatal(err)
	}

	v, err := c.Verify(ctx, old)
	if err != nil || v.Valid || v.Status != "rotated" || !strings.Contains(v.Reason, "rotated") {
		t.Fatalf("verify old secret = %+v, %v; want invalid, rotated", v, err)
	}
	v, err = c.Verify(ctx, rot.Secret)
	if err != nil || !v.Valid || v.ID != tok.ID || v.Role != "ORGANIZATION_OWNER" {
		t.Fatalf("verify new secret = %+v, %v", v, err)
	}

	if _, err := c.DeleteToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	v, _ = c.Verify(ctx, rot.Secret)
	if v.Valid || v.Status != "deleted" {
		t.Fatalf("verify deleted token = %+v; want invalid, deleted", v)
	}
	v, _ = c.Verify(ctx, "tlo_notarealtoken")
	if v.Valid || v.Status != "malformed" {
		t.Fatalf("verify garbage = %+v; want malformed", v)
	}

	// The scheme is case-insensitive (RFC 9110); the secret is not.
	if status, _, _ := h.raw("GET", "/v1/tokens", "", nil, map[string]string{"Authorization": "bearer " + h.owner}); status != 200 {
		t.Fatalf("lower-case bearer scheme: %d", status)
	}
	// Every bad bearer gets the same 401, byte for byte.
	var bodies [][]byte
	for _, secret := range []string{old, rot.Secret, "tlo_notarealtoken", "", strings.Repeat("x", 60)} {
		status, hdr, body := h.raw("GET", "/v1/tokens", secret, nil, nil)
		if status != http.StatusUnauthorized || hdr.Get("WWW-Authenticate") == "" {
			t.Fatalf("bearer %q: status %d, want 401 with WWW-Authenticate", secret[:min(8, len(secret))], status)
		}
		bodies = append(bodies, body)
	}
	for _, b := range bodies[1:] {
		if !bytes.Equal(b, bodies[0]) {
			t.Fatalf("401 bodies differ:\n%s\n%s", bodies[0], b)
		}
	}
}

func TestBadInputIsRefusedWithTheFieldAndRuleAndWritesNothing(t *testing.T) {
	h := newHarness(t)
	orgTok := h.create(httpapi.CreateRequest{Scope: "organization", Name: "org bot"})
	wsTok := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "ws bot"})
	member := orgTok.Secret

	h.create(httpapi.CreateRequest{Scope: "organization", Name: "temp owner", Role: "ORGANIZATION_OWNER", ExpirationDays: intp(7)})
	globexOwner := h.ownerOf("globex")
	globexTok, err := h.client(globexOwner).CreateToken(ctxT(t), httpapi.CreateRequest{Scope: "organization", Name: "globex bot"}, "")
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name, method, path, body string
		secret                   string // "" = owner
		hdr                      map[string]string
		status                   int
		field                    string
	}{
		{"unknown role", "POST", "/v1/tokens", `{"scope":"organization","name":"a","role":"SUPERUSER"}`, "", nil, 400, "role"},
		{"role not fitting the scope", "POST", "/v1/tokens", `{"scope":"deployment","workspace_id":"w","deployment_id":"d","name":"a","role":"WORKSPACE_OWNER"}`, "", nil, 400, "role"},
		{"expiration 0", "POST", "/v1/tokens", `{"scope":"organization","name":"a","expiration_days":0}`, "", nil, 400, "expiration_days"},
		{"expiration 366", "POST", "/v1/tokens", `{"scope":"organization","name":"a","expiration_days":366}`, "", nil, 400, "expiration_days"},
		{"empty name", "POST", "/v1/tokens", `{"scope":"organization","name":"   "}`, "", nil, 400, "name"},
		{"oversized name", "POST", "/v1/tokens", `{"scope":"organization","name":"` + strings.Repeat("n", 101) + `"}`, "", nil, 400, "name"},
		{"control character in name", "POST", "/v1/tokens", `{"scope":"organization","name":"a\u0007b"}`, "", nil, 400, "name"},
		{"oversized description", "POST", "/v1/tokens", `{"scope":"organization","name":"a","description":"` + strings.Repeat("d", 1001) + `"}`, "", nil, 400, "description"},
		{"unknown scope", "POST", "/v1/tokens", `{"scope":"galaxy","name":"a"}`, "", nil, 400, "scope"},
		{"workspace token without workspace", "POST", "/v1/tokens", `{"scope":"workspace","name":"a"}`, "", nil, 400, "workspace_id"},
		{"malformed JSON", "POST", "/v1/tokens", `{"scope":"organization",`, "", nil, 400, "body"},
		{"not JSON at all", "POST", "/v1/tokens", `scope=organization`, "", nil, 400, "body"},
		{"empty body", "POST", "/v1/tokens", ``, "", nil, 400, "body"},
		{"unknown field", "POST", "/v1/tokens", `{"scope":"organization","name":"a","admin":true}`, "", nil, 400, "admin"},
		{"wrong type", "POST", "/v1/tokens", `{"scope":"organization","name":"a","expiration_days":"30"}`, "", nil, 400, "expiration_days"},
		{"fractional days", "POST", "/v1/tokens", `{"scope":"organization","name":"a","expiration_days":1.5}`, "", nil, 400, "expiration_days"},
		{"trailing data", "POST", "/v1/tokens", `{"scope":"organization","name":"a"}{"x":1}`, "", nil, 400, "body"},
		{"invalid UTF-8", "POST", "/v1/tokens", "{\"scope\":\"organization\",\"name\":\"a\xff\"}", "", nil, 400, "body"},
		{"body over 1 MiB", "POST", "/v1/tokens", `{"scope":"organization","name":"a","description":"` + strings.Repeat("d", 1<<20) + `"}`, "", nil, 413, "body"},
		{"not JSON content type", "POST", "/v1/tokens", `{"scope":"organization","name":"a"}`, "", map[string]string{"Content-Type": "text/plain"}, 415, "Content-Type"},
		{"other organization in body", "POST", "/v1/tokens", `{"organization_id":"globex","scope":"organization","name":"a"}`, "", nil, 403, "organization_id"},
		{"unknown token id", "PATCH", "/v1/tokens/tok_aaaaaaaaaaaaaaaaaaaaaaaaaa", `{"name":"b"}`, "", nil, 404, "token_id"},
		{"path trick in id", "POST", "/v1/tokens/..%2F..%2Fetc/rotate", ``, "", nil, 404, "token_id"},
		{"another organization's token", "POST", "/v1/tokens/" + globexTok.ID + "/rotate", ``, "", nil, 404, "token_id"},
		{"acme's token by another organization's owner", "DELETE", "/v1/tokens/" + orgTok.ID, ``, globexOwner, nil, 404, "token_id"},
		{"another organization's token, read", "GET", "/v1/tokens/" + globexTok.ID, ``, "", nil, 404, "token_id"},
		{"update with nothing to change", "PATCH", "/v1/tokens/" + wsTok.ID, `{}`, "", nil, 400, "name"},
		{"update to a role not fitting", "PATCH", "/v1/tokens/" + wsTok.ID, `{"role":"ORGANIZATION_OWNER"}`, "", nil, 400, "role"},
		{"assign a workspace token", "PUT", "/v1/tokens/" + wsTok.ID + "/workspaces/ws2", `{"role":"WORKSPACE_MEMBER"}`, "", nil, 400, "token_id"},
		{"assign an organization role", "PUT", "/v1/tokens/" + orgTok.ID + "/workspaces/ws2", `{"role":"ORGANIZATION_OWNER"}`, "", nil, 400, "role"},
		{"assign to a bad workspace id", "PUT", "/v1/tokens/" + orgTok.ID + "/workspaces/a.b", `{"role":"WORKSPACE_MEMBER"}`, "", nil, 400, "workspace_id"},
		{"unassign a workspace not assigned", "DELETE", "/v1/tokens/" + orgTok.ID + "/workspaces/ws9", ``, "", nil, 409, "workspace_id"},
		{"a member may not create", "POST", "/v1/tokens", `{"scope":"organization","name":"a"}`, member, nil, 403, "Authorization"},
		{"idempotency key with spaces", "POST", "/v1/tokens", `{"scope":"organization","name":"a"}`, "", map[string]string{"Idempotency-Key": "a b"}, 400, "idempotency_key"},
		{"bad min_sequence", "GET", "/v1/tokens?min_sequence=-1", ``, "", nil, 400, "min_sequence"},
		{"no such route", "POST", "/v1/tokens/x/explode", ``, "", nil, 404, "path"},
		{"wrong method", "PUT", "/v1/tokens", `{}`, "", nil, 405, "method"},
		{"verify without a token", "POST", "/v1/verify", `{}`, "", nil, 400, "token"},
		{"min_sequence beyond the stream", "GET", "/v1/tokens?min_sequence=999999", ``, "", nil, 400, "min_sequence"},
		{"delete the last owner", "DELETE", "/v1/tokens/" + h.ownerID, ``, "", nil, 409, "token_id"},
		{"demote the last owner", "PATCH", "/v1/tokens/" + h.ownerID, `{"role":"ORGANIZATION_MEMBER"}`, "", nil, 409, "token_id"},
		{"delete the last lasting owner while an expiring one remains", "DELETE", "/v1/tokens/" + h.ownerID, ``, "", nil, 409, "token_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.lastSeq()
			secret := tc.secret
			if secret == "" {
				secret = h.owner
			}
			hdr := map[string]string{"Content-Type": "application/json"}
			for k, v := range tc.hdr {
				hdr[k] = v
			}
			status, rh, body := h.raw(tc.method, tc.path, secret, strings.NewReader(tc.body), hdr)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			if ct := rh.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("Content-Type %q, want application/problem+json", ct)
			}
			p := decodeProblem(t, body)
			if p.Status != tc.status || p.Detail == "" {
				t.Fatalf("problem = %+v", p)
			}
			if tc.field != "" {
				found := false
				for _, fe := range p.Errors {
					found = found || (fe.Field == tc.field && fe.Rule != "")
				}
				if !found {
					t.Fatalf("problem does not name field %q with a rule: %s", tc.field, body)
				}
			}
			if after := h.lastSeq(); after != before {
				t.Fatalf("stream's last sequence moved from %d to %d", before, after)
			}
		})
	}
}

func TestOrganizationsSeeOnlyTheirOwnTokens(t *testing.T) {
	h := newHarness(t)
	acmeTok := h.create(httpapi.CreateRequest{Scope: "organization", Name: "acme bot"})
	globex := h.client(h.ownerOf("globex"))
	list, err := globex.ListTokens(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range list.Tokens {
		if tok.OrganizationID != "globex" {
			t.Fatalf("globex's list shows %s of %s", tok.ID, tok.OrganizationID)
		}
	}
	if len(list.Tokens) != 1 {
		t.Fatalf("globex sees %d tokens, want its own owner only", len(list.Tokens))
	}
	v, err := globex.Verify(ctxT(t), acmeTok.Secret)
	if err != nil || v.Valid || v.Status != "unknown" || v.ID != "" {
		t.Fatalf("globex verifying acme's secret = %+v, %v; want unknown and no id", v, err)
	}
}

func TestConcurrentRotationsOfOneTokenHaveOneWinner(t *testing.T) {
	h := newHarness(t)
	tok := h.create(httpapi.CreateRequest{Scope: "organization", Name: "hot"})
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	var wins []string
	conflicts := 0
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			r, err := h.client(h.owner).RotateToken(context.Background(), tok.ID)
			mu.Lock()
			defer mu.Unlock()
			var p *httpapi.Problem
			switch {
			case err == nil:
				wins = append(wins, r.Secret)
			case errors.As(err, &p) && p.Status == http.StatusConflict:
				conflicts++
			default:
				t.Errorf("rotate: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if len(wins)+conflicts != n || len(wins) < 1 {
		t.Fatalf("%d wins, %d conflicts of %d", len(wins), conflicts, n)
	}
	// Each win is its own version; only the newest secret verifies.
	got, _ := h.client(h.owner).GetToken(ctxT(t), tok.ID)
	if got.Version != uint64(1+len(wins)) {
		t.Fatalf("version %d after %d successful rotations", got.Version, len(wins))
	}
	valid := 0
	for _, s := range append(wins, tok.Secret) {
		if v, _ := h.client(h.owner).Verify(ctxT(t), s); v.Valid {
			valid++
		}
	}
	if valid != 1 {
		t.Fatalf("%d secrets verify, want exactly 1", valid)
	}
}

func TestARetriedCreateMakesOneTokenAndNeverAWrongSecret(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	req := httpapi.CreateRequest{Scope: "organization", Name: "retry me"}
	first, err := c.CreateToken(ctxT(t), req, "create-retry-me")
	if err != nil {
		t.Fatal(err)
	}
	seq := h.lastSeq()
	again, err := c.CreateToken(ctxT(t), req, "create-retry-me")
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != first.ID || again.Secret != "" || !again.IdempotentReplay {
		t.Fatalf("retry = id %s secret %q replay %v; want id %s, no secret, replay", again.ID, again.Secret, again.IdempotentReplay, first.ID)
	}
	if h.lastSeq() != seq {
		t.Fatal("a retried create wrote an event")
	}
	// The same key with other parameters is not a retry: refused, nothing written.
	_, err = c.CreateToken(ctxT(t), httpapi.CreateRequest{Scope: "organization", Name: "something else"}, "create-retry-me")
	var p *httpapi.Problem
	if !errors.As(err, &p) || p.Status != 400 || len(p.Errors) != 1 || p.Errors[0].Field != "idempotency_key" || h.lastSeq() != seq {
		t.Fatalf("key reused with another body: %v", err)
	}
	if v, _ := c.Verify(ctxT(t), first.Secret); !v.Valid || v.ID != first.ID {
		t.Fatalf("the first answer's secret does not verify: %+v", v)
	}
	// A retried rotate, after the token moved on, is answered without a secret.
	r1, err := c.RotateToken(ctxT(t), first.ID)
	if err != nil {
		t.Fatal(err)
	}
	status, _, body := h.raw("POST", "/v1/tokens/"+first.ID+"/rotate", h.owner, nil, map[string]string{"Idempotency-Key": "rot-1"})
	if status != 200 {
		t.Fatalf("keyed rotate: %d %s", status, body)
	}
	seq = h.lastSeq()
	status, _, body = h.raw("POST", "/v1/tokens/"+first.ID+"/rotate", h.owner, nil, map[string]string{"Idempotency-Key": "rot-1"})
	if status != 200 || bytes.Contains(body, []byte(`"token"`)) || !bytes.Contains(body, []byte(`"idempotent_replay":true`)) || h.lastSeq() != seq {
		t.Fatalf("retried rotate: %d %s", status, body)
	}
	_ = r1
	// A retried delete or unassign finds the token already changed, and is
	// still answered as the first attempt was.
	for _, call := range []struct{ method, path string }{
		{"PUT", "/v1/tokens/" + first.ID + "/workspaces/ws1"},
		{"DELETE", "/v1/tokens/" + first.ID + "/workspaces/ws1"},
		{"DELETE", "/v1/tokens/" + first.ID},
	} {
		key := map[string]string{"Idempotency-Key": call.method + call.path}
		body := `{"role":"WORKSPACE_MEMBER"}`
		if call.method == "DELETE" {
			body = ""
		}
		status, _, b := h.raw(call.method, call.path, h.owner, strings.NewReader(body), key)
		if status != 200 {
			t.Fatalf("%s %s: %d %s", call.method, call.path, status, b)
		}
		seq = h.lastSeq()
		status, _, b = h.raw(call.method, call.path, h.owner, strings.NewReader(body), key)
		if status != 200 || !bytes.Contains(b, []byte(`"idempotent_replay":true`)) || h.lastSeq() != seq {
			t.Fatalf("retried %s %s: %d %s", call.method, call.path, status, b)
		}
	}
	// The same key for another command is refused.
	status, _, body = h.raw("DELETE", "/v1/tokens/"+first.ID, h.owner, nil, map[string]string{"Idempotency-Key": "rot-1"})
	if status != 400 || !bytes.Contains(body, []byte("idempotency_key")) || h.lastSeq() != seq {
		t.Fatalf("key reused for delete: %d %s", status, body)
	}
}

func TestSecretsAppearInNoStoredByteAndNoLogLine(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	tok := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "secretive"})
	rot, err := c.RotateToken(ctxT(t), tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Use both secrets in every way a log or an event could catch them: as a
	// stale bearer, in a path, as a request id, in the user agent, as a method,
	// as an idempotency key.
	h.raw("GET", "/v1/tokens", tok.Secret, nil, nil)
	h.raw("GET", "/v1/tokens/"+rot.Secret, h.owner, nil, nil)
	h.raw("GET", "/v1/tokens/x"+rot.Secret[:30]+"/"+strings.Repeat("a", 190)+rot.Secret, h.owner, nil, nil)
	c.Verify(ctxT(t), rot.Secret)
	h.raw("POST", "/v1/tokens", h.owner, strings.NewReader(`{"scope":"organization","name":"n"}`),
		map[string]string{"X-Request-Id": rot.Secret, "User-Agent": "curl " + rot.Secret})
	h.raw(rot.Secret, "/v1/tokens", h.owner, nil, nil)
	if status, _, body := h.raw("POST", "/v1/tokens/"+tok.ID+"/rotate", h.owner, nil, map[string]string{"Idempotency-Key": rot.Secret}); status != 400 || !bytes.Contains(body, []byte("idempotency_key")) {
		t.Fatalf("a secret as idempotency key: %d %s", status, body)
	}

	secrets := []string{h.owner, tok.Secret, rot.Secret}
	for _, s := range secrets {
		if bytes.Contains(h.logs.Bytes(), []byte(s)) {
			t.Fatalf("server log contains a secret")
		}
	}
	// Every byte JetStream wrote: the stream's files under the store dir.
	storeDir := h.storeDir()
	n := 0
	err = filepath.Walk(storeDir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n += len(b)
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) || bytes.Contains(b, []byte(s[4:])) {
				t.Fatalf("stored file %s contains a secret", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 || !bytes.Contains(h.readAll(storeDir), []byte(tok.ID)) {
		t.Fatalf("searched %d bytes and did not find the token id: the search is not looking at the stream's files", n)
	}
}

func TestHealthAndTheAPIDescriptionNeedNoToken(t *testing.T) {
	h := newHarness(t)
	status, _, body := h.raw("GET", "/healthz", "", nil, nil)
	if status != 200 || !bytes.Contains(body, []byte(`"ok"`)) {
		t.Fatalf("healthz: %d %s", status, body)
	}
	status, hdr, body := h.raw("GET", "/openapi.yaml", "", nil, nil)
	if status != 200 || !bytes.HasPrefix(body, []byte("openapi: 3.")) || hdr.Get("Content-Type") != "application/yaml" {
		t.Fatalf("openapi.yaml: %d %s", status, hdr.Get("Content-Type"))
	}
	// Every route the server answers is described, with its methods.
	for path, methods := range map[string][]string{
		"/healthz":                {"get"},
		"/openapi.yaml":           {"get"},
		"/v1/tokens":              {"get", "post"},
		"/v1/tokens/{id}":         {"get", "patch", "delete"},
		"/v1/tokens/{id}/rotate":  {"post"},
		"/v1/tokens/{id}/history": {"get"},
		"/v1/roles":               {"get"},
		"/v1/tokens/{id}/workspaces/{workspace_id}": {"put", "delete"},
		"/v1/verify":           {"post"},
		"/v1/audit/export":     {"get"},
		"/v1/audit/public-key": {"get"},
	} {
		_, section, ok := strings.Cut(string(body), "\n  "+path+":\n")
		if !ok {
			t.Errorf("openapi.yaml does not describe %s", path)
			continue
		}
		if next := strings.Index(section, "\n  /"); next >= 0 {
			section = section[:next]
		}
		for _, m := range methods {
			if !strings.Contains(section, "\n    "+m+":\n") {
				t.Errorf("openapi.yaml does not describe %s %s", strings.ToUpper(m), path)
			}
		}
	}
}

func TestTheOnlyOwnerCannotBeDeletedOrDemoted(t *testing.T) {
	h := newHarness(t)
	before := h.lastSeq()
	for _, req := range []struct{ method, body string }{{"DELETE", ""}, {"PATCH", `{"role":"ORGANIZATION_MEMBER"}`}} {
		status, _, body := h.raw(req.method, "/v1/tokens/"+h.ownerID, h.owner, strings.NewReader(req.body), nil)
		p := decodeProblem(t, body)
		if status != http.StatusConflict || len(p.Errors) != 1 || p.Errors[0].Field != "token_id" {
			t.Fatalf("%s the only owner: %d %s", req.method, status, body)
		}
	}
	if h.lastSeq() != before {
		t.Fatal("a refused owner change was written")
	}
	// With a second owner that never expires, the first may go.
	h.create(httpapi.CreateRequest{Scope: "organization", Name: "owner 2", Role: "ORGANIZATION_OWNER"})
	if _, err := h.client(h.owner).DeleteToken(ctxT(t), h.ownerID); err != nil {
		t.Fatalf("delete with another owner left: %v", err)
	}
}

// A verify with min_sequence is answered by a view that has reached it: a
// service passing the sequence of a rotation it has seen gets an answer
// that knows of the rotation; a sequence the stream never reached is
// refused on its field.
func TestVerifyAfterASequence(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	c := h.client(h.owner)
	tok := h.create(httpapi.CreateRequest{Scope: "WORKSPACE", Name: "w", WorkspaceID: "w1"})
	rot, err := c.RotateToken(ctx, tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.VerifyAfter(ctx, tok.Secret, rot.Sequence)
	if err != nil || v.Valid || v.Status != "rotated" {
		t.Fatalf("the old secret after its rotation's sequence: %+v, %v", v, err)
	}
	_, err = c.VerifyAfter(ctx, rot.Secret, h.lastSeq()+1000)
	var p *httpapi.Problem
	if !errors.As(err, &p) || p.Status != 400 || !strings.Contains(p.Detail, "min_sequence") {
		t.Fatalf("a sequence beyond the stream: %v, want 400 on min_sequence", err)
	}
}
