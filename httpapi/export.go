package httpapi

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/exporters"
)

// An export answers in one of two ways:
//
//   - plain (the default): the file itself as the body, and its SHA-256 in
//     the HTTP trailer Ledger-Export-SHA256 once the body is complete (or
//     Ledger-Export-Error if it broke off). Any HTTP client can save it. The
//     signed manifest, which lists every token's chain and so can run to
//     megabytes, is too large for a trailer: it comes with framed output.
//   - framed, when the request accepts ExportFramesType: the body is a
//     sequence of frames, each a kind byte, a big-endian uint32 length and
//     that many bytes: 'D' file bytes, 'P' progress (JSON {"rows","estimate"}),
//     'M' a piece of the signed manifest, sent as it is made (the pieces
//     joined are the manifest file; an empty 'M' frame ends it and is the
//     last frame of a good export), 'E' a problem+json document (the last
//     frame of a failed one). The CLI uses
//     it to show progress and to learn the manifest without trailers, which
//     proxies may drop.
const ExportFramesType = "application/vnd.tokenledger.export-frames"

const (
	frameData     = 'D'
	frameProgress = 'P'
	frameManifest = 'M'
	frameError    = 'E'
)

// maxFrame bounds a frame a client will accept, and maxManifest the whole
// manifest, which lists every token the export holds.
const (
	maxFrame    = 16 << 20
	maxManifest = 1 << 30
)

var exportParams = map[string]bool{"format": true, "since": true, "until": true, "type": true, "token": true,
	"workspace": true, "deployment": true, "actor": true, "after_sequence": true}

var contentTypes = map[exporters.Format]string{
	exporters.FormatParquet: "application/vnd.apache.parquet",
	exporters.FormatJSONL:   "application/x-ndjson",
	exporters.FormatJSON:    "application/json",
}

