package app

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/projections"
)

// OpenView returns the token view to start from: the snapshot at path when it
// is usable for this stream, else an empty view to fill from the first event.
// rebuild discards the snapshot. Every way a snapshot is not used is logged
// with its reason.
func OpenView(ctx context.Context, store *eventstore.Store, path string, rebuild bool, log *slog.Logger) (*projections.Tokens, error) {
	if rebuild {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("discard snapshot: %w", err)
		}
		log.Info("rebuild requested: snapshot discarded, replaying the stream from the first event", "snapshot", path)
		return projections.NewTokens(), nil
	}
	// A save cut short by a crash leaves its temporary file behind.
	if stale, _ := filepath.Glob(path + ".*.tmp"); len(stale) > 0 {
		for _, f := range stale {
			_ = os.Remove(f)
		}
		log.Info("removed unfinished snapshot files", "count", len(stale))
	}
	start := time.Now()
	view, h, err := projections.LoadSnapshot(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		log.Info("no snapshot: replaying the stream from the first event", "snapshot", path)
		return projections.NewTokens(), nil
	case err != nil:
		log.Warn("snapshot unusable: replaying the stream from the first event", "snapshot", path, "reason", err)
		return projections.NewTokens(), nil
	}
	id, err := store.Identity(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.Check(store.Config().Stream, id.Created, id.LastSequence); err != nil {
		log.Warn("snapshot unusable: replaying the stream from the first event", "snapshot", path, "reason", err)
		return projections.NewTokens(), nil
	}
	log.Info("snapshot loaded: replaying only the events after it", "snapshot", path, "sequence", h.Sequence,
		"tail", id.LastSequence-h.Sequence, "load_ms", time.Since(start).Milliseconds())
	return view, nil
}

// SaveView writes a snapshot of view if it has moved past the one at path
// (covering saved), or tokens were used since (the snapshot keeps when they
// were last used), and returns the sequence now saved.
func SaveView(ctx context.Context, store *eventstore.Store, view *projections.Tokens, path string, saved uint64, log *slog.Logger) (uint64, error) {
	if view.Sequence() <= saved && !view.UsesUnsaved() {
		return saved, nil
	}
	id, err := store.Identity(ctx)
	if err != nil {
		return saved, err
	}
	start := time.Now()
	seq, err := view.SaveSnapshot(path, store.Config().Stream, id.Created)
	if err != nil {
		return saved, err
	}
	log.Info("snapshot saved", "snapshot", path, "sequence", seq, "ms", time.Since(start).Milliseconds())
	return seq, nil
}

// KeepSnapshots saves a snapshot every interval while the view moves or its
// tokens are used, until ctx ends.
func KeepSnapshots(ctx context.Context, store *eventstore.Store, view *projections.Tokens, path string, every time.Duration, saved uint64, log *slog.Logger) uint64 {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return saved
		case <-tick.C:
		}
		var err error
		if saved, err = SaveView(ctx, store, view, path, saved, log); err != nil {
			log.Error("snapshot not saved", "error", err)
		}
	}
}
