package console

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/projections"
)

// tokenRow is a token as the pages show it, with the actions the signed-in
// token may take on it.
type tokenRow struct {
	ID, Name, Description string
	Scope                 string
	Workspace, Deployment string
	Assigned              []assignment
	Role                  string
	ExpiresAt, LastUsedAt time.Time
	Status                string
	Own                   bool

	CanEdit, CanRotate, CanDelete, CanAssign bool
}

type assignment struct{ Workspace, Role string }

func rowOf(actor, t *domain.Token, quarantined bool, now time.Time) tokenRow {
	row := tokenRow{
		ID: t.ID(), Name: t.Name(), Description: t.Description(), Scope: scopeName(t.Scope()),
		Workspace: t.WorkspaceID(), Deployment: t.DeploymentID(), Role: string(t.Role()),
		ExpiresAt: t.ExpiresAt(), LastUsedAt: t.LastUsedAt(), Status: string(t.Status(now)), Own: t.ID() == actor.ID(),
		CanEdit: may(actor, domain.OpUpdate, t), CanRotate: may(actor, domain.OpRotate, t),
		CanDelete: may(actor, domain.OpDelete, t), CanAssign: may(actor, domain.OpAssign, t),
	}
	if quarantined && row.Status == string(domain.StatusActive) {
		row.Status = "quarantined"
	}
	t.EachWorkspaceRole(func(ws string, r domain.Role) {
		row.Assigned = append(row.Assigned, assignment{Workspace: ws, Role: string(r)})
	})
	return row
}

func scopeName(s domain.Scope) string {
	switch s {
	case domain.ScopeOrganization:
		return "Organization"
	case domain.ScopeWorkspace:
		return "Workspace"
	case domain.ScopeDeployment:
		return "Deployment"
	}
	return string(s)
}

// place says where a token acts, in words.
func place(t *domain.Token) string {
	switch t.Scope() {
	case domain.ScopeWorkspace:
		return "workspace " + t.WorkspaceID()
	case domain.ScopeDeployment:
		return "deployment " + t.DeploymentID() + " (workspace " + t.WorkspaceID() + ")"
	}
	return "organization " + t.OrganizationID()
}

// filterForm is the token table's filters, as the form sends them (query
// parameters named like the API's).
type filterForm struct {
	Scope, WorkspaceID, Role, Status string
}

func (f filterForm) any() bool {
	return f.Scope != "" || f.WorkspaceID != "" || f.Role != "" || f.Status != ""
}

type tokensPage struct {
	Rows       []tokenRow
	Filter     filterForm
	Filtered   bool
	Total      int
	Roles      []domain.Role
	Workspaces []string
	CanCreate  bool
	CanAssign  bool
}

// allRoles lists every role, organization roles first.
func allRoles() []domain.Role {
	var out []domain.Role
	for _, s := range scopes {
		out = append(out, domain.RolesOf(s)...)
	}
	return out
}

// readable is every token the signed-in token may read, oldest first.
func (c *Console) readable(r *http.Request, s *signedIn) ([]projections.Listed, error) {
	list, _, err := c.ledger.ListTokens(r.Context(), s.caller, 0)
	return list, err
}

// workspacesIn lists the workspaces tokens name, for the forms' suggestions.
func workspacesIn(list []projections.Listed) (workspaces, deployments []string) {
	for _, l := range list {
		t := l.Token
		if ws := t.WorkspaceID(); ws != "" && !slices.Contains(workspaces, ws) {
			workspaces = append(workspaces, ws)
		}
		if d := t.DeploymentID(); d != "" && !slices.Contains(deployments, d) {
			deployments = append(deployments, d)
		}
		t.EachWorkspaceRole(func(ws string, _ domain.Role) {
			if !slices.Contains(workspaces, ws) {
				workspaces = append(workspaces, ws)
			}
		})
	}
	slices.Sort(workspaces)
	slices.Sort(deployments)
	return workspaces, deployments
}

