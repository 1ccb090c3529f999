package projections

import "github.com/tokenledger/tokenledger/domain"

// ShownTo is the verdict as actor may see it: its token's workspace roles
// only in the workspaces actor reads (see domain.Token.ShownTo).
func (d Verdict) ShownTo(actor *domain.Token) Verdict {
	if d.Token() != nil {
		d.token = *d.token.ShownTo(actor)
	}
	return d
}
