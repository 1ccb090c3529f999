package projections

import (
	"crypto/subtle"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// Resume judges a secret known only by its hash h, which was token (org,
// id)'s when a session was opened with it: the web console keeps the hash
// of the secret a person signed in with, never the secret. The verdict is
// Verify's for that secret: active while the token is active and still has
// it; rotated, deleted, expired or quarantined otherwise. An active
// verdict can be passed to MarkUsed.
func (v *Tokens) Resume(org, id string, h domain.SecretHash, now time.Time) Verdict {
	v.mu.RLock()
	ent := v.byKey[tokenKey{org, id}]
	if ent == nil {
		v.mu.RUnlock()
		return Verdict{Outcome: OutcomeUnknown}
	}
	d := Verdict{token: *ent.token, found: true}
	quarantined := ent.quarantined
	v.mu.RUnlock()
	stored := d.token.SecretHash()
	switch {
	case d.token.Deleted():
		d.Outcome = OutcomeDeleted
	case subtle.ConstantTimeCompare(stored[:], h[:]) != 1:
		d.Outcome = OutcomeRotated
	case quarantined:
		d.Outcome = OutcomeQuarantined
	case d.token.Status(now) == domain.StatusExpired:
		d.Outcome = OutcomeExpired
	default:
		d.Outcome, d.ent = OutcomeActive, ent
	}
	return d
}