func (s *Server) auditExport(w http.ResponseWriter, r *http.Request, c app.Caller) error {
	query := r.URL.Query()
	for name := range query {
		if !exportParams[name] {
			return domain.Invalid(clipPath(name), "unknown parameter; known: format, since, until, type, token, workspace, deployment, actor, after_sequence")
		}
	}
	q, err := app.ParseExportQuery(func(n string) []string { return query[n] }, s.ledger.Now())
	if err != nil {
		return err
	}
	framed := strings.Contains(r.Header.Get("Accept"), ExportFramesType)
	rc := http.NewResponseController(w)
	// An export runs as long as the organization's history takes to send:
	// the server's write timeout, meant for ordinary answers, would cut it.
	_ = rc.SetWriteDeadline(time.Time{})
	out := &exportResponse{w: w, framed: framed, flusher: rc}
	out.start = func() {
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		if framed {
			h.Set("Content-Type", ExportFramesType)
		} else {
			h.Set("Content-Type", contentTypes[q.Format])
			h.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="audit-%s-%s%s"`, c.Token.OrganizationID(), s.ledger.Now().UTC().Format("20060102T150405Z"), q.Format.Ext()))
			h.Set("Trailer", "Ledger-Export-SHA256, Ledger-Export-Error")
		}
		w.WriteHeader(http.StatusOK)
	}
	var progress func(app.ExportProgress)
	if framed {
		last := time.Time{}
		progress = func(p app.ExportProgress) {
			// A few reports a second are plenty for a progress bar.
			if now := time.Now(); now.Sub(last) >= 100*time.Millisecond || p.Rows == p.Estimate {
				last = now
				b, _ := json.Marshal(p)
				out.frame(frameProgress, b)
				_ = out.flusher.Flush()
			}
		}
	}
	to := app.ExportOutput{File: out, Progress: progress}
	if framed {
		to.Manifest = frameWriter{out, frameManifest}
	}
	m, err := s.ledger.Export(r.Context(), c, q, to)
	if err != nil {
		if !out.started {
			return err // nothing sent yet: an ordinary error answer
		}
		p := problemFor(err)
		switch {
		case r.Context().Err() != nil:
			s.log.Info("export abandoned by the client", "request_id", c.RequestID)
			return nil
		case p.Status >= 500:
			s.log.Error("export failed", "request_id", c.RequestID, "error", err)
		}
		if framed {
			p.RequestID = c.RequestID
			b, _ := json.Marshal(p)
			out.frame(frameError, b)
		} else {
			w.Header().Set("Ledger-Export-Error", p.Detail)
		}
		return nil
	}
	out.begin()
	if framed {
		out.frame(frameManifest, nil)
		return nil
	}
	w.Header().Set("Ledger-Export-SHA256", m.SHA256)
	return nil
}

// frameWriter sends what is written to it as frames of one kind.
type frameWriter struct {
	o    *exportResponse
	kind byte
}

func (f frameWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil // an empty frame means "the end"
	}
	f.o.frame(f.kind, p)
	return len(p), f.o.err
}

// exportResponse sends an export's bytes, framed or not, and starts the
// response only at the first byte: until then an error can still be an
// ordinary problem answer.
type exportResponse struct {
	w       http.ResponseWriter
	framed  bool
	flusher *http.ResponseController
	start   func()
	started bool
	err     error
}

func (o *exportResponse) begin() {
	if !o.started {
		o.started = true
		o.start()
	}
}

func (o *exportResponse) Write(p []byte) (int, error) {
	if !o.framed {
		o.begin()
		return o.w.Write(p)
	}
	o.frame(frameData, p)
	return len(p), o.err
}

func (o *exportResponse) frame(kind byte, p []byte) {
	o.begin()
	if o.err != nil {
		return
	}
	var head [5]byte
	head[0] = kind
	binary.BigEndian.PutUint32(head[1:], uint32(len(p)))
	if _, o.err = o.w.Write(head[:]); o.err == nil {
		_, o.err = o.w.Write(p)
	}
}

func (s *Server) auditPublicKey(w http.ResponseWriter, r *http.Request) {
	pub := s.ledger.AuditPublicKey()
	if pub == nil {
		writeProblem(w, r, problemFor(app.ErrNoAuditKey))
		return
	}
	writeJSON(w, http.StatusOK, AuditKey{PublicKey: exporters.FormatPublicKey(pub), KeyID: exporters.KeyID(pub)})
}

// AuditKey is the key export manifests are signed with.
type AuditKey struct {
	PublicKey string `json:"public_key"`
	KeyID     string `json:"key_id"`
}

// AuditPublicKey asks the ledger for the key its export manifests are signed
// with.
func (c *Client) AuditPublicKey(ctx context.Context) (AuditKey, error) {
	var k AuditKey
	return k, c.do(ctx, http.MethodGet, "/v1/audit/public-key", nil, nil, &k)
}

// ExportProgress is how far an export has got.
type ExportProgress = app.ExportProgress

// Export streams an audit export: each piece of the file goes to data as it
// arrives, progress reports to progress (may be nil), and the signed manifest
// is returned at the end. An export that broke off returns its problem.
func (c *Client) Export(ctx context.Context, q url.Values, data func([]byte) error, progress func(ExportProgress)) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+withQuery("/v1/audit/export", q), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", ExportFramesType)
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("User-Agent", c.UserAgent)
	// An export runs as long as it takes: no overall timeout, only ctx.
	hc := *c.HTTP
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &UnreachableError{URL: c.BaseURL, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 || resp.Header.Get("Content-Type") != ExportFramesType {
		return nil, problemFromResponse(resp)
	}
	rd := bufio.NewReaderSize(resp.Body, 64<<10)
	buf := make([]byte, 0, 64<<10)
	var manifest []byte
	for {
		var head [5]byte
		if _, err := io.ReadFull(rd, head[:]); err != nil {
			return nil, &UnreachableError{URL: c.BaseURL, Err: fmt.Errorf("export broke off before its manifest: %w", err)}
		}
		n := binary.BigEndian.Uint32(head[1:])
		if n > maxFrame || (head[0] == frameManifest && len(manifest)+int(n) > maxManifest) {
			return nil, &UnreachableError{URL: c.BaseURL, Err: fmt.Errorf("export frame of %d bytes: not a ledger's answer", n)}
		}
		if head[0] == frameManifest && n == 0 {
			return manifest, nil
		}
		if uint32(cap(buf)) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(rd, buf); err != nil {
			return nil, &UnreachableError{URL: c.BaseURL, Err: fmt.Errorf("export broke off: %w", err)}
		}
		switch head[0] {
		case frameData:
			if manifest != nil {
				return nil, &UnreachableError{URL: c.BaseURL, Err: errors.New("export data after its manifest: not a ledger's answer")}
			}
			if err := data(buf); err != nil {
				return nil, err
			}
		case frameManifest:
			manifest = append(manifest, buf...)
		case frameProgress:
			var p ExportProgress
			if json.Unmarshal(buf, &p) == nil && progress != nil {
				progress(p)
			}
		case frameError:
			return nil, readProblem(buf, http.StatusInternalServerError, "Export failed")
		default:
			return nil, &UnreachableError{URL: c.BaseURL, Err: errors.New("export frame of unknown kind: not a ledger's answer")}
		}
	}
}

// problemFromResponse reads an error answer.
func problemFromResponse(resp *http.Response) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &UnreachableError{URL: resp.Request.URL.Host, Err: fmt.Errorf("read answer: %w", err)}
	}
	return readProblem(data, resp.StatusCode, http.StatusText(resp.StatusCode))
}
