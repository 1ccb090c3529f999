package app

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/exporters"
)

// WithAuditKey gives the ledger the Ed25519 key that signs export manifests
// (see exporters.LoadOrCreateKey). Without one, exports are refused.
func WithAuditKey(key ed25519.PrivateKey) Option { return func(l *Ledger) { l.auditKey = key } }

// AuditPublicKey is the key that export manifests verify against; nil when
// the ledger has none.
func (l *Ledger) AuditPublicKey() ed25519.PublicKey {
	if l.auditKey == nil {
		return nil
	}
	return l.auditKey.Public().(ed25519.PublicKey)
}

// ErrNoAuditKey: the ledger was started without a signing key.
var ErrNoAuditKey = errors.New("this ledger has no audit signing key")

// errUnexportable: the stream holds a message that is not an event.
var errUnexportable = errors.New("the stream holds a message that cannot be exported")

// writeError is a failure to write the export out: the reader has gone,
// usually.
type writeError struct{ err error }

func (e *writeError) Error() string { return "writing the export: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// ExportProgress is how far an export has got: rows written, and an upper
// bound on the rows it will write (the events its range holds).
type ExportProgress struct {
	Rows     uint64
	Estimate uint64
}

// progressEvery is how many rows pass between progress reports.
const progressEvery = 2048

// ExportOutput is where an export goes.
type ExportOutput struct {
	// File receives the export file's bytes as they are made.
	File io.Writer
	// Manifest, if not nil, receives the signed manifest file once the
	// export file is complete.
	Manifest io.Writer
	// Progress, if not nil, is called as rows are written.
	Progress func(ExportProgress)
}

// Export writes the audit log of the caller's organization selected by q to
// out.File, row by row as it reads the stream, then the signed manifest of
// what it wrote to out.Manifest, and returns that manifest without its
// chains. Memory does not grow with the number of rows: rows go out as they
// are read (a Parquet row group at a time), and only one chain entry per
// token is kept, for the manifest, which is written as it is made. Only an
// organization owner may export.
//
// The manifest is signed only once the stream read has proved it delivered
// every event of the range up to its cut (eventstore.Store.Scan): when the
// NATS server delivers less or other than that (a consumer changed under
// the export: eventstore.ErrBadDelivery), Export fails as unavailable and
// signs nothing; the rows already written are then not an export.
func (l *Ledger) Export(ctx context.Context, c Caller, q ExportQuery, to ExportOutput) (exporters.Manifest, error) {
	var none exporters.Manifest
	if err := domain.Authorize(c.Token, domain.OpExport, nil, nil); err != nil {
		return none, err
	}
	if l.auditKey == nil {
		return none, ErrNoAuditKey
	}
	progress := to.Progress
	if progress == nil {
		progress = func(ExportProgress) {}
	}
	out, err := exporters.NewExport(q.Format, to.File)
	if err != nil {
		return none, err
	}
	var start eventstore.ScanStart
	rng := eventstore.Range{
		OrganizationID: c.org(), TokenID: q.TokenID, Types: q.Types,
		AfterSequence: q.AfterSequence, Since: q.Since,
	}
	var written uint64
	err = l.store.Scan(ctx, rng, func(s eventstore.ScanStart) {
		start = s
		progress(ExportProgress{Estimate: s.Pending})
	}, func(rec eventstore.Recorded) error {
		if rec.Err != nil {
			// Only a writer that bypassed the ledger stores such a message;
			// an audit log that skipped it would hide it.
			return fmt.Errorf("%w: stream sequence %d: %w", errUnexportable, rec.Sequence, rec.Err)
		}
		row := exporters.RowOf(rec.Sequence, rec.Event)
		if !q.keeps(row) {
			return nil
		}
		if err := out.Write(row); err != nil {
			return &writeError{err}
		}
		if written++; written%progressEvery == 0 {
			progress(ExportProgress{Rows: written, Estimate: start.Pending})
		}
		return nil
	})
	var we *writeError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return none, fmt.Errorf("export stopped: %w", ctx.Err())
	case errors.As(err, &we), errors.Is(err, errUnexportable):
		return none, err // the reader went away, or the stream holds what no row can say: retrying will not help
	default:
		return none, fmt.Errorf("%w: export stopped: %w", ErrUnavailable, err)
	}
	if err := out.Close(); err != nil {
		return none, &writeError{err}
	}
	progress(ExportProgress{Rows: written, Estimate: written})

	manifestTo := to.Manifest
	if manifestTo == nil {
		manifestTo = io.Discard // still made: the returned manifest is the signed one
	}
	m, err := out.WriteSignedManifest(manifestTo, exporters.Manifest{
		OrganizationID: c.org(),
		Filters:        q.filters(),
		StreamSequence: start.Cut,
		CreatedAt:      l.now().UTC(),
		KeyID:          exporters.KeyID(l.AuditPublicKey()),
	}, l.auditKey)
	if err != nil {
		return none, &writeError{err}
	}
	return m, nil
}

// filters is the query as the manifest records it: times resolved, so the
// manifest says what was exported whatever "24h" meant when it ran.
func (q ExportQuery) filters() exporters.Filters {
	f := exporters.Filters{
		TokenID: q.TokenID, WorkspaceID: q.WorkspaceID, DeploymentID: q.DeploymentID,
		ActorTokenID: q.ActorTokenID, AfterSequence: q.AfterSequence,
	}
	if !q.Since.IsZero() {
		f.Since = q.Since.UTC().Format(time.RFC3339Nano)
	}
	if !q.Until.IsZero() {
		f.Until = q.Until.UTC().Format(time.RFC3339Nano)
	}
	for _, t := range q.Types {
		f.Types = append(f.Types, string(t))
	}
	return f
}
