package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

func ids(ts []httpapi.Token) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

func TestListFiltersReachTheLedgerThroughTheQuery(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	ctx := ctxT(t)
	org := h.create(httpapi.CreateRequest{Scope: "organization", Name: "org"})
	if _, err := c.AssignToken(ctx, org.ID, "w1", "WORKSPACE_AUTHOR"); err != nil {
		t.Fatal(err)
	}
	ws := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "ws", Role: "WORKSPACE_AUTHOR"})
	dep := h.create(httpapi.CreateRequest{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "dep"})
	short := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w2", Name: "short", ExpirationDays: intp(1)})
	gone := h.create(httpapi.CreateRequest{Scope: "deployment", WorkspaceID: "w2", DeploymentID: "d2", Name: "gone"})
	if _, err := c.DeleteToken(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	h.advance(25 * time.Hour) // short has expired by the ledger's clock

	for _, tc := range []struct {
		name string
		q    httpapi.TokenQuery
		want []string
	}{
		{"everything, deleted included", httpapi.TokenQuery{}, []string{h.ownerID, org.ID, ws.ID, dep.ID, short.ID, gone.ID}},
		{"scope", httpapi.TokenQuery{Scope: "deployment"}, []string{dep.ID, gone.ID}},
		{"workspace: all three kinds", httpapi.TokenQuery{WorkspaceID: "w1"}, []string{org.ID, ws.ID, dep.ID}},
		{"deployment", httpapi.TokenQuery{DeploymentID: "d1"}, []string{dep.ID}},
		{"role", httpapi.TokenQuery{Role: "workspace_author"}, []string{ws.ID}},
		{"role held in a workspace", httpapi.TokenQuery{WorkspaceID: "w1", Role: "WORKSPACE_AUTHOR"}, []string{org.ID, ws.ID}},
		{"expired", httpapi.TokenQuery{Status: "expired"}, []string{short.ID}},
		{"deleted", httpapi.TokenQuery{Status: "deleted"}, []string{gone.ID}},
		{"active in w2", httpapi.TokenQuery{WorkspaceID: "w2", Status: "active"}, []string{}},
		{"scope, workspace and status", httpapi.TokenQuery{Scope: "WORKSPACE", WorkspaceID: "w1", Status: "active"}, []string{ws.ID}},
	} {
		l, err := c.ListTokensWhere(ctx, tc.q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := ids(l.Tokens); !slices.Equal(got, tc.want) {
			t.Errorf("%s:\ngot  %v\nwant %v", tc.name, got, tc.want)
		}
		if l.Sequence != h.lastSeq() {
			t.Errorf("%s: sequence %d, want %d", tc.name, l.Sequence, h.lastSeq())
		}
	}
}

func TestEveryTokenAnswerListsAllItsRoles(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	ctx := ctxT(t)
	org := h.create(httpapi.CreateRequest{Scope: "organization", Name: "org", Role: "ORGANIZATION_BILLING_ADMIN"})
	ws := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "ws", Role: "WORKSPACE_OPERATOR"})
	dep := h.create(httpapi.CreateRequest{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "dep"})
	if _, err := c.AssignToken(ctx, org.ID, "w2", "WORKSPACE_MEMBER"); err != nil {
		t.Fatal(err)
	}
	assigned, err := c.AssignToken(ctx, org.ID, "w1", "WORKSPACE_OWNER")
	if err != nil {
		t.Fatal(err)
	}
	orgRoles := []httpapi.RoleGrant{
		{Level: "organization", ID: "acme", Role: "ORGANIZATION_BILLING_ADMIN"},
		{Level: "workspace", ID: "w1", Role: "WORKSPACE_OWNER"},
		{Level: "workspace", ID: "w2", Role: "WORKSPACE_MEMBER"},
	}
	wsRoles := []httpapi.RoleGrant{{Level: "workspace", ID: "w1", Role: "WORKSPACE_OPERATOR"}}
	depRoles := []httpapi.RoleGrant{{Level: "deployment", ID: "d1", Role: "DEPLOYMENT_ADMIN"}}
	if !slices.Equal(assigned.Roles, orgRoles) || !slices.Equal(ws.Roles, wsRoles) || !slices.Equal(dep.Roles, depRoles) {
		t.Fatalf("command answers' roles:\norg %v\nws  %v\ndep %v", assigned.Roles, ws.Roles, dep.Roles)
	}
	shown, err := c.GetToken(ctx, org.ID)
	if err != nil || !slices.Equal(shown.Roles, orgRoles) {
		t.Fatalf("show roles = %v, %v", shown.Roles, err)
	}
	list, err := c.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range list.Tokens {
		if len(tok.Roles) == 0 {
			t.Errorf("list: %s (%s) has no roles", tok.ID, tok.Name)
		}
	}
	// A token with no workspace role still answers an array, never null.
	_, _, body := h.raw("GET", "/v1/tokens/"+h.ownerID, h.owner, nil, nil)
	if !bytes.Contains(body, []byte(`"roles":[{"level":"organization","id":"acme","role":"ORGANIZATION_OWNER"}]`)) {
		t.Fatalf("bootstrap token: %s", body)
	}
}

