package console_test

import (
	"archive/zip"
	"bytes"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/console"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/httpapi"
)

func cookieOf(v visit, name string) *http.Cookie {
	for _, c := range (&http.Response{Header: v.header}).Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func TestSignInGivesAnHttpOnlyStrictSessionCookieThatHoldsNoSecret(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"http", false}, {"https", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []harnessOption
			if tc.tls {
				opts = append(opts, overTLS())
			}
			h := newHarness(t, opts...)
			b := h.browser()
			page := b.get("/console/sign-in")
			if c := cookieOf(page, "tl_signin"); c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure != tc.tls {
				t.Fatalf("sign-in form's CSRF cookie: %+v; want HttpOnly, SameSite=Strict, Secure only over TLS", c)
			}
			b.submit("/console/sign-in", url.Values{"token": {h.owner}})
			var c *http.Cookie
			for _, v := range b.visits {
				if v.method == http.MethodPost {
					c = cookieOf(v, "tl_session")
				}
			}
			if c == nil {
				t.Fatal("no tl_session cookie was set by the sign-in")
			}
			if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/console" || c.Secure != tc.tls || c.MaxAge != 0 {
				t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/console, Secure only over TLS, no lifetime of its own", c)
			}
			hash := domain.Hash(h.owner).String()
			if strings.Contains(c.Value, h.owner) || strings.Contains(c.Value, hash) || len(c.Value) < 43 {
				t.Errorf("session cookie value %q: want 256 random bits, neither the secret nor its hash", c.Value)
			}
		})
	}
}

func TestAFormPostedWithoutItsCSRFValueOrFromAnotherSiteIsRefusedAndChangesNothing(t *testing.T) {
	h := newHarness(t)
	other := h.browser()
	other.signIn(h.owner)
	otherCSRF := other.csrf()

	b := h.browser()
	b.signIn(h.owner)
	b.get("/console/tokens/new?scope=workspace")
	form := url.Values{"scope": {"workspace"}, "name": {"ci"}, "workspace_id": {"analytics"}, "role": {"WORKSPACE_MEMBER"},
		"expires": {"never"}, "idempotency_key": {b.key()}}
	mine := b.csrf()
	before := h.lastSeq()
	for _, tc := range []struct {
		name   string
		csrf   string
		header map[string]string
	}{
		{"without the CSRF value", "", nil},
		{"with another session's CSRF value", otherCSRF, nil},
		{"from another site", mine, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}},
		{"from another origin, by a browser without Sec-Fetch-Site", mine, map[string]string{"Origin": "https://evil.example"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := maps.Clone(form)
			if tc.csrf != "" {
				f.Set("csrf", tc.csrf)
			}
			v := b.do(http.MethodPost, "/console/tokens", f, tc.header)
			if v.status != http.StatusForbidden || !strings.Contains(v.body, "CSRF check failed") {
				t.Errorf("answer %d, want 403 naming the CSRF check:\n%s", v.status, v.body)
			}
			if got := h.lastSeq(); got != before {
				t.Errorf("the stream moved from %d to %d: a refused form wrote something", before, got)
			}
		})
	}
	// Signing out is a form too: another site cannot sign a person out.
	if v := b.do(http.MethodPost, "/console/sign-out", url.Values{}, nil); v.status != http.StatusForbidden {
		t.Errorf("sign-out without the CSRF value: %d, want 403", v.status)
	}
	// The same form with its value goes through: the refusals were the
	// CSRF check's.
	form.Set("csrf", mine)
	if v := b.do(http.MethodPost, "/console/tokens", form, nil); v.status != http.StatusOK || !strings.Contains(v.body, `id="secret"`) {
		t.Fatalf("the form with its CSRF value: %d\n%s", v.status, v.body)
	}

	t.Run("sign-in", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			csrf   func(*browser) string
			header map[string]string
		}{
			{"without the form's value", func(*browser) string { return "" }, nil},
			{"with a value that is not its cookie's", func(*browser) string { return otherCSRF }, nil},
			{"from another site", (*browser).csrf, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}},
		} {
			fresh := h.browser()
			fresh.get("/console/sign-in")
			v := fresh.do(http.MethodPost, "/console/sign-in", url.Values{"token": {h.owner}, "csrf": {tc.csrf(fresh)}}, tc.header)
			if v.status != http.StatusForbidden || cookieOf(v, "tl_session") != nil {
				t.Errorf("%s: %d, session cookie %v; want 403 and no session", tc.name, v.status, cookieOf(v, "tl_session"))
			}
		}
	})
}

