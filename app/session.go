package app

import (
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

// Resume authenticates a request of a session opened earlier with a secret
// of token id of organization org, of which the session kept only the hash
// h (see projections.Tokens.Resume): it returns the token as it is now if
// it is still active with that secret, and notes the use as Authenticate
// does; otherwise ErrUnauthenticated, so a rotation, deletion, expiry or
// quarantine ends the session at its next request.
func (l *Ledger) Resume(org, id string, h domain.SecretHash) (*domain.Token, error) {
	now := l.now()
	v := l.view.Resume(org, id, h, now)
	if v.Outcome != projections.OutcomeActive {
		return nil, ErrUnauthenticated
	}
	l.view.MarkUsed(v, now)
	return v.Token(), nil
}
