package app

import (
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

// AuthenticateService resolves the secret a service presents to NATS (see
// natsaccess): its token if the token is active now, noting the use. A
// rotated-away secret is refused like any other but not reported as reuse
// here: a service whose secret was rotated reconnects every few seconds
// with it, and each attempt would be another event.
//
// Like Authenticate, it answers only on a view shown current (ErrStale
// otherwise), and judges a secret it does not hold as active again once
// the view has reached the stream's head.
func (l *Ledger) AuthenticateService(secret string) (*domain.Token, error) {
	v, err := l.verifyCurrent(secret)
	if err != nil {
		return nil, err
	}
	if v.Outcome != projections.OutcomeActive {
		return nil, ErrUnauthenticated
	}
	l.view.MarkUsed(v, l.now())
	return v.Token(), nil
}

// Current is a token as the view has it now, deleted or not; not found if
// the view does not trust it (quarantined), so its connections are cut.
func (l *Ledger) Current(org, id string) (*domain.Token, bool) {
	t, _, ok := l.view.Get(org, id)
	if !ok || l.view.Quarantined(org, id) {
		return nil, false
	}
	return t, true
}