var secretLike = regexp.MustCompile(`tl[owd]_[0-9A-Za-z]{20,}`)

// TestTheOneTimeConfirmationIsTheOnlyPageThatShowsASecret drives every
// page and form over HTTP, and then searches every page, address and
// download for every secret issued and its hash.
func TestTheOneTimeConfirmationIsTheOnlyPageThatShowsASecret(t *testing.T) {
	h := newHarness(t)
	b := h.browser()
	b.signIn(h.owner)
	confirmations := map[int]string{} // visit index -> the secret it may show
	confirm := func(v visit) string {
		s := secretOn(t, v)
		confirmations[len(b.visits)-1] = s
		return s
	}

	b.get("/console/tokens/new")
	b.get("/console/tokens/new?scope=workspace")
	create := url.Values{"scope": {"workspace"}, "name": {"etl"}, "description": {"nightly loads"}, "workspace_id": {"analytics"},
		"role": {"WORKSPACE_OPERATOR"}, "expires": {"days"}, "expiration_days": {"90"}, "idempotency_key": {b.key()}}
	etlSecret := confirm(b.submit("/console/tokens", create))
	if !h.verifies(etlSecret) {
		t.Fatal("the secret the confirmation showed does not verify")
	}
	// The same form sent again (a double click, a reload) creates nothing
	// and cannot show the secret again.
	seq := h.lastSeq()
	if v := b.submit("/console/tokens", create); !strings.Contains(v.body, `id="replayed"`) || h.lastSeq() != seq {
		t.Fatalf("a resent create form: want the replay notice and nothing written:\n%s", v.body)
	}

	b.get("/console/")
	etl := b.tokenIDNamed("etl")
	b.get("/console/tokens/" + etl)
	b.get("/console/tokens/" + etl + "/edit")
	v := b.submit("/console/tokens/"+etl+"/edit", url.Values{"name": {"etl-main"}, "description": {"nightly loads"},
		"role": {"WORKSPACE_AUTHOR"}, "version": {"1"}})
	if !strings.Contains(v.body, "Saved changes to etl-main.") || !strings.Contains(v.body, "WORKSPACE_AUTHOR") {
		t.Fatalf("edit did not land on the details with the change:\n%s", v.body)
	}
	b.get("/console/tokens/" + etl + "/rotate")
	rotated := confirm(b.submit("/console/tokens/"+etl+"/rotate", url.Values{"idempotency_key": {b.key()}}))
	if h.verifies(etlSecret) || !h.verifies(rotated) {
		t.Fatal("after the rotation the old secret must fail and the new one verify")
	}

	b.get("/console/tokens/new?scope=organization")
	ciSecret := confirm(b.submit("/console/tokens", url.Values{"scope": {"organization"}, "name": {"ci"}, "role": {"ORGANIZATION_MEMBER"},
		"expires": {"never"}, "idempotency_key": {b.key()}}))
	b.get("/console/")
	ci := b.tokenIDNamed("ci")
	b.get("/console/tokens/" + ci)
	b.submit("/console/tokens/"+ci+"/workspaces", url.Values{"form": {"add"}, "workspace_id": {"analytics"}, "role": {"WORKSPACE_AUTHOR"}})
	b.submit("/console/tokens/"+ci+"/workspaces", url.Values{"form": {"change"}, "workspace_id": {"analytics"}, "role": {"WORKSPACE_OPERATOR"}})
	tok, _, err := h.ledger.GetToken(ctxT(t), h.caller(h.owner), ci, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := tok.WorkspaceRole("analytics"); r != domain.RoleWorkspaceOperator {
		t.Fatalf("ci's role in analytics after add and change: %q, want WORKSPACE_OPERATOR", r)
	}
	b.submit("/console/tokens/"+ci+"/workspaces/analytics/remove", url.Values{})
	b.get("/console/assign?token=" + ci)

	b.get("/console/audit")
	download := b.submit("/console/audit", url.Values{"period": {"24h"}, "format": {"jsonl"},
		"type": {"TokenCreated", "TokenUpdated", "TokenRotated", "TokenAssigned", "TokenUnassigned", "TokenDeleted", "TokenReuseDetected"}})
	rep := verifyDownload(t, h, []byte(download.body))
	if rep.Rows < 7 {
		t.Errorf("the export has %d rows, want every event so far (at least 7)", rep.Rows)
	}

	b.get("/console/tokens/" + etl + "/delete")
	v = b.submit("/console/tokens/"+etl+"/delete", url.Values{"confirm": {"Delete"}})
	if !strings.Contains(v.body, "Deleted API token etl-main.") || h.verifies(rotated) {
		t.Fatalf("delete with the typed confirmation did not delete:\n%s", v.body)
	}
	b.get("/console/?scope=workspace&status=deleted&workspace_id=analytics&role=WORKSPACE_AUTHOR")
	b.get("/console/tokens/" + etl)
	b.get("/console/tokens/" + h.ownerID)
	b.submit("/console/sign-out", url.Values{})

	secrets := []string{h.owner, etlSecret, rotated, ciSecret}
	zips := 0
	for i, v := range b.visits {
		if strings.HasPrefix(v.body, "PK\x03\x04") {
			// The audit download: what counts is what it unpacks to.
			v.body = unzipped(t, v.body)
			zips++
		}
		for _, s := range secrets {
			hash := domain.Hash(s).String()
			for what, text := range map[string]string{"address": v.url, "Location": v.header.Get("Location"), "headers": strings.Join(slices.Collect(maps.Keys(v.header)), " ") + headerValues(v.header)} {
				if strings.Contains(text, s) || strings.Contains(text, hash) {
					t.Errorf("the %s of %s %s holds a secret or its hash", what, v.method, v.url)
				}
			}
			if strings.Contains(v.body, hash) {
				t.Errorf("the page %s %s holds a secret's hash", v.method, v.url)
			}
			if strings.Contains(v.body, s) && confirmations[i] != s {
				t.Errorf("the page %s %s (%d) shows a secret that is not its own confirmation's", v.method, v.url, v.status)
			}
		}
		if _, ok := confirmations[i]; !ok && secretLike.MatchString(v.body) {
			t.Errorf("the page %s %s holds something shaped like a secret: %s", v.method, v.url, secretLike.FindString(v.body))
		}
	}
	if zips != 1 {
		t.Errorf("searched %d audit downloads, want the one made", zips)
	}
	if len(confirmations) != 3 {
		t.Errorf("%d confirmation pages, want 3 (two creates and a rotation)", len(confirmations))
	}
}

func headerValues(h http.Header) string {
	var b strings.Builder
	for _, vs := range h {
		for _, v := range vs {
			b.WriteString(v + " ")
		}
	}
	return b.String()
}

// verifyDownload unzips an audit download and verifies it as `ledger audit
// verify FILE` does: FILE beside FILE.manifest.json.
// unzipped is every entry of the zip in body, one after the other.
func unzipped(t *testing.T, body string) string {
	t.Helper()
	zr, err := zip.NewReader(strings.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatalf("not a zip: %v", err)
	}
	var all strings.Builder
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
	}
	return all.String()
}

