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
// otherwise). Unlike it, a secret the view does not hold as active is
// refused at once, not looked at again on the stream's head: the callout
// answers one connection at a time, and anyone who can reach NATS could
// otherwise hold it a round trip per made-up secret. A service whose token
// was made through another ledger a moment ago is let in when its client
// reconnects (nats.go tries again every 2 s).
func (l *Ledger) AuthenticateService(secret string) (*domain.Token, error) {
	if err := l.current(); err != nil {
		return nil, err
	}
	v := l.view.Verify(secret, l.now())
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
