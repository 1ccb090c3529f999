package console_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/tokenledger/tokenledger/domain"
)

// screenshots, when set, is where TestBrowserJourney writes the README's
// pictures of the console:
//
//	go test ./console -run Browser -args -screenshots ../docs
var screenshots = flag.String("screenshots", "", "write console-tokens.png and console-created.png into this directory")

// chromiumPath is where Debian's chromium package puts the browser; CI
// installs it (apt-get install -y chromium). CHROMIUM overrides it.
const chromiumPath = "/usr/bin/chromium"

// chrome starts a headless chromium for the test. A missing chromium fails
// the test: a browser test that skipped would prove nothing.
func chrome(t *testing.T) context.Context {
	t.Helper()
	path := os.Getenv("CHROMIUM")
	if path == "" {
		path = chromiumPath
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the console's browser tests need Debian's chromium at %s (apt-get install -y chromium), or CHROMIUM=/path/to/chromium: %v", path, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // CI runs as root, where chromium's sandbox cannot start
		chromedp.DisableGPU,
		chromedp.WindowSize(1440, 860),
		chromedp.UserDataDir(t.TempDir()),
	)
	// The whole journey's bound; it also ends the browser.
	limit, cancelLimit := context.WithTimeout(context.Background(), 3*time.Minute)
	alloc, cancelAlloc := chromedp.NewExecAllocator(limit, opts...)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancelCtx(); cancelAlloc(); cancelLimit() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium at %s: %v", path, err)
	}
	return ctx
}

// page drives one browser tab and fails the test at the first step that
// does not work, saying which.
type page struct {
	t    *testing.T
	ctx  context.Context
	base string
}

func (p page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, steps...); err != nil {
		loc, _ := chromedp.Run(p.ctx, chromedp.Location())
		html, _ := chromedp.Run(p.ctx, chromedp.OuterHTML(chromedp.CSS("main")))
		p.t.Fatalf("%s: %v (at %s)\n%s", what, err, loc, html)
	}
}

func (p page) text(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		p.t.Fatalf("text of %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

func (p page) eval(expr string) bool {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](expr))
	if err != nil {
		p.t.Fatalf("%s: %v", expr, err)
	}
	return v
}

func (p page) open(path, waitFor string) {
	p.t.Helper()
	p.do("open "+path, chromedp.Navigate(p.base+path), chromedp.WaitVisible(chromedp.ID(waitFor)))
}

func (p page) tokenID(name string) string {
	p.t.Helper()
	a, err := chromedp.Run(p.ctx, chromedp.AttributeValue(chromedp.CSS(`tr[data-name="`+name+`"]`), "data-token-id"))
	if err != nil || !a.Exists {
		p.t.Fatalf("no row for %q in the token table: %v", name, err)
	}
	return a.Value
}