func verifyDownload(t *testing.T, h *harness, data []byte) exporters.Report {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("the audit download is not a zip: %v", err)
	}
	dir := t.TempDir()
	var file string
	for _, f := range zr.File {
		if f.Name != filepath.Base(f.Name) {
			t.Fatalf("zip entry %q: want a plain file name", f.Name)
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.Name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(f.Name, ".manifest.json") {
			file = filepath.Join(dir, f.Name)
		}
	}
	if len(zr.File) != 2 || file == "" {
		t.Fatalf("the zip holds %d entries, want the export and its manifest", len(zr.File))
	}
	rep, err := exporters.VerifyFiles(file, file+".manifest.json", h.ledger.AuditPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("the downloaded export does not verify: %v", rep.Err())
	}
	return rep
}

// Both session stores: the shared bucket (what `ledger serve` uses) and
// the console's memory (one process).
func TestASessionEndsAtItsNextRequestOnceItsTokenIsRotatedDeletedOrIdle(t *testing.T) {
	for name, opts := range map[string][]harnessOption{"shared": nil, "in memory": {inMemorySessions()}} {
		t.Run(name, func(t *testing.T) {
			sessionEnds(t, opts...)
		})
	}
}

func sessionEnds(t *testing.T, opts ...harnessOption) {
	h := newHarness(t, opts...)
	for _, tc := range []struct {
		name string
		end  func(id string)
	}{
		{"rotated", func(id string) {
			if _, err := h.ledger.RotateToken(ctxT(t), h.caller(h.owner), id, ""); err != nil {
				t.Fatal(err)
			}
		}},
		{"deleted", func(id string) {
			if _, err := h.ledger.DeleteToken(ctxT(t), h.caller(h.owner), id, ""); err != nil {
				t.Fatal(err)
			}
		}},
		{"idle for an hour", func(string) { h.clock.advance(console.DefaultIdle) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, secret := h.create(domain.CreateToken{Scope: "workspace", WorkspaceID: "analytics", Name: "owner-" + strings.ReplaceAll(tc.name, " ", "-"), Role: "WORKSPACE_OWNER"})
			b := h.browser()
			b.signIn(secret)
			if v := b.get("/console/tokens/" + tok.ID()); v.status != http.StatusOK {
				t.Fatalf("before: %d", v.status)
			}
			cookie := b.sessionCookie()
			tc.end(tok.ID())
			// The first request is told why; the browser's cookie is gone
			// after it, and the server's session with it.
			if v := b.get("/console/"); !strings.HasSuffix(v.url, "/console/sign-in?m=ended") || !strings.Contains(v.body, "Your session has ended") {
				t.Errorf("after the token was %s: landed on %s, want the sign-in page saying the session ended", tc.name, v.url)
			}
			b.client.Jar.SetCookies(b.last.req(), []*http.Cookie{cookie})
			if v := b.get("/console/tokens/" + tok.ID()); !strings.Contains(v.url, "/console/sign-in") || strings.Contains(v.body, tok.ID()) {
				t.Errorf("the old session cookie sent again after the token was %s: landed on %s, want the sign-in page", tc.name, v.url)
			}
			// Nor can it post a form: the session is gone, not just hidden.
			v := b.do(http.MethodPost, "/console/tokens", url.Values{"scope": {"workspace"}, "name": {"x"}, "workspace_id": {"analytics"}}, nil)
			if !strings.Contains(v.url, "/console/sign-in") {
				t.Errorf("a form after the token was %s: landed on %s", tc.name, v.url)
			}
		})
	}
}

