package natsaccess

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/tokenledger/tokenledger/domain"
)

// Grant is what a connection authenticated with one token may do on the
// services' stream. Everything is an allow-list: what is not here is refused.
type Grant struct {
	TokenID        string
	OrganizationID string
	// Filter is the widest subject the token may read (see ReadFilter).
	Filter    string
	Publish   []string
	Subscribe []string
}

// ReadFilter is what a token may read over NATS, following the permission
// matrix: an organization token reads every token of its organization, so
// it gets all of the organization's events; a workspace or deployment token
// may read only some of its organization's tokens, which no subject can
// express (subjects name organizations and tokens, not workspaces), so it
// gets only its own token's events. Nothing of another organization, ever.
func ReadFilter(t *domain.Token, subjectPrefix string) string {
	if t.Scope() == domain.ScopeOrganization {
		return subjectPrefix + "." + t.OrganizationID() + ".>"
	}
	return subjectPrefix + "." + t.OrganizationID() + "." + t.ID() + ".*"
}

// GrantFor is the grant of a connection that presented secret, the current
// secret of t. stream is the services' stream (the mirror), named like the
// ledger's.
func GrantFor(t *domain.Token, secret, stream, subjectPrefix string) Grant {
	g := Grant{TokenID: t.ID(), OrganizationID: t.OrganizationID(), Filter: ReadFilter(t, subjectPrefix)}
	for _, c := range Consumers(t.ID()) {
		// The filter is part of the create subject (nats.go puts a single
		// filter there, and the server checks it is the consumer's), so
		// the permission bounds what the consumer reads. A create without
		// a filter in its subject (several filters, or none) matches no
		// permission here and is refused.
		// No delete: SERVICES does not import it (see ServerConfig); a
		// one-off consumer ends by its inactive threshold.
		g.Publish = append(g.Publish,
			createPrefix+stream+"."+c+"."+g.Filter,
			APIPrefix+".CONSUMER.INFO."+stream+"."+c,
			APIPrefix+".CONSUMER.MSG.NEXT."+stream+"."+c,
			"$JS.ACK."+stream+"."+c+".>",
		)
	}
	g.Publish = append(g.Publish, userInfo)
	g.Subscribe = []string{InboxPrefix(secret) + ".>"}
	return g
}

// fingerprint names what a grant was made from: the token, its current
// secret and what it may read. The revoker cuts a connection whose token no
// longer yields the same fingerprint (rotated, deleted, changed scope).
func fingerprint(t *domain.Token, filter string) string {
	h := t.SecretHash()
	sum := sha256.Sum256([]byte("tokenledger nats grant\x00" + t.ID() + "\x00" + hex.EncodeToString(h[:]) + "\x00" + filter))
	return hex.EncodeToString(sum[:12])
}
