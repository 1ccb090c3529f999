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
//
// Like Authenticate, it answers only on a view shown current (ErrStale
// otherwise: the session is not ended for it), and a token it does not
// hold as active is looked at again once the view has reached the
// stream's head (a session opened through another ledger a moment ago).
func (l *Ledger) Resume(org, id string, h domain.SecretHash) (*domain.Token, error) {
	if err := l.current(); err != nil {
		return nil, err
	}
	v := l.view.Resume(org, id, h, l.now())
	if v.Outcome != projections.OutcomeActive && l.fresh.bound > 0 {
		if err := l.reachHead(l.fresh.bound); err != nil {
			return nil, err
		}
		v = l.view.Resume(org, id, h, l.now())
	}
	if v.Outcome != projections.OutcomeActive {
		return nil, ErrUnauthenticated
	}
	l.view.MarkUsed(v, l.now())
	return v.Token(), nil
}