// tokens is the API Tokens page: the table, its filters and what the
// signed-in token may do.
func (c *Console) tokens(w http.ResponseWriter, r *http.Request, s *signedIn) {
	q := r.URL.Query()
	f := filterForm{Scope: q.Get("scope"), WorkspaceID: strings.TrimSpace(q.Get("workspace_id")), Role: q.Get("role"), Status: q.Get("status")}
	var filter app.TokenFilter
	for _, p := range []struct {
		v  string
		to **string
	}{{f.Scope, &filter.Scope}, {f.WorkspaceID, &filter.WorkspaceID}, {f.Role, &filter.Role}, {f.Status, &filter.Status}} {
		if p.v != "" {
			v := p.v
			*p.to = &v
		}
	}
	now := c.ledger.Now()
	all, err := c.readable(r, s)
	if err != nil {
		c.fail(w, r, s, domain.OpRead, err)
		return
	}
	page := tokensPage{Filter: f, Filtered: f.any(), Total: len(all), Roles: allRoles(),
		CanCreate: canCreate(s.me, now), CanAssign: s.me.Role() == domain.RoleOrganizationOwner}
	page.Workspaces, _ = workspacesIn(all)
	status := http.StatusOK
	var errs formErrors
	list, _, err := c.ledger.FindTokens(r.Context(), s.caller, filter, 0)
	if err != nil {
		p := c.gate.Failure(r, s.caller, domain.OpRead, err)
		errs, status = errorsOf(p, "", "scope", "workspace_id", "role", "status"), p.Status
	}
	for _, l := range list {
		page.Rows = append(page.Rows, rowOf(s.me, l.Token, l.Quarantined, now))
	}
	c.render(w, r, s, status, "tokens.html", view{Title: "API Tokens", Nav: "tokens", Errors: errs, Data: page})
}

// detailsPage is one token: its fields, every role it has, its history, and
// what the signed-in token may do with it.
type detailsPage struct {
	Token          tokenRow
	Fingerprint    string
	Version        uint64
	ExpirationDays int
	CreatedAt      time.Time
	UpdatedAt      time.Time
	RotatedAt      time.Time
	DeletedAt      time.Time
	Roles          []httpapi.RoleGrant
	History        []historyRow
	WorkspaceRoles []domain.Role
	Workspaces     []string
	// Add is the "add to a workspace" form as sent, shown again with its
	// errors.
	Add assignForm
}

type assignForm struct{ WorkspaceID, Role string }

type historyRow struct {
	Sequence  uint64
	At        time.Time
	Event     string
	ActorID   string
	ActorName string
	Source    string
	Changes   string
}

func (c *Console) details(w http.ResponseWriter, r *http.Request, s *signedIn) {
	c.showDetails(w, r, s, http.StatusOK, formErrors{}, assignForm{Role: string(domain.RoleWorkspaceMember)})
}

func (c *Console) showDetails(w http.ResponseWriter, r *http.Request, s *signedIn, status int, errs formErrors, add assignForm) {
	tok, _, err := c.ledger.GetToken(r.Context(), s.caller, r.PathValue("id"), 0)
	if err != nil {
		c.fail(w, r, s, domain.OpRead, err)
		return
	}
	recs, err := c.ledger.TokenHistory(r.Context(), s.caller, tok.ID())
	if err != nil {
		c.fail(w, r, s, domain.OpRead, err)
		return
	}
	all, err := c.readable(r, s)
	if err != nil {
		c.fail(w, r, s, domain.OpRead, err)
		return
	}
	names := make(map[string]string, len(all))
	quarantined := false
	for _, l := range all {
		names[l.Token.ID()] = l.Token.Name()
		quarantined = quarantined || (l.Token.ID() == tok.ID() && l.Quarantined)
	}
	now := c.ledger.Now()
	page := detailsPage{
		Token: rowOf(s.me, tok, quarantined, now), Fingerprint: tok.Fingerprint(), Version: tok.Version(),
		ExpirationDays: tok.ExpirationDays(), CreatedAt: tok.CreatedAt(), UpdatedAt: tok.UpdatedAt(),
		RotatedAt: tok.RotatedAt(), DeletedAt: tok.DeletedAt(), Roles: httpapi.RolesOf(tok),
		WorkspaceRoles: workspaceRoles, Add: add,
	}
	page.Workspaces, _ = workspacesIn(all)
	for _, rec := range recs {
		e, err := httpapi.HistoryEventOf(rec.Sequence, rec.Event)
		if err != nil {
			c.fail(w, r, s, domain.OpRead, err)
			return
		}
		page.History = append(page.History, historyRow{
			Sequence: e.Sequence, At: e.OccurredAt, Event: string(e.EventType), ActorID: e.ActorTokenID,
			ActorName: names[e.ActorTokenID], Source: e.SourceIP, Changes: httpapi.Changes(e),
		})
	}
	// Newest first, as an activity log reads.
	slices.Reverse(page.History)
	c.render(w, r, s, status, "details.html", view{Title: tok.Name(), Nav: "tokens", Errors: errs, Data: page})
}