func TestRotatingTheTokenYouAreSignedInWithShowsItsSecretAndEndsTheSession(t *testing.T) {
	h := newHarness(t)
	tok, secret := h.create(domain.CreateToken{Scope: "workspace", WorkspaceID: "analytics", Name: "me", Role: "WORKSPACE_OWNER"})
	b := h.browser()
	b.signIn(secret)
	b.get("/console/tokens/" + tok.ID() + "/rotate")
	v := b.submit("/console/tokens/"+tok.ID()+"/rotate", url.Values{"idempotency_key": {b.key()}})
	fresh := secretOn(t, v)
	if !h.verifies(fresh) || h.verifies(secret) || !strings.Contains(v.body, "your session has ended") {
		t.Fatalf("want the new secret shown, working, the old one refused and the session's end said:\n%s", v.body)
	}
	if v := b.get("/console/"); !strings.Contains(v.url, "/console/sign-in") {
		t.Errorf("after rotating its own token the session still works: %s", v.url)
	}
	b.signIn(fresh)
}

func TestEveryPageCarriesAStrictContentSecurityPolicyAndNoInlineCode(t *testing.T) {
	h := newHarness(t)
	org, _ := h.create(domain.CreateToken{Scope: "organization", Name: "ci"})
	b := h.browser()
	b.get("/console/sign-in")
	b.signIn(h.owner)
	for _, p := range []string{"/console/", "/console/tokens/new", "/console/tokens/new?scope=deployment", "/console/tokens/" + org.ID(),
		"/console/tokens/" + org.ID() + "/edit", "/console/tokens/" + org.ID() + "/rotate", "/console/tokens/" + org.ID() + "/delete",
		"/console/assign", "/console/audit", "/console/no-such-page", "/console/tokens/tok_aaaaaaaaaaaaaaaaaaaaaaaaaa"} {
		b.get(p)
	}
	inline := regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>\s*[^<\s]|<script>|<style|\sstyle=|\son[a-z]+=|javascript:`)
	for _, v := range b.visits {
		if v.status >= 300 && v.status < 400 {
			continue
		}
		if got := v.header.Get("Content-Security-Policy"); got != console.ContentSecurityPolicy {
			t.Errorf("%s: Content-Security-Policy %q, want %q", v.url, got, console.ContentSecurityPolicy)
		}
		if got := v.header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", v.url, got)
		}
		if m := inline.FindString(v.body); m != "" {
			t.Errorf("%s has inline code or style, which the policy would block: %q", v.url, m)
		}
	}
	for path, typ := range map[string]string{"/console/static/console.js": "text/javascript", "/console/static/console.css": "text/css"} {
		if v := b.get(path); v.status != http.StatusOK || !strings.HasPrefix(v.header.Get("Content-Type"), typ) {
			t.Errorf("%s: %d %s", path, v.status, v.header.Get("Content-Type"))
		}
	}
	if v := b.get("/"); !strings.HasSuffix(v.url, "/console/") || v.status != http.StatusOK {
		t.Errorf("/ landed on %s (%d), want the console", v.url, v.status)
	}
}

func TestWhatATokenMayDoDecidesWhichActionsShow(t *testing.T) {
	h := newHarness(t)
	h.create(domain.CreateToken{Scope: "workspace", WorkspaceID: "analytics", Name: "etl", Role: "WORKSPACE_AUTHOR"})
	_, member := h.create(domain.CreateToken{Scope: "workspace", WorkspaceID: "analytics", Name: "viewer", Role: "WORKSPACE_MEMBER"})
	_, owner := h.create(domain.CreateToken{Scope: "workspace", WorkspaceID: "analytics", Name: "lead", Role: "WORKSPACE_OWNER"})

	t.Run("a workspace member", func(t *testing.T) {
		b := h.browser()
		b.signIn(member)
		v := b.last
		if !strings.Contains(v.body, `data-name="etl"`) {
			t.Fatalf("a member reads its workspace's tokens; the table:\n%s", v.body)
		}
		for _, want := range []string{"+ API Token", "/console/tokens/new", `class="edit"`, `class="rotate"`, `class="delete`, "/console/audit"} {
			if strings.Contains(v.body, want) {
				t.Errorf("a WORKSPACE_MEMBER's table offers %q", want)
			}
		}
		if v := b.get("/console/tokens/new"); v.status != http.StatusForbidden {
			t.Errorf("a member opening the create page: %d, want 403", v.status)
		}
	})
	t.Run("a workspace owner", func(t *testing.T) {
		b := h.browser()
		b.signIn(owner)
		v := b.last
		for _, want := range []string{"+ API Token", `class="edit"`, `class="rotate"`, `class="delete`} {
			if !strings.Contains(v.body, want) {
				t.Errorf("a WORKSPACE_OWNER's table lacks %q", want)
			}
		}
		if strings.Contains(v.body, `id="add-org-token"`) || strings.Contains(v.body, "/console/audit") {
			t.Error("a WORKSPACE_OWNER is offered what only an ORGANIZATION_OWNER may do")
		}
		v = b.get("/console/tokens/new?scope=workspace")
		if strings.Contains(v.body, "ORGANIZATION_") || !strings.Contains(v.body, `value="WORKSPACE_OWNER"`) || !strings.Contains(v.body, "readonly") {
			t.Errorf("a WORKSPACE_OWNER's create form: want workspace roles only and its own workspace fixed:\n%s", v.body)
		}
		if v := b.get("/console/tokens/new"); strings.Contains(v.body, "choose-organization") {
			t.Error("a WORKSPACE_OWNER is offered to create an organization token")
		}
	})
}