func TestRolesAnswerWhoCanActInAWorkspaceOrADeployment(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	ctx := ctxT(t)
	org := h.create(httpapi.CreateRequest{Scope: "organization", Name: "a-org"})
	if _, err := c.AssignToken(ctx, org.ID, "w1", "WORKSPACE_OPERATOR"); err != nil {
		t.Fatal(err)
	}
	ws := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "b-ws", Role: "WORKSPACE_AUTHOR"})
	dep := h.create(httpapi.CreateRequest{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "c-dep"})
	gone := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "d-gone"})
	h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w2", Name: "elsewhere"})
	del, err := c.DeleteToken(ctx, gone.ID)
	if err != nil {
		t.Fatal(err)
	}

	status, _, body := h.raw("GET", "/v1/roles?workspace_id=w1&min_sequence="+jsonNumber(del.Sequence), h.owner, nil, nil)
	if status != 200 {
		t.Fatalf("roles in w1: %d %s", status, body)
	}
	var got struct {
		Holdings []map[string]any `json:"holdings"`
		Sequence uint64           `json:"sequence"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{"token_id": org.ID, "name": "a-org", "scope": "ORGANIZATION", "role": "WORKSPACE_OPERATOR", "how": "organization token assigned to the workspace", "workspace_id": "w1", "deployment_id": nil},
		{"token_id": ws.ID, "name": "b-ws", "scope": "WORKSPACE", "role": "WORKSPACE_AUTHOR", "how": "workspace token", "workspace_id": "w1", "deployment_id": nil},
		{"token_id": dep.ID, "name": "c-dep", "scope": "DEPLOYMENT", "role": "DEPLOYMENT_ADMIN", "how": "deployment token", "workspace_id": "w1", "deployment_id": "d1"},
	}
	if got.Sequence != del.Sequence || len(got.Holdings) != len(want) {
		t.Fatalf("roles in w1: %s", body)
	}
	for i := range want {
		if g, w := mustJSON(t, got.Holdings[i]), mustJSON(t, want[i]); g != w {
			t.Errorf("holding %d:\ngot  %s\nwant %s", i, g, w)
		}
	}

	d, err := c.Roles(ctx, "", "d1")
	if err != nil || len(d.Holdings) != 1 || d.Holdings[0].TokenID != dep.ID || d.Holdings[0].WorkspaceID != "w1" || *d.Holdings[0].DeploymentID != "d1" {
		t.Fatalf("roles in d1 = %+v, %v", d, err)
	}
	if none, err := c.Roles(ctx, "w9", ""); err != nil || none.Holdings == nil || len(none.Holdings) != 0 {
		t.Fatalf("roles in an empty workspace = %+v, %v; want an empty array", none, err)
	}
}

func jsonNumber(n uint64) string { b, _ := json.Marshal(n); return string(b) }

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHistoryShowsEveryEventOldestFirstAndNoHash(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	ctx := ctxT(t)
	ws := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "w1", Name: "ws", Role: "WORKSPACE_AUTHOR"})
	if _, err := c.UpdateToken(ctx, ws.ID, httpapi.UpdateRequest{Name: strp("ws 2"), Role: strp("WORKSPACE_OPERATOR")}); err != nil {
		t.Fatal(err)
	}
	rot, err := c.RotateToken(ctx, ws.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteToken(ctx, ws.ID); err != nil {
		t.Fatal(err)
	}

	status, _, body := h.raw("GET", "/v1/tokens/"+ws.ID+"/history", h.owner, nil, map[string]string{"X-Request-Id": "hist-1"})
	if status != 200 {
		t.Fatalf("history: %d %s", status, body)
	}
	// Neither the stored hashes nor their names appear anywhere in the answer.
	stored, err := h.store.Load(context.Background(), "acme", ws.ID)
	if err != nil || len(stored) != 4 {
		t.Fatalf("load: %d events, %v", len(stored), err)
	}
	hashes := []string{
		stored[0].Event.Data.(domain.CreatedData).SecretHash.String(),
		stored[2].Event.Data.(domain.RotatedData).SecretHash.String(),
		stored[2].Event.Data.(domain.RotatedData).PreviousSecretHash.String(),
	}
	for _, s := range append(hashes, "secret_hash", ws.Secret, rot.Secret) {
		if bytes.Contains(body, []byte(s)) {
			t.Fatalf("history answer contains %q:\n%s", s, body)
		}
	}

	var hist httpapi.History
	if err := json.Unmarshal(body, &hist); err != nil {
		t.Fatal(err)
	}
	wantTypes := []domain.EventType{domain.TokenCreated, domain.TokenUpdated, domain.TokenRotated, domain.TokenDeleted}
	if hist.TokenID != ws.ID || len(hist.Events) != len(wantTypes) || hist.Sequence != stored[3].Sequence {
		t.Fatalf("history = %s", body)
	}
	for i, e := range hist.Events {
		s := stored[i]
		if e.EventType != wantTypes[i] || e.Sequence != s.Sequence || e.EventID != s.Event.ID || e.Version != uint64(i+1) ||
			!e.OccurredAt.Equal(s.Event.OccurredAt) || e.ActorTokenID != h.ownerID || e.SourceIP != "127.0.0.1" || e.UserAgent != "ledger-cli" || e.RequestID == "" {
			t.Errorf("event %d = %+v", i, e)
		}
		if e.Data == nil {
			t.Errorf("event %d has no data object", i)
		}
	}
	created, updated, rotated := hist.Events[0].Data, hist.Events[1].Data, hist.Events[2].Data
	if created["name"] != "ws" || created["role"] != "WORKSPACE_AUTHOR" || created["workspace_id"] != "w1" || created["fingerprint"] != ws.Fingerprint {
		t.Errorf("created data = %v", created)
	}
	if updated["name"] != "ws 2" || updated["previous_name"] != "ws" || updated["role"] != "WORKSPACE_OPERATOR" || updated["previous_role"] != "WORKSPACE_AUTHOR" {
		t.Errorf("updated data = %v", updated)
	}
	if rotated["fingerprint"] != rot.Fingerprint || rotated["previous_fingerprint"] != ws.Fingerprint {
		t.Errorf("rotated data = %v", rotated)
	}
}

func TestShowAtATimeFoldsTheEventsUntilThen(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	ctx := ctxT(t)
	org := h.create(httpapi.CreateRequest{Scope: "organization", Name: "first"})
	h.advance(time.Hour)
	if _, err := c.UpdateToken(ctx, org.ID, httpapi.UpdateRequest{Name: strp("second"), Role: strp("ORGANIZATION_BILLING_ADMIN")}); err != nil {
		t.Fatal(err)
	}
	h.advance(time.Hour)
	up, err := c.UpdateToken(ctx, org.ID, httpapi.UpdateRequest{Name: strp("third")})
	if err != nil {
		t.Fatal(err)
	}
	h.advance(time.Hour)
	del, err := c.DeleteToken(ctx, org.ID)
	if err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) string { return org.CreatedAt.Add(d).Format(time.RFC3339Nano) }

	// Between the two updates: the name and role of the first.
	mid, err := c.GetTokenAt(ctx, org.ID, at(90*time.Minute))
	if err != nil || mid.Name != "second" || mid.Role != "ORGANIZATION_BILLING_ADMIN" || mid.Status != "active" || mid.Version != 2 ||
		!slices.Equal(mid.Roles, []httpapi.RoleGrant{{Level: "organization", ID: "acme", Role: "ORGANIZATION_BILLING_ADMIN"}}) {
		t.Fatalf("between the updates = %+v, %v", mid, err)
	}
	if mid.Sequence != up.Sequence-1 {
		t.Fatalf("sequence %d, want the first update's %d", mid.Sequence, up.Sequence-1)
	}
	// At creation exactly: the token as created.
	if first, err := c.GetTokenAt(ctx, org.ID, at(0)); err != nil || first.Name != "first" || first.Role != "ORGANIZATION_MEMBER" || first.Sequence != org.Sequence {
		t.Fatalf("at creation = %+v, %v", first, err)
	}
	// After the delete: deleted.
	after, err := c.GetTokenAt(ctx, org.ID, at(4*time.Hour))
	if err != nil || after.Status != "deleted" || after.Name != "third" || after.Sequence != del.Sequence {
		t.Fatalf("after delete = %+v, %v", after, err)
	}
	// Without at, show is what it was.
	if now, err := c.GetToken(ctx, org.ID); err != nil || now.Status != "deleted" || now.Sequence != del.Sequence {
		t.Fatalf("show = %+v, %v", now, err)
	}
}

func TestBadQueryValuesAreRefusedWithTheirField(t *testing.T) {
	h := newHarness(t)
	tok := h.create(httpapi.CreateRequest{Scope: "organization", Name: "x"})
	globexTok, err := h.client(h.ownerOf("globex")).CreateToken(ctxT(t), httpapi.CreateRequest{Scope: "organization", Name: "globex bot"}, "")
	if err != nil {
		t.Fatal(err)
	}
	before := tok.CreatedAt.Add(-time.Minute).Format(time.RFC3339)
	for _, tc := range []struct {
		name, path string
		status     int
		fields     []string
	}{
		{"unknown scope", "/v1/tokens?scope=galaxy", 400, []string{"scope"}},
		{"empty scope", "/v1/tokens?scope=", 400, []string{"scope"}},
		{"bad workspace id", "/v1/tokens?workspace_id=a.b", 400, []string{"workspace_id"}},
		{"empty workspace id", "/v1/tokens?workspace_id=", 400, []string{"workspace_id"}},
		{"bad deployment id", "/v1/tokens?deployment_id=" + url.QueryEscape("d d"), 400, []string{"deployment_id"}},
		{"unknown role", "/v1/tokens?role=SUPERUSER", 400, []string{"role"}},
		{"unknown status", "/v1/tokens?status=revoked", 400, []string{"status"}},
		{"every bad value at once", "/v1/tokens?scope=x&workspace_id=.&deployment_id=.&role=x&status=x", 400, []string{"scope", "workspace_id", "deployment_id", "role", "status"}},
		{"roles for nothing", "/v1/roles", 400, []string{"workspace_id", "deployment_id"}},
		{"roles for both", "/v1/roles?workspace_id=w1&deployment_id=d1", 400, []string{"workspace_id", "deployment_id"}},
		{"roles for a bad workspace id", "/v1/roles?workspace_id=a.b", 400, []string{"workspace_id"}},
		{"roles for a bad deployment id", "/v1/roles?deployment_id=", 400, []string{"deployment_id"}},
		{"roles with a bad min_sequence", "/v1/roles?workspace_id=w1&min_sequence=x", 400, []string{"min_sequence"}},
		{"at that is not a time", "/v1/tokens/" + tok.ID + "?at=yesterday", 400, []string{"at"}},
		{"at without a zone", "/v1/tokens/" + tok.ID + "?at=2026-01-02T15:04:05", 400, []string{"at"}},
		{"empty at", "/v1/tokens/" + tok.ID + "?at=", 400, []string{"at"}},
		{"at before the token existed", "/v1/tokens/" + tok.ID + "?at=" + url.QueryEscape(before), 404, []string{"at"}},
		{"at for an unknown token", "/v1/tokens/tok_aaaaaaaaaaaaaaaaaaaaaaaaaa?at=" + url.QueryEscape(before), 404, []string{"token_id"}},
		{"history of an unknown token", "/v1/tokens/tok_aaaaaaaaaaaaaaaaaaaaaaaaaa/history", 404, []string{"token_id"}},
		{"history of another organization's token", "/v1/tokens/" + globexTok.ID + "/history", 404, []string{"token_id"}},
		{"another organization's token at a time", "/v1/tokens/" + globexTok.ID + "?at=" + url.QueryEscape(time.Now().Format(time.RFC3339)), 404, []string{"token_id"}},
		{"history, wrong method", "/v1/tokens/" + tok.ID + "/history", 405, []string{"method"}},
		{"roles, wrong method", "/v1/roles", 405, []string{"method"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			last := h.lastSeq()
			method := "GET"
			if tc.status == 405 {
				method = "POST"
			}
			status, hdr, body := h.raw(method, tc.path, h.owner, nil, nil)
			if status != tc.status || hdr.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("status %d (%s), want %d: %s", status, hdr.Get("Content-Type"), tc.status, body)
			}
			p := decodeProblem(t, body)
			for _, f := range tc.fields {
				if !slices.ContainsFunc(p.Errors, func(fe domain.FieldError) bool { return fe.Field == f && fe.Rule != "" }) {
					t.Errorf("problem does not name %q with a rule: %s", f, body)
				}
			}
			if h.lastSeq() != last {
				t.Fatal("a refused read moved the stream's last sequence")
			}
		})
	}
	// A deployment token reads its own token only: another's history and
	// past states are refused with the rule, lists and roles leave the rest
	// out.
	dep := h.create(httpapi.CreateRequest{Scope: "deployment", Name: "deployer", WorkspaceID: "w1", DeploymentID: "d1"})
	for _, path := range []string{"/v1/tokens/" + tok.ID + "/history", "/v1/tokens/" + tok.ID + "?at=" + url.QueryEscape(time.Now().Format(time.RFC3339))} {
		if status, _, body := h.raw("GET", path, dep.Secret, nil, nil); status != 403 || !strings.Contains(string(body), "token_id") {
			t.Errorf("deployment token GET %s: %d %s", path, status, body)
		}
	}
	for _, path := range []string{"/v1/roles?deployment_id=d1", "/v1/tokens?status=active"} {
		status, _, body := h.raw("GET", path, dep.Secret, nil, nil)
		if status != 200 || strings.Contains(string(body), tok.ID) || !strings.Contains(string(body), dep.ID) {
			t.Errorf("deployment token GET %s: %d %s, want itself and nothing else", path, status, body)
		}
	}
}