// createPage is the "+ API Token" page: first a choice of scope, then the
// form for that scope.
type createPage struct {
	Choices     []scopeChoice
	Scope       string
	ScopeLabel  string
	Grant       grant
	Form        createForm
	Workspaces  []string
	Deployments []string
	// Key makes the form's submission idempotent: a second click, or a
	// reload of the answer, creates nothing more.
	Key string
}

type scopeChoice struct {
	Scope, Label, About string
}

var scopeAbout = map[domain.Scope]string{
	domain.ScopeOrganization: "Acts across the organization with an organization role; can be added to workspaces with a workspace role.",
	domain.ScopeWorkspace:    "Acts in one workspace with a workspace role.",
	domain.ScopeDeployment:   "Acts on one deployment of a workspace, as DEPLOYMENT_ADMIN.",
}

type createForm struct {
	Name, Description, WorkspaceID, DeploymentID, Role string
	// Expires is "never" or "days".
	Expires, Days string
}

func newKey() string { return "console-" + randomText() }

func (c *Console) newToken(w http.ResponseWriter, r *http.Request, s *signedIn) {
	now := c.ledger.Now()
	scope, err := domain.ParseScope(r.URL.Query().Get("scope"))
	if err != nil || len(grantsOf(s.me, scope, now).Roles) == 0 {
		c.chooseScope(w, r, s)
		return
	}
	g := grantsOf(s.me, scope, now)
	f := createForm{Expires: "never", Days: "90", Role: string(g.Roles[len(g.Roles)-1])}
	if len(g.Workspaces) > 0 {
		f.WorkspaceID = g.Workspaces[0]
	}
	c.showCreate(w, r, s, http.StatusOK, scope, f, newKey(), formErrors{})
}

func (c *Console) chooseScope(w http.ResponseWriter, r *http.Request, s *signedIn) {
	now := c.ledger.Now()
	var page createPage
	for _, sc := range scopes {
		if len(grantsOf(s.me, sc, now).Roles) > 0 {
			page.Choices = append(page.Choices, scopeChoice{Scope: strings.ToLower(string(sc)), Label: scopeName(sc) + " API token", About: scopeAbout[sc]})
		}
	}
	if len(page.Choices) == 0 {
		c.render(w, r, s, http.StatusForbidden, "error.html", view{Title: "Not allowed", Nav: "tokens", Data: errorPage{
			Heading: "You cannot create API tokens", Message: "The token you signed in with may read tokens, not create them.",
		}})
		return
	}
	c.render(w, r, s, http.StatusOK, "new.html", view{Title: "Create an API token", Nav: "tokens", Data: page})
}

func (c *Console) showCreate(w http.ResponseWriter, r *http.Request, s *signedIn, status int, scope domain.Scope, f createForm, key string, errs formErrors) {
	// A secret pasted into a field was refused: the page does not carry it.
	f.Name, f.Description = withoutSecret(f.Name), withoutSecret(f.Description)
	all, err := c.readable(r, s)
	if err != nil {
		c.fail(w, r, s, domain.OpRead, err)
		return
	}
	page := createPage{Scope: strings.ToLower(string(scope)), ScopeLabel: scopeName(scope), Grant: grantsOf(s.me, scope, c.ledger.Now()), Form: f, Key: key}
	page.Workspaces, page.Deployments = workspacesIn(all)
	if !page.Grant.AnyWorkspace {
		page.Workspaces = page.Grant.Workspaces
	}
	c.render(w, r, s, status, "new.html", view{Title: "Create a " + page.ScopeLabel + " API token", Nav: "tokens", Errors: errs, Data: page})
}

var createFields = []string{"name", "description", "workspace_id", "deployment_id", "role", "expiration_days", "scope"}