func TestRefusalsShowBesideTheFieldTheyConcernAndWriteNothing(t *testing.T) {
	h := newHarness(t)
	_, operator := h.create(domain.CreateToken{Scope: "workspace", WorkspaceID: "analytics", Name: "ops", Role: "WORKSPACE_OPERATOR"})
	b := h.browser()
	b.signIn(h.owner)
	before := h.lastSeq()

	b.get("/console/tokens/new?scope=deployment")
	v := b.submit("/console/tokens", url.Values{"scope": {"deployment"}, "name": {"   "}, "workspace_id": {"bad id!"}, "deployment_id": {"etl-prod"},
		"role": {"DEPLOYMENT_ADMIN"}, "expires": {"days"}, "expiration_days": {"366"}, "idempotency_key": {b.key()}})
	if v.status != http.StatusBadRequest {
		t.Errorf("status %d, want 400", v.status)
	}
	for id, want := range map[string]string{"name": "1-100 characters", "workspace_id": "letters, digits", "expiration_days": "from 1 to 365"} {
		if errs := errorsBeside(t, v.body, id); len(errs) != 1 || !strings.Contains(errs[0], want) {
			t.Errorf("beside %s: %q, want one message saying %q", id, errs, want)
		}
	}
	if errs := errorsBeside(t, v.body, "deployment_id"); len(errs) != 0 {
		t.Errorf("beside deployment_id, which was fine: %q", errs)
	}
	if !strings.Contains(v.body, `value="etl-prod"`) {
		t.Error("the form came back without what was typed into it")
	}

	b.get("/console/")
	ops := b.tokenIDNamed("ops")
	b.get("/console/tokens/" + ops + "/delete")
	v = b.submit("/console/tokens/"+ops+"/delete", url.Values{"confirm": {"delete"}})
	if errs := errorsBeside(t, v.body, "confirm"); len(errs) != 1 || !strings.Contains(errs[0], "Type Delete") {
		t.Errorf("a deletion confirmed with %q: %q beside the field", "delete", errs)
	}

	// A WORKSPACE_OPERATOR may create deployment tokens, but the ledger
	// refuses it a workspace token: the rule shows at the scope's field.
	ob := h.browser()
	ob.signIn(operator)
	ob.get("/console/tokens/new?scope=deployment")
	v = ob.submit("/console/tokens", url.Values{"scope": {"workspace"}, "name": {"sneaky"}, "workspace_id": {"analytics"},
		"role": {"WORKSPACE_MEMBER"}, "expires": {"never"}, "idempotency_key": {ob.key()}})
	if v.status != http.StatusForbidden || !strings.Contains(v.body, "deployment tokens of workspace analytics only") {
		t.Errorf("an operator creating a workspace token: %d\n%s", v.status, v.body)
	}
	if !strings.Contains(h.logs.String(), "msg=forbidden") {
		t.Error("the refusal was not logged as the API logs its 403s")
	}
	if got := h.lastSeq(); got != before {
		t.Errorf("refused forms moved the stream from %d to %d", before, got)
	}
}