func (p page) screenshot(name string) {
	p.t.Helper()
	if *screenshots == "" {
		return
	}
	png, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(*screenshots, name), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func (p page) signIn(secret string) {
	p.t.Helper()
	p.open("/", "token") // the address `ledger serve` prints leads to the sign-in
	p.do("sign in", chromedp.SendKeys(chromedp.ID("token"), secret), chromedp.Click(chromedp.ID("sign-in")),
		chromedp.WaitVisible(chromedp.ID("tokens")))
}

// TestBrowserJourney is an admin's session in a real chromium: sign in,
// create a token (its secret shown once, and it verifies), edit it, rotate
// it (the old secret fails), add an organization token to a workspace and
// remove it, delete with the typed confirmation, download the audit log and
// verify it as `ledger audit verify` does, sign out; then a workspace
// member, who is offered no create button.
func TestBrowserJourney(t *testing.T) {
	ctx := chrome(t)
	h := newHarness(t)
	p := page{t: t, ctx: ctx, base: h.srv.URL}

	// A few tokens an organization would have, some recently used, so the
	// table reads like a real one.
	h.create(domain.CreateToken{Scope: "deployment", WorkspaceID: "analytics", DeploymentID: "etl-prod", Name: "etl-deployer", Description: "deploys the ETL DAGs"})
	_, marketing := h.create(domain.CreateToken{Scope: "workspace", WorkspaceID: "marketing", Name: "campaign-sync", Role: "WORKSPACE_AUTHOR"})
	_, member := h.create(domain.CreateToken{Scope: "workspace", WorkspaceID: "analytics", Name: "dashboards-reader", Role: "WORKSPACE_MEMBER"})
	h.caller(marketing)

	p.signIn(h.owner)
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{h.srv.URL + "/console/"}})
	if err != nil {
		t.Fatal(err)
	}
	var session *network.Cookie
	for _, c := range cookies.Cookies {
		if c.Name == "tl_session" {
			session = c
		}
	}
	if session == nil || !session.HTTPOnly || session.SameSite != network.CookieSameSiteStrict || strings.Contains(session.Value, h.owner) {
		t.Fatalf("the browser's session cookie: %+v; want HttpOnly, SameSite=Strict, and not the secret", session)
	}
	if p.eval(`document.cookie.includes("tl_session")`) {
		t.Error("the page's scripts can read the session cookie")
	}

	// Create: + API Token, a workspace token; a bad workspace id first.
	p.do("open the create menu", chromedp.Click(chromedp.ID("add-token")), chromedp.Click(chromedp.ID("create-token")),
		chromedp.WaitVisible(chromedp.ID("choose-workspace")))
	p.do("choose a workspace token", chromedp.Click(chromedp.ID("choose-workspace")), chromedp.WaitVisible(chromedp.ID("create-form")))
	p.do("fill the create form",
		chromedp.SendKeys(chromedp.ID("name"), "ci-analytics"),
		chromedp.SetValue(chromedp.ID("description"), "deploys the analytics project from main"),
		chromedp.SetValue(chromedp.ID("workspace_id"), "bad id!"),
		chromedp.SetValue(chromedp.ID("role"), "WORKSPACE_OPERATOR"),
		chromedp.Click(chromedp.ID("expires-days")),
		chromedp.SetValue(chromedp.ID("expiration_days"), "90"),
		chromedp.Click(chromedp.ID("create-submit")),
		chromedp.WaitVisible(chromedp.CSS("#field-workspace .field-error")))
	if msg := p.text("#field-workspace .field-error"); !strings.Contains(msg, "letters, digits") {
		t.Errorf("beside the workspace field: %q, want the id rule", msg)
	}
	if name, _ := chromedp.Run(ctx, chromedp.Value(chromedp.ID("name"))); name != "ci-analytics" {
		t.Errorf("the refused form came back with name %q", name)
	}
	p.do("create the token", chromedp.SetValue(chromedp.ID("workspace_id"), "analytics"),
		chromedp.Click(chromedp.ID("create-submit")), chromedp.WaitVisible(chromedp.ID("secret")))
	created := p.text("#secret")
	if !h.verifies(created) {
		t.Fatalf("the secret on the confirmation (%d characters) does not verify", len(created))
	}
	if w := p.text("#secret-warning"); !strings.Contains(w, "will not be shown again") {
		t.Errorf("the confirmation's warning: %q", w)
	}
	// The copy button is the script's: its showing and working proves the
	// script runs under the Content-Security-Policy.
	p.do("copy the secret", chromedp.WaitVisible(chromedp.ID("copy-secret")), chromedp.Click(chromedp.ID("copy-secret")),
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Poll[bool](`document.getElementById("copy-secret").textContent !== "Copy"`, chromedp.WithPollingTimeout(10*time.Second))(ctx, t)
			return err
		}))
	p.screenshot("console-created.png")
	p.do("back to the table", chromedp.Click(chromedp.ID("done")), chromedp.WaitVisible(chromedp.ID("tokens")))
	ciID := p.tokenID("ci-analytics")

	// Edit: name and role.
	p.open("/console/tokens/"+ciID, "history")
	p.do("edit", chromedp.Click(chromedp.ID("edit")), chromedp.WaitVisible(chromedp.ID("edit-form")),
		chromedp.SetValue(chromedp.ID("name"), "ci-analytics-main"),
		chromedp.SetValue(chromedp.ID("role"), "WORKSPACE_AUTHOR"),
		chromedp.Click(chromedp.ID("save")), chromedp.WaitVisible(chromedp.ID("history")))
	if got := p.text("#token-role"); got != "WORKSPACE_AUTHOR" || !strings.Contains(p.text("#token-name"), "ci-analytics-main") {
		t.Errorf("after the edit the details say %q, role %q", p.text("#token-name"), got)
	}

	// Rotate: the new secret works, the old one no longer does.
	p.do("rotate", chromedp.Click(chromedp.ID("rotate")), chromedp.WaitVisible(chromedp.ID("rotate-confirm")),
		chromedp.Click(chromedp.ID("rotate-confirm")), chromedp.WaitVisible(chromedp.ID("secret")))
	rotated := p.text("#secret")
	if rotated == created || !h.verifies(rotated) || h.verifies(created) {
		t.Fatal("after the rotation the new secret must verify and the old one must not")
	}

	// An organization token, added to a workspace and removed again.
	p.open("/console/tokens/new", "choose-organization")
	p.do("create an organization token", chromedp.Click(chromedp.ID("choose-organization")), chromedp.WaitVisible(chromedp.ID("create-form")),
		chromedp.SendKeys(chromedp.ID("name"), "ci-pipeline"),
		chromedp.SetValue(chromedp.ID("description"), "deploys from main"),
		chromedp.Click(chromedp.ID("create-submit")), chromedp.WaitVisible(chromedp.ID("secret")),
		chromedp.Click(chromedp.ID("to-details")), chromedp.WaitVisible(chromedp.ID("add-workspace")))
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	orgID := loc[strings.LastIndex(loc, "/")+1:]
	p.do("add it to analytics", chromedp.SetValue(chromedp.ID("add-workspace-id"), "analytics"),
		chromedp.SetValue(chromedp.ID("add-role"), "WORKSPACE_AUTHOR"),
		chromedp.Click(chromedp.ID("add-workspace-submit")),
		chromedp.WaitVisible(chromedp.CSS(`#assigned tr[data-workspace="analytics"]`)))
	if role := workspaceRole(t, h, orgID, "analytics"); role != domain.RoleWorkspaceAuthor {
		t.Fatalf("ci-pipeline's role in analytics: %q, want WORKSPACE_AUTHOR", role)
	}
	p.open("/console/", "tokens")
	p.screenshot("console-tokens.png")
	p.open("/console/tokens/"+orgID, "history")
	p.do("remove it from analytics", chromedp.Click(chromedp.ID("remove-analytics")), chromedp.WaitVisible(chromedp.ID("no-workspaces")))
	if role := workspaceRole(t, h, orgID, "analytics"); role != "" {
		t.Fatalf("ci-pipeline still has %q in analytics", role)
	}

	// Delete, confirmed by typing Delete.
	p.open("/console/tokens/"+ciID, "history")
	p.do("open delete", chromedp.Click(chromedp.ID("delete")), chromedp.WaitVisible(chromedp.ID("delete-form")),
		chromedp.SendKeys(chromedp.ID("confirm"), "Delet"))
	if !p.eval(`document.getElementById("delete-confirm").disabled`) {
		t.Error("Yes, Continue is enabled before Delete is typed")
	}
	p.do("type the last letter", chromedp.SendKeys(chromedp.ID("confirm"), "e"))
	if p.eval(`document.getElementById("delete-confirm").disabled`) {
		t.Fatal("Yes, Continue stays disabled after Delete is typed")
	}
	p.do("delete", chromedp.Click(chromedp.ID("delete-confirm")), chromedp.WaitVisible(chromedp.ID("tokens")))
	if f := p.text("#flash"); !strings.Contains(f, "Deleted API token ci-analytics-main") || h.verifies(rotated) {
		t.Fatalf("after the deletion: flash %q, and the secret must no longer verify", f)
	}

	// The audit log, downloaded and verified.
	dir := t.TempDir()
	if _, err := chromedp.CallBrowser(ctx, cdpbrowser.SetDownloadBehavior, cdpbrowser.SetDownloadBehaviorParams{
		Behavior: cdpbrowser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: dir, EventsEnabled: new(true),
	}); err != nil {
		t.Fatal(err)
	}
	p.do("open the audit log", chromedp.Click(chromedp.CSS(`a[href="/console/audit"]`)), chromedp.WaitVisible(chromedp.ID("audit-form")))
	dlCtx, stopEvents := context.WithTimeout(ctx, time.Minute)
	downloads := chromedp.BrowserEvents(dlCtx, cdpbrowser.DownloadProgress)
	p.do("download", chromedp.Click(chromedp.ID("download")))
	var file string
	for ev, err := range downloads {
		if err != nil {
			t.Fatalf("waiting for the download: %v", err)
		}
		if ev.State == cdpbrowser.DownloadProgressStateCanceled {
			t.Fatal("the browser cancelled the download")
		}
		if ev.State == cdpbrowser.DownloadProgressStateCompleted {
			file = filepath.Join(dir, ev.GUID)
			break
		}
	}
	stopEvents()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if rep := verifyDownload(t, h, data); rep.Rows < 10 {
		t.Errorf("the downloaded export has %d rows, want every event of the journey", rep.Rows)
	}

	// Sign out; the console then asks again.
	p.do("sign out", chromedp.Click(chromedp.ID("sign-out")), chromedp.WaitVisible(chromedp.ID("token")))
	p.open("/console/", "token")
	history, err := chromedp.Run(ctx, chromedp.NavigationEntries())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range history.Entries {
		for _, s := range []string{h.owner, created, rotated} {
			if strings.Contains(e.URL, s) {
				t.Errorf("the browser's history holds a secret in %s", e.URL)
			}
		}
	}

	// A workspace member reads its workspace's tokens and is offered
	// nothing to change.
	p.signIn(member)
	if !p.eval(`document.querySelector('tr[data-name="etl-deployer"]') !== null`) {
		t.Error("the member does not see its workspace's deployment token")
	}
	if p.eval(`document.getElementById("add-token") !== null`) || p.eval(`document.querySelector("a.edit, a.rotate, a.delete") !== null`) {
		t.Error("a WORKSPACE_MEMBER is offered to create or change tokens")
	}
}

func workspaceRole(t *testing.T, h *harness, id, ws string) domain.Role {
	t.Helper()
	tok, _, err := h.ledger.GetToken(ctxT(t), h.caller(h.owner), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := tok.WorkspaceRole(ws)
	return r
}