func (c *Console) createToken(w http.ResponseWriter, r *http.Request, s *signedIn) {
	f := createForm{
		Name: r.PostFormValue("name"), Description: formText(r.PostFormValue("description")),
		WorkspaceID: strings.TrimSpace(r.PostFormValue("workspace_id")), DeploymentID: strings.TrimSpace(r.PostFormValue("deployment_id")),
		Role: r.PostFormValue("role"), Expires: r.PostFormValue("expires"), Days: strings.TrimSpace(r.PostFormValue("expiration_days")),
	}
	key := r.PostFormValue("idempotency_key")
	scope, err := domain.ParseScope(r.PostFormValue("scope"))
	if err != nil {
		c.chooseScope(w, r, s)
		return
	}
	cmd := domain.CreateToken{Scope: string(scope), Name: f.Name, Description: f.Description, Role: f.Role}
	if scope != domain.ScopeOrganization {
		cmd.WorkspaceID = f.WorkspaceID
	}
	if scope == domain.ScopeDeployment {
		cmd.DeploymentID = f.DeploymentID
	}
	if f.Expires == "days" {
		n, err := strconv.Atoi(f.Days)
		if err != nil {
			c.showCreate(w, r, s, http.StatusBadRequest, scope, f, key, fieldError("", "expiration_days",
				"Enter a whole number of days from 1 to 365, or choose Never."))
			return
		}
		cmd.ExpirationDays = &n
	}
	res, err := c.ledger.CreateToken(r.Context(), s.caller, cmd, key)
	if err != nil {
		p := c.gate.Failure(r, s.caller, domain.OpCreate, err)
		c.showCreate(w, r, s, p.Status, scope, f, key, errorsOf(p, "", createFields...))
		return
	}
	c.showSecret(w, r, s, res, "API token created")
}

// secretPage shows a secret just issued, the one time it is shown.
type secretPage struct {
	Heading  string
	Token    tokenRow
	Secret   string
	Replayed bool
	// SignedOut: the secret replaced the one this session signed in with,
	// so the session has ended.
	SignedOut bool
}

func (c *Console) showSecret(w http.ResponseWriter, r *http.Request, s *signedIn, res app.Result, heading string) {
	page := secretPage{Heading: heading, Token: rowOf(s.me, res.Token, false, c.ledger.Now()), Replayed: res.Replayed}
	if !res.Secret.IsZero() {
		page.Secret = res.Secret.Reveal()
	}
	if res.Token.ID() == s.me.ID() && !res.Replayed {
		c.endSession(r, s.cookie)
		c.setCookie(w, r, sessionCookie, "", -1)
		page.SignedOut = true
		s = nil
	}
	c.render(w, r, s, http.StatusOK, "secret.html", view{Title: heading, Nav: "tokens", Data: page})
}

// editPage is the Edit form: name, description, role, and the way to
// rotate or delete.
type editPage struct {
	Token   tokenRow
	Form    editForm
	Roles   []domain.Role
	Version uint64
}

type editForm struct{ Name, Description, Role string }

func (c *Console) editPage(w http.ResponseWriter, r *http.Request, s *signedIn) {
	tok, _, err := c.ledger.GetToken(r.Context(), s.caller, r.PathValue("id"), 0)
	if err != nil {
		c.fail(w, r, s, domain.OpRead, err)
		return
	}
	c.showEdit(w, r, s, http.StatusOK, tok, editForm{Name: tok.Name(), Description: tok.Description(), Role: string(tok.Role())}, tok.Version(), formErrors{})
}

func (c *Console) showEdit(w http.ResponseWriter, r *http.Request, s *signedIn, status int, tok *domain.Token, f editForm, version uint64, errs formErrors) {
	f.Name, f.Description = withoutSecret(f.Name), withoutSecret(f.Description)
	now := c.ledger.Now()
	page := editPage{Token: rowOf(s.me, tok, false, now), Form: f, Roles: settableRoles(s.me, tok, now), Version: version}
	c.render(w, r, s, status, "edit.html", view{Title: "Edit " + tok.Name(), Nav: "tokens", Errors: errs, Data: page})
}

func (c *Console) edit(w http.ResponseWriter, r *http.Request, s *signedIn) {
	tok, _, err := c.ledger.GetToken(r.Context(), s.caller, r.PathValue("id"), 0)
	if err != nil {
		c.fail(w, r, s, domain.OpRead, err)
		return
	}
	f := editForm{Name: r.PostFormValue("name"), Description: formText(r.PostFormValue("description")), Role: r.PostFormValue("role")}
	// The version the form was opened at is what makes someone else's
	// change since a conflict rather than an overwrite: a form without it
	// is not one of ours.
	version, err := strconv.ParseUint(r.PostFormValue("version"), 10, 64)
	if err != nil || version == 0 {
		c.fail(w, r, s, domain.OpUpdate, domain.Invalid("version", "required: the version the form was opened at (reload the page)"))
		return
	}
	// Only what the form changed is sent: a role left as it was is not a
	// grant to judge.
	var cmd domain.UpdateToken
	if strings.TrimSpace(f.Name) != tok.Name() {
		cmd.Name = &f.Name
	}
	if f.Description != tok.Description() {
		cmd.Description = &f.Description
	}
	if f.Role != "" && f.Role != string(tok.Role()) {
		cmd.Role = &f.Role
	}
	if cmd.Name == nil && cmd.Description == nil && cmd.Role == nil {
		c.flash(r, s, "Nothing to save: "+tok.Name()+" is unchanged.")
		http.Redirect(w, r, tokenPath(tok.ID()), http.StatusSeeOther)
		return
	}
	// The version the form was read at: a change made since by someone
	// else is a conflict to see, not to overwrite.
	res, err := c.ledger.UpdateToken(r.Context(), s.caller, tok.ID(), cmd, "", app.IfVersion(version))
	if err != nil {
		p := c.gate.Failure(r, s.caller, domain.OpUpdate, err)
		c.showEdit(w, r, s, p.Status, tok, f, version, errorsOf(p, "", "name", "description", "role"))
		return
	}
	c.flash(r, s, "Saved changes to "+res.Token.Name()+".")
	http.Redirect(w, r, tokenPath(tok.ID()), http.StatusSeeOther)
}