func TestSignInFailuresLookAlikeAndShareTheAPIsFailureLimit(t *testing.T) {
	h := newHarness(t, withServerOptions(httpapi.WithFailureLimit(4, time.Hour)))
	gone, goneSecret := h.create(domain.CreateToken{Scope: "organization", Name: "gone"})
	if _, err := h.ledger.DeleteToken(ctxT(t), h.caller(h.owner), gone.ID(), ""); err != nil {
		t.Fatal(err)
	}
	rotated, oldSecret := h.create(domain.CreateToken{Scope: "organization", Name: "rotated"})
	if _, err := h.ledger.RotateToken(ctxT(t), h.caller(h.owner), rotated.ID(), ""); err != nil {
		t.Fatal(err)
	}
	unknown, _ := domain.NewSecret(domain.ScopeOrganization, strings.NewReader(strings.Repeat("x", 64)))

	b := h.browser()
	b.get("/console/sign-in")
	var first string
	for name, secret := range map[string]string{"malformed": "hello", "unknown": unknown.Reveal(), "rotated away": oldSecret, "deleted": goneSecret} {
		v := b.submit("/console/sign-in", url.Values{"token": {secret}})
		if v.status != http.StatusUnauthorized || cookieOf(v, "tl_session") != nil {
			t.Errorf("%s secret: %d, want 401 and no session", name, v.status)
		}
		if strings.Contains(v.body, secret) {
			t.Errorf("the %s secret is echoed back", name)
		}
		if first == "" {
			first = v.body
		} else if v.body != first {
			t.Errorf("the %s secret's page differs from the others': a guesser could tell them apart", name)
		}
	}
	// The budget (4) is spent: the owner's valid secret is refused before
	// it is looked at, in the console and over the API alike.
	v := b.submit("/console/sign-in", url.Values{"token": {h.owner}})
	if v.status != http.StatusTooManyRequests || !strings.Contains(v.body, "Too many failed sign-ins") || cookieOf(v, "tl_session") != nil {
		t.Errorf("a valid secret after the budget is spent: %d\n%s", v.status, v.body)
	}
	req, _ := http.NewRequest(http.MethodGet, h.srv.URL+"/v1/tokens", nil)
	req.Header.Set("Authorization", "Bearer "+h.owner)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("the API after the console's failed sign-ins: %d, want 429 (one budget per source)", resp.StatusCode)
	}
}

