package app

import (
	"context"
	"fmt"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

// GetToken returns one token of the caller's organization and the stream
// sequence of its last event. minSeq, when set, makes the read wait until the
// view has reached it.
func (l *Ledger) GetToken(ctx context.Context, c Caller, id string, minSeq uint64) (*domain.Token, uint64, error) {
	if err := authorize(c); err != nil {
		return nil, 0, err
	}
	if err := l.waitForRead(ctx, minSeq); err != nil {
		return nil, 0, err
	}
	return l.get(c, id)
}

// ListTokens returns the caller's organization's tokens, oldest first, and the
// stream sequence the list reflects (at least).
func (l *Ledger) ListTokens(ctx context.Context, c Caller, minSeq uint64) ([]projections.Listed, uint64, error) {
	if err := authorize(c); err != nil {
		return nil, 0, err
	}
	if err := l.waitForRead(ctx, minSeq); err != nil {
		return nil, 0, err
	}
	seq := l.view.Sequence()
	return l.view.List(c.org()), seq, nil
}

// waitForRead makes a read wait for a sequence the caller was given. A
// sequence the stream has not reached is the caller's mistake, not a reason to
// wait.
func (l *Ledger) waitForRead(ctx context.Context, minSeq uint64) error {
	if minSeq == 0 || l.view.Sequence() >= minSeq {
		return nil
	}
	last, err := l.store.LastSequence(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if minSeq > last {
		return domain.Invalid("min_sequence", fmt.Sprintf("beyond the stream's last sequence (%d)", last))
	}
	return l.waitFor(ctx, minSeq)
}