func tokenPath(id string) string { return "/console/tokens/" + url.PathEscape(id) }

// confirmPage asks before a rotation or deletion.
type confirmPage struct {
	Token   tokenRow
	Key     string
	Confirm string
}

func (c *Console) rotatePage(w http.ResponseWriter, r *http.Request, s *signedIn) {
	c.showConfirm(w, r, s, http.StatusOK, "rotate.html", "Rotate", formErrors{}, "")
}

func (c *Console) deletePage(w http.ResponseWriter, r *http.Request, s *signedIn) {
	c.showConfirm(w, r, s, http.StatusOK, "delete.html", "Delete", formErrors{}, "")
}

func (c *Console) showConfirm(w http.ResponseWriter, r *http.Request, s *signedIn, status int, page, verb string, errs formErrors, typed string) {
	tok, _, err := c.ledger.GetToken(r.Context(), s.caller, r.PathValue("id"), 0)
	if err != nil {
		c.fail(w, r, s, domain.OpRead, err)
		return
	}
	c.render(w, r, s, status, page, view{Title: verb + " " + tok.Name(), Nav: "tokens", Errors: errs,
		Data: confirmPage{Token: rowOf(s.me, tok, false, c.ledger.Now()), Key: newKey(), Confirm: typed}})
}

func (c *Console) rotate(w http.ResponseWriter, r *http.Request, s *signedIn) {
	res, err := c.ledger.RotateToken(r.Context(), s.caller, r.PathValue("id"), r.PostFormValue("idempotency_key"))
	if err != nil {
		p := c.gate.Failure(r, s.caller, domain.OpRotate, err)
		c.showConfirm(w, r, s, p.Status, "rotate.html", "Rotate", errorsOf(p, ""), "")
		return
	}
	c.showSecret(w, r, s, res, "API token rotated")
}

// deleteWord is what a person types to confirm a deletion, as in the
// product's own console.
const deleteWord = "Delete"

func (c *Console) delete(w http.ResponseWriter, r *http.Request, s *signedIn) {
	typed := r.PostFormValue("confirm")
	if strings.TrimSpace(typed) != deleteWord {
		c.showConfirm(w, r, s, http.StatusBadRequest, "delete.html", "Delete",
			fieldError("", "confirm", "Type "+deleteWord+" to confirm; nothing was deleted."), typed)
		return
	}
	res, err := c.ledger.DeleteToken(r.Context(), s.caller, r.PathValue("id"), "")
	if err != nil {
		p := c.gate.Failure(r, s.caller, domain.OpDelete, err)
		c.showConfirm(w, r, s, p.Status, "delete.html", "Delete", errorsOf(p, ""), typed)
		return
	}
	if res.Token.ID() == s.me.ID() {
		c.endSession(r, s.cookie)
		c.sessionEnded(w, r, "deleted-own")
		return
	}
	c.flash(r, s, "Deleted API token "+res.Token.Name()+". It can no longer be used; its history stays in the audit log.")
	http.Redirect(w, r, Path, http.StatusSeeOther)
}

