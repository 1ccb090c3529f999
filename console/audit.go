package console

import (
	"archive/zip"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/exporters"
)

// The audit download is one .zip holding the export file and its signed
// manifest under the names `ledger audit verify` looks for
// (audit-<org>-<time>.<ext> and the same name plus .manifest.json), so that
// unzipping it and running verify on the file is all an auditor does.

type auditPage struct {
	Form    auditForm
	Periods []option
	Types   []typeChoice
	Formats []option
}

type option struct{ Value, Label string }

type typeChoice struct {
	Type    string
	Checked bool
}

type auditForm struct {
	Period, From, To, Format string
	Types                    []string
}

var periods = []option{
	{"24h", "Last 24 hours"}, {"7d", "Last 7 days"}, {"30d", "Last 30 days"}, {"90d", "Last 90 days"},
	{"all", "All time"}, {"custom", "Between the dates below (UTC)"},
}

var formats = []option{
	{string(exporters.FormatParquet), "Parquet (DuckDB, Spark, pandas)"},
	{string(exporters.FormatJSONL), "JSON Lines (one event per line, for a SIEM)"},
	{string(exporters.FormatJSON), "JSON (one array)"},
}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, s *signedIn) {
	f := auditForm{Period: "30d", Format: string(exporters.FormatParquet)}
	for _, t := range domain.EventTypes {
		f.Types = append(f.Types, string(t))
	}
	c.showAudit(w, r, s, http.StatusOK, f, formErrors{})
}

func (c *Console) showAudit(w http.ResponseWriter, r *http.Request, s *signedIn, status int, f auditForm, errs formErrors) {
	if err := domain.Authorize(s.me, domain.OpExport, nil, nil); err != nil {
		c.fail(w, r, s, domain.OpExport, err)
		return
	}
	page := auditPage{Form: f, Periods: periods, Formats: formats}
	for _, t := range domain.EventTypes {
		page.Types = append(page.Types, typeChoice{Type: string(t), Checked: slices.Contains(f.Types, string(t))})
	}
	c.render(w, r, s, status, "audit.html", view{Title: "Audit log", Nav: "audit", Errors: errs, Data: page})
}

// query turns the form into the API's export parameters, so that the
// ledger's own parser judges them (app.ParseExportQuery) and names the
// field of each problem: since is the From date, until the To date.
func (f auditForm) query() (map[string][]string, formErrors) {
	v := map[string][]string{"format": {f.Format}}
	period := f.Period
	if f.From != "" || f.To != "" {
		period = "custom" // dates typed in are what the person meant
	}
	switch period {
	case "all":
	case "custom":
		if f.From != "" {
			from, err := time.Parse(time.DateOnly, f.From)
			if err != nil {
				return nil, fieldError("", "since", "Enter a date as YYYY-MM-DD.")
			}
			v["since"] = []string{from.Format(time.RFC3339)}
		}
		if f.To != "" {
			to, err := time.Parse(time.DateOnly, f.To)
			if err != nil {
				return nil, fieldError("", "until", "Enter a date as YYYY-MM-DD.")
			}
			// Up to the end of the day given.
			v["until"] = []string{to.AddDate(0, 0, 1).Format(time.RFC3339)}
		}
	default:
		if !slices.ContainsFunc(periods, func(o option) bool { return o.Value == period }) {
			return nil, fieldError("", "period", "Choose a period.")
		}
		v["since"] = []string{period}
	}
	if len(f.Types) == 0 {
		return nil, fieldError("", "type", "Choose at least one event type.")
	}
	// Every type chosen is no filter at all: the manifest then says so.
	if len(f.Types) < len(domain.EventTypes) {
		v["type"] = f.Types
	}
	return v, formErrors{}
}

func (c *Console) auditDownload(w http.ResponseWriter, r *http.Request, s *signedIn) {
	_ = r.ParseForm()
	f := auditForm{Period: r.PostFormValue("period"), From: strings.TrimSpace(r.PostFormValue("from")),
		To: strings.TrimSpace(r.PostFormValue("to")), Format: r.PostFormValue("format"), Types: r.PostForm["type"]}
	values, errs := f.query()
	if errs.Any() {
		c.showAudit(w, r, s, http.StatusBadRequest, f, errs)
		return
	}
	now := c.ledger.Now()
	q, err := app.ParseExportQuery(func(name string) []string { return values[name] }, now)
	if err != nil {
		p := c.gate.Failure(r, s.caller, domain.OpExport, err)
		c.showAudit(w, r, s, p.Status, f, errorsOf(p, "", "since", "until", "type", "format"))
		return
	}
	base := fmt.Sprintf("audit-%s-%s", s.me.OrganizationID(), now.UTC().Format("20060102T150405Z"))
	file := base + q.Format.Ext()
	// An export runs as long as the organization's history takes to send;
	// the server's write timeout is meant for pages.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	out := &startOnWrite{w: w, start: func() {
		h := w.Header()
		h.Set("Content-Type", "application/zip")
		h.Set("Content-Disposition", `attachment; filename="`+base+`.zip"`)
		w.WriteHeader(http.StatusOK)
	}}
	zw := zip.NewWriter(out)
	method := zip.Deflate
	if q.Format == exporters.FormatParquet {
		method = zip.Store // compressed already (zstd)
	}
	data, err := zw.CreateHeader(&zip.FileHeader{Name: file, Method: method, Modified: now})
	if err == nil {
		manifest := &lazyEntry{zw: zw, header: zip.FileHeader{Name: file + ".manifest.json", Method: zip.Deflate, Modified: now}}
		_, err = c.ledger.Export(r.Context(), s.caller, q, app.ExportOutput{File: data, Manifest: manifest})
	}
	if err != nil {
		if !out.started {
			p := c.gate.Failure(r, s.caller, domain.OpExport, err)
			c.showAudit(w, r, s, p.Status, f, errorsOf(p, "", "since", "until", "type", "format"))
			return
		}
		// Too late for a page: without its central directory the zip does
		// not open, so a broken-off download cannot pass for a whole one.
		c.log.Error("console audit download broke off", "request_id", s.caller.RequestID, "error", err)
		return
	}
	if err := zw.Close(); err != nil {
		c.log.Error("console audit download broke off", "request_id", s.caller.RequestID, "error", err)
	}
}

// startOnWrite sends the response's status and headers at the first byte,
// so that an export refused before it wrote anything can still answer with
// a page.
type startOnWrite struct {
	w       io.Writer
	start   func()
	started bool
}

func (o *startOnWrite) Write(p []byte) (int, error) {
	if !o.started {
		o.started = true
		o.start()
	}
	return o.w.Write(p)
}

// lazyEntry is a zip entry begun at its first byte: the manifest is written
// after the export file is complete, and a zip's entries follow each other.
type lazyEntry struct {
	zw     *zip.Writer
	header zip.FileHeader
	w      io.Writer
}

func (e *lazyEntry) Write(p []byte) (int, error) {
	if e.w == nil {
		w, err := e.zw.CreateHeader(&e.header)
		if err != nil {
			return 0, err
		}
		e.w = w
	}
	return e.w.Write(p)
}