// Browsers send a textarea's line breaks as CRLF. A multi-line description
// must be stored with the newlines the person typed, and a token whose
// description has newlines must stay editable (an unchanged description is
// not a change); an edit form without the version it was opened at changes
// nothing.
func TestMultiLineDescriptionsSurviveTheForms(t *testing.T) {
	h := newHarness(t)
	b := h.browser()
	b.signIn(h.owner)
	b.get("/console/tokens/new?scope=workspace")
	v := b.submit("/console/tokens", url.Values{"scope": {"workspace"}, "name": {"multi"}, "description": {"line one\r\nline two"},
		"workspace_id": {"analytics"}, "role": {"WORKSPACE_MEMBER"}, "expires": {"never"}, "idempotency_key": {b.key()}})
	secretOn(t, v)
	b.get("/console/")
	id := b.tokenIDNamed("multi")
	tok, _, err := h.ledger.GetToken(ctxT(t), h.caller(h.owner), id, 0)
	if err != nil || tok.Description() != "line one\nline two" {
		t.Fatalf("stored description %q (%v), want the two lines joined by a newline", tok.Description(), err)
	}
	before := h.lastSeq()
	v = b.submit("/console/tokens/"+id+"/edit", url.Values{"name": {"multi"}, "description": {"line one\r\nline two"}, "role": {"WORKSPACE_OWNER"}})
	if v.status != 400 || !strings.Contains(v.body, "version") || h.lastSeq() != before {
		t.Fatalf("an edit form without the version it was opened at: %d, stream moved %v; want 400 on version, nothing written", v.status, h.lastSeq() != before)
	}
	if h.lastSeq() != before {
		t.Fatal("an edit form without its version was written")
	}
	b.get("/console/tokens/" + id + "/edit")
	v = b.submit("/console/tokens/"+id+"/edit", url.Values{"name": {"multi"}, "description": {"line one\r\nline two"}, "role": {"WORKSPACE_OWNER"},
		"version": {"1"}})
	if v.status >= 400 {
		t.Fatalf("editing only the role of a token with a multi-line description: %d\n%s", v.status, v.body)
	}
	tok, _, err = h.ledger.GetToken(ctxT(t), h.caller(h.owner), id, 0)
	if err != nil || tok.Role() != domain.RoleWorkspaceOwner || tok.Description() != "line one\nline two" || tok.Version() != 2 {
		t.Fatalf("after the edit: role %s, description %q, version %d (%v)", tok.Role(), tok.Description(), tok.Version(), err)
	}
}