// assign adds an organization token to a workspace with a workspace role,
// or changes the role it has there (the details page's forms).
func (c *Console) assign(w http.ResponseWriter, r *http.Request, s *signedIn) {
	f := assignForm{WorkspaceID: strings.TrimSpace(r.PostFormValue("workspace_id")), Role: r.PostFormValue("role")}
	form := r.PostFormValue("form") // "add", or "change" from a workspace's row
	id := r.PathValue("id")
	res, err := c.ledger.AssignToken(r.Context(), s.caller, id, f.WorkspaceID, f.Role, "")
	if err != nil {
		p := c.gate.Failure(r, s.caller, domain.OpAssign, err)
		if form != "add" {
			form = "change"
		}
		c.showDetails(w, r, s, p.Status, errorsOf(p, form, "workspace_id", "role"), f)
		return
	}
	c.flash(r, s, assignedMessage(res.Token, f.WorkspaceID))
	http.Redirect(w, r, tokenPath(id), http.StatusSeeOther)
}

func assignedMessage(t *domain.Token, ws string) string {
	r, _ := t.WorkspaceRole(ws)
	return t.Name() + " has the role " + string(r) + " in workspace " + ws + "."
}

func (c *Console) unassign(w http.ResponseWriter, r *http.Request, s *signedIn) {
	id, ws := r.PathValue("id"), r.PathValue("workspace")
	res, err := c.ledger.UnassignToken(r.Context(), s.caller, id, ws, "")
	if err != nil {
		p := c.gate.Failure(r, s.caller, domain.OpUnassign, err)
		c.showDetails(w, r, s, p.Status, errorsOf(p, "change"), assignForm{Role: string(domain.RoleWorkspaceMember)})
		return
	}
	c.flash(r, s, "Removed "+res.Token.Name()+" from workspace "+ws+".")
	http.Redirect(w, r, tokenPath(id), http.StatusSeeOther)
}

// assignPage is "Add Organization API token": pick an organization token, a
// workspace and a workspace role.
type assignPage struct {
	Tokens     []tokenRow
	Form       assignForm
	TokenID    string
	Workspaces []string
	Roles      []domain.Role
}

func (c *Console) assignPage(w http.ResponseWriter, r *http.Request, s *signedIn) {
	q := r.URL.Query()
	c.showAssign(w, r, s, http.StatusOK, q.Get("token"), assignForm{WorkspaceID: q.Get("workspace_id"), Role: string(domain.RoleWorkspaceMember)}, formErrors{})
}

func (c *Console) showAssign(w http.ResponseWriter, r *http.Request, s *signedIn, status int, tokenID string, f assignForm, errs formErrors) {
	all, err := c.readable(r, s)
	if err != nil {
		c.fail(w, r, s, domain.OpRead, err)
		return
	}
	now := c.ledger.Now()
	page := assignPage{Form: f, TokenID: tokenID, Roles: workspaceRoles}
	page.Workspaces, _ = workspacesIn(all)
	for _, l := range all {
		if may(s.me, domain.OpAssign, l.Token) {
			page.Tokens = append(page.Tokens, rowOf(s.me, l.Token, l.Quarantined, now))
		}
	}
	if len(page.Tokens) == 0 {
		c.render(w, r, s, http.StatusForbidden, "error.html", view{Title: "Not allowed", Nav: "tokens", Data: errorPage{
			Heading: "No organization token to add", Message: "Only an ORGANIZATION_OWNER adds organization tokens to workspaces, and there must be an organization token that is not deleted.",
		}})
		return
	}
	c.render(w, r, s, status, "assign.html", view{Title: "Add an organization API token to a workspace", Nav: "tokens", Errors: errs, Data: page})
}

func (c *Console) assignFromPage(w http.ResponseWriter, r *http.Request, s *signedIn) {
	id := r.PostFormValue("token_id")
	f := assignForm{WorkspaceID: strings.TrimSpace(r.PostFormValue("workspace_id")), Role: r.PostFormValue("role")}
	res, err := c.ledger.AssignToken(r.Context(), s.caller, id, f.WorkspaceID, f.Role, "")
	if err != nil {
		p := c.gate.Failure(r, s.caller, domain.OpAssign, err)
		c.showAssign(w, r, s, p.Status, id, f, errorsOf(p, "", "token_id", "workspace_id", "role"))
		return
	}
	c.flash(r, s, assignedMessage(res.Token, f.WorkspaceID))
	http.Redirect(w, r, tokenPath(res.Token.ID()), http.StatusSeeOther)
}

// formText is a textarea's value as the user typed it: browsers send its
// line breaks as CRLF (HTML's form encoding), which a description, allowing
// newlines but no other control characters, would refuse, and which an
// unchanged description would then differ from.
func formText(v string) string { return strings.ReplaceAll(v, "\r\n", "\n") }

// withoutSecret is a form value to show again: empty if it holds a secret.
func withoutSecret(v string) string {
	if domain.HoldsSecret(v) {
		return ""
	}
	return v
}
