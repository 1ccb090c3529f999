package projections

import (
	"slices"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// place is a workspace or a deployment of an organization.
type place struct {
	org  string
	kind placeKind
	id   string
}

type placeKind uint8

const (
	inWorkspace placeKind = iota + 1
	inDeployment
)

// How says how a token holds its role in a place.
type How string

const (
	HeldByWorkspaceToken    How = "workspace token"
	HeldByDeploymentToken   How = "deployment token"
	HeldByOrganizationToken How = "organization token assigned to the workspace"
)

// places lists where a token holds a role: a workspace token in its
// workspace; a deployment token in its deployment and (as a deployment token)
// in the deployment's workspace; an organization token in each workspace it is
// assigned to. A deleted token holds none.
func places(t *domain.Token) []place {
	if t == nil || t.Deleted() {
		return nil
	}
	org := t.OrganizationID()
	switch t.Scope() {
	case domain.ScopeWorkspace:
		return []place{{org, inWorkspace, t.WorkspaceID()}}
	case domain.ScopeDeployment:
		return []place{{org, inWorkspace, t.WorkspaceID()}, {org, inDeployment, t.DeploymentID()}}
	}
	var out []place
	t.EachWorkspaceRole(func(ws string, _ domain.Role) { out = append(out, place{org, inWorkspace, ws}) })
	return out
}

// replace moves ent from the places it held to the places it holds.
func (v *Tokens) replace(ent *entry, from, to []place) {
	for _, p := range from {
		if !slices.Contains(to, p) {
			if set := v.byPlace[p]; set != nil {
				delete(set, ent)
				if len(set) == 0 {
					delete(v.byPlace, p)
				}
			}
		}
	}
	for _, p := range to {
		set := v.byPlace[p]
		if set == nil {
			set = make(map[*entry]struct{})
			v.byPlace[p] = set
		}
		set[ent] = struct{}{}
	}
}

// Holding is one token's role in a workspace or deployment.
type Holding struct {
	Token *domain.Token // a copy
	Role  domain.Role
	How   How
}

// InWorkspace returns the tokens that can act in workspace ws of org at now,
// with their role there and how they hold it: workspace tokens of ws,
// deployment tokens in ws (each for its own deployment), and organization
// tokens assigned to ws. Expired and quarantined tokens are left out: they
// cannot act. Ordered by name, then id.
func (v *Tokens) InWorkspace(org, ws string, now time.Time) []Holding {
	return v.holders(place{org, inWorkspace, ws}, now)
}

// InDeployment returns the deployment tokens of deployment dep of org that can
// act at now.
func (v *Tokens) InDeployment(org, dep string, now time.Time) []Holding {
	return v.holders(place{org, inDeployment, dep}, now)
}

func (v *Tokens) holders(p place, now time.Time) []Holding {
	v.mu.RLock()
	out := make([]Holding, 0, len(v.byPlace[p]))
	for ent := range v.byPlace[p] {
		t := ent.token
		if ent.quarantined || t.Status(now) != domain.StatusActive {
			continue
		}
		h := Holding{Token: t.Clone(), Role: t.Role()}
		switch t.Scope() {
		case domain.ScopeWorkspace:
			h.How = HeldByWorkspaceToken
		case domain.ScopeDeployment:
			h.How = HeldByDeploymentToken
		case domain.ScopeOrganization:
			h.How = HeldByOrganizationToken
			h.Role, _ = t.WorkspaceRole(p.id)
		}
		out = append(out, h)
	}
	v.mu.RUnlock()
	slices.SortFunc(out, func(a, b Holding) int {
		if c := strings.Compare(a.Token.Name(), b.Token.Name()); c != 0 {
			return c
		}
		return strings.Compare(a.Token.ID(), b.Token.ID())
	})
	return out
}
