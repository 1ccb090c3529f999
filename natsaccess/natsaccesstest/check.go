package natsaccesstest

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/projections"
)

// CheckExportAndView fails the test unless an audit export of Org holds
// every one of Org's events and verifies against the ledger's key, and the
// ledger's view equals one rebuilt from the stream: what no attack from
// outside may change.
func (l *Ledger) CheckExportAndView(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var file, manifest bytes.Buffer
	m, err := l.App.Export(ctx, l.Owner, app.ExportQuery{Format: exporters.FormatJSONL}, app.ExportOutput{File: &file, Manifest: &manifest})
	if err != nil {
		tb.Fatalf("export: %v", err)
	}
	rep := exporters.Verify(bytes.NewReader(file.Bytes()), int64(file.Len()), manifest.Bytes(), l.App.AuditPublicKey())
	if err := rep.Err(); err != nil {
		tb.Fatal(err)
	}
	last, err := l.Store.LastSequence(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	rebuilt := projections.NewTokens()
	want := 0
	err = l.Store.Follow(ctx, 1, func(r eventstore.Recorded) error {
		if r.OrganizationID == Org {
			want++
		}
		if r.Err == nil {
			_ = rebuilt.Apply(r.Sequence, r.Event)
		} else {
			rebuilt.Refuse(r.Sequence, r.OrganizationID, r.TokenID)
		}
		if r.Sequence >= last {
			return errRebuilt
		}
		return nil
	})
	if !errors.Is(err, errRebuilt) {
		tb.Fatalf("rebuild: %v", err)
	}
	if m.Rows != int64(want) {
		tb.Errorf("the export holds %d rows, the stream %d events of %s", m.Rows, want, Org)
	}
	if err := l.View.WaitFor(ctx, last); err != nil {
		tb.Fatal(err)
	}
	if l.View.Digest() != rebuilt.Digest() {
		tb.Error("the ledger's view differs from one rebuilt from the stream")
	}
}

var errRebuilt = errors.New("rebuilt")
