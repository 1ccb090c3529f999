package console

import (
	"bytes"
	"html/template"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

// view is what every page template gets: the layout's parts, and the
// page's own Data.
type view struct {
	Title string
	// Nav is the top menu entry the page belongs to ("tokens", "audit").
	Nav       string
	Me        *meView // nil before sign-in
	CSRF      string
	Flash     string
	CanExport bool
	Errors    formErrors
	Data      any
}

// meView is the signed-in token, as the page header shows it.
type meView struct {
	ID, Name, Role, Scope, Place string
}

func meOf(t *domain.Token) *meView {
	return &meView{ID: t.ID(), Name: t.Name(), Role: string(t.Role()), Scope: scopeName(t.Scope()), Place: place(t)}
}

// formErrors are a refusal's problems, placed beside the fields of the form
// they concern (Form names it where a page has several); the rest go at the
// top of the page.
type formErrors struct {
	Form    string
	Fields  map[string][]string
	General []string
}

// For is what is wrong with field of the page's form.
func (e formErrors) For(field string) []string { return e.Fields[field] }

// In is what is wrong with field of form.
func (e formErrors) In(form, field string) []string {
	if e.Form != form {
		return nil
	}
	return e.Fields[field]
}

// Any reports whether there is anything to show.
func (e formErrors) Any() bool { return len(e.Fields) > 0 || len(e.General) > 0 }

// errorsOf places a problem's field errors beside the fields of form that
// the page shows; the others, and a problem that names no field, go on top.
func errorsOf(p httpapi.Problem, form string, fields ...string) formErrors {
	e := formErrors{Form: form, Fields: map[string][]string{}}
	shown := map[string]bool{}
	for _, f := range fields {
		shown[f] = true
	}
	for _, fe := range p.Errors {
		if shown[fe.Field] {
			e.Fields[fe.Field] = append(e.Fields[fe.Field], sentence(fe.Rule))
			continue
		}
		e.General = append(e.General, fieldLabel(fe.Field)+": "+fe.Rule)
	}
	if len(p.Errors) == 0 {
		msg := sentence(p.Detail)
		if p.Status >= 500 && p.RequestID != "" {
			msg += " (request id " + p.RequestID + ")"
		}
		e.General = append(e.General, msg)
	}
	return e
}

// fieldError is one message beside one field.
func fieldError(form, field, msg string) formErrors {
	return formErrors{Form: form, Fields: map[string][]string{field: {msg}}}
}

// fieldLabel names a problem's field for a person.
func fieldLabel(field string) string {
	switch field {
	case "Authorization":
		return "The token you signed in with"
	case "token_id":
		return "This token"
	case "workspace_id":
		return "Workspace"
	case "deployment_id":
		return "Deployment"
	case "expiration_days":
		return "Expiration"
	case "idempotency_key":
		return "This form"
	}
	if field == "" {
		return "Request"
	}
	return strings.ToUpper(field[:1]) + strings.ReplaceAll(field[1:], "_", " ")
}

// sentence starts a rule with a capital letter, as a message beside a field.
func sentence(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func seconds(n int64) string {
	if n == 1 {
		return "1 second"
	}
	return strconv.FormatInt(n, 10) + " seconds"
}

var funcs = template.FuncMap{
	"list":  func(s ...string) []string { return s },
	"title": sentence,
	"when": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	// short is a time in a table cell whose heading says UTC.
	"short": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04")
	},
	"iso": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	},
}

// parsePages parses each page with the layout it is shown in.
func parsePages() map[string]*template.Template {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		panic(err)
	}
	pages := make(map[string]*template.Template)
	for _, n := range names {
		name := strings.TrimPrefix(n, "templates/")
		if name == "layout.html" {
			continue
		}
		pages[name] = template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n))
	}
	return pages
}

// render shows page in the layout. s is nil before sign-in. A page is
// rendered whole before a byte is sent, so a template error cannot leave
// half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, s *signedIn, status int, page string, v view) {
	if s != nil {
		v.Me = meOf(s.me)
		v.CSRF = s.sess.csrf
		if v.Flash == "" {
			msg, err := c.sessions.takeFlash(r.Context(), s.cookie, s.sess)
			if err != nil {
				c.log.Warn("console message not read", "page", page, "error", err)
			}
			v.Flash = msg
		}
		v.CanExport = domain.Authorize(s.me, domain.OpExport, nil, nil) == nil
	}
	var buf bytes.Buffer
	if err := c.pages[page].ExecuteTemplate(&buf, "layout", v); err != nil {
		c.log.Error("console page failed", "page", page, "error", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// errorPage is a page that only says what went wrong.
type errorPage struct {
	Heading, Message string
}

// fail shows err, which the ledger answered to op, as a page of its own,
// with the status the API would answer.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *signedIn, op domain.Operation, err error) {
	p := c.gate.Failure(r, s.caller, op, err)
	e := errorsOf(p, "")
	c.render(w, r, s, p.Status, "error.html", view{Title: p.Title, Data: errorPage{Heading: p.Title, Message: strings.Join(e.General, " ")}})
}
