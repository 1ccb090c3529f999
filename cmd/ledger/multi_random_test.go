package main

// The multi-instance suite's randomized part: random commands by several
// owner tokens, spread over the instances a few at a time, checking after
// each batch what must hold however requests are spread.

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/projections"
)

// viewList is the test view's tokens, and a sequence the view had reached
// before they were read (they reflect at least that).
func (s *multiSuite) viewList() (uint64, []projections.Listed) {
	seq := s.view.Sequence()
	return seq, s.view.List(multiOrg)
}

// compareListing compares a ledger's list of tokens, answered at gotSeq,
// with the test's rebuild from the stream, read at wantSeq or later. A
// token whose last event is at or below both is the same in both, field by
// field; one changed past either may differ (an event the other has not
// reached, such as a reuse report written meanwhile).
func compareListing(wantSeq uint64, want []projections.Listed, gotSeq uint64, got []httpapi.Token) []string {
	lo := min(wantSeq, gotSeq)
	now := time.Now()
	w := map[string]projections.Listed{}
	for _, l := range want {
		w[l.Token.ID()] = l
	}
	g := map[string]httpapi.Token{}
	for _, tok := range got {
		g[tok.ID] = tok
	}
	var diffs []string
	for _, id := range slices.Sorted(maps.Keys(w)) {
		l := w[id]
		tok, ok := g[id]
		if !ok {
			if l.Sequence <= lo {
				diffs = append(diffs, fmt.Sprintf("%s (last event %d) is in the stream, not in the list", id, l.Sequence))
			}
			continue
		}
		if l.Sequence != tok.Sequence {
			if max(l.Sequence, tok.Sequence) <= lo {
				diffs = append(diffs, fmt.Sprintf("%s: the list has it as of sequence %d, the stream's last event is %d", id, tok.Sequence, l.Sequence))
			}
			continue
		}
		t := l.Token
		var wantWS, wantDep string
		if tok.WorkspaceID != nil {
			wantWS = *tok.WorkspaceID
		}
		if tok.DeploymentID != nil {
			wantDep = *tok.DeploymentID
		}
		roles := map[string]string{}
		for ws, r := range t.WorkspaceRoles() {
			roles[ws] = string(r)
		}
		switch {
		case tok.Version != t.Version(), tok.Status != t.Status(now), tok.Role != t.Role(), tok.Fingerprint != t.Fingerprint(),
			tok.Name != t.Name(), wantWS != t.WorkspaceID(), wantDep != t.DeploymentID(), !maps.Equal(tok.WorkspaceRoles, roles),
			(tok.ExpiresAt == nil) != t.ExpiresAt().IsZero():
			diffs = append(diffs, fmt.Sprintf("%s at sequence %d: listed v%d %s %s %s %q ws=%q dep=%q %v, the stream has v%d %s %s %s %q ws=%q dep=%q %v",
				id, l.Sequence, tok.Version, tok.Status, tok.Role, tok.Fingerprint, tok.Name, wantWS, wantDep, tok.WorkspaceRoles,
				t.Version(), t.Status(now), t.Role(), t.Fingerprint(), t.Name(), t.WorkspaceID(), t.DeploymentID(), roles))
		}
	}
	for _, id := range slices.Sorted(maps.Keys(g)) {
		if _, ok := w[id]; !ok && g[id].Sequence <= lo {
			diffs = append(diffs, fmt.Sprintf("%s (sequence %d) is listed, and not in the stream", id, g[id].Sequence))
		}
	}
	return diffs
}

// randCmd is one random command and what came of it.
type randCmd struct {
	kind   string // create, update, rotate, assign, unassign, delete
	event  domain.EventType
	ledger *ledgerProc
	actor  string // token id
	target string // token id ("" for a create)
	send   func() answer
	a      answer
	tok    httpapi.Token
}

// retiredSecret is a secret rotated away or deleted, and when the command
// that retired it was answered.
type retiredSecret struct {
	id, secret string
	at         time.Time
	how        string
}

// randomCommands runs batches of 2-3 random commands (create, update,
// rotate, assign, unassign, delete) sent at the same moment by random owner
// tokens through random instances, and after each batch checks:
//
//   - the rules: the organization has a lasting owner; a deployment's
//     active tokens are in one workspace;
//   - every instance's view (GET /v1/tokens once it has reached the stream's
//     head, by min_sequence) equals the test's rebuild from the stream;
//   - every acknowledged command is in the stream at the sequence it was
//     answered with, as its token's event of that kind;
//   - no secret rotated away or deleted is accepted by any instance later
//     than the staleness bound after its command was acknowledged (each is
//     tried on every instance right after, and again in later batches);
//   - a current secret is not refused with 401, and no command gets 5xx.
//
// The batches come from a seed, logged; LEDGER_MULTI_SEED=N runs the same
// choices again (their outcomes depend on timing).
func (s *multiSuite) randomCommands(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("LEDGER_MULTI_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("LEDGER_MULTI_SEED: %v", err)
		}
	}
	t.Logf("seed %d (LEDGER_MULTI_SEED=%d makes the same choices)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 17))
	const batches = 60
	workspaces := []string{"ws-1", "ws-2", "ws-3"}
	deployments := []string{"rnd-dep-1", "rnd-dep-2", "rnd-dep-3"}
	nextDep := 0

	// The actors: three lasting owners, one made through each instance;
	// the organization's other lasting owners go, so that the rule is at
	// stake.
	var ours []string // every token this part made
	for i, l := range s.ledgers {
		tok, a := s.create(l, s.admin, httpapi.CreateRequest{Scope: "organization", Name: fmt.Sprintf("random owner %d", i), Role: string(domain.RoleOrganizationOwner)})
		if a.status != http.StatusCreated {
			t.Fatalf("create on %s: %s", l.name, a)
		}
		ours = append(ours, tok.ID)
	}
	for _, id := range s.lastingOwners(t, s.head(t)) {
		if !slices.Contains(ours, id) {
			if a := s.call(s.ledgers[0], "DELETE", "/v1/tokens/"+id, s.admin, nil, nil); a.status != http.StatusOK {
				t.Fatalf("delete lasting owner %s: %s", id, a)
			}
		}
	}
	s.knownEverywhere(t, s.head(t))

	var retired []retiredSecret
	violations := map[string][]string{}
	violate := func(kind, format string, args ...any) {
		violations[kind] = append(violations[kind], fmt.Sprintf(format, args...))
	}
	var latest time.Duration // the latest acceptance of a retired secret seen, after its command
	statuses := map[string]int{}
	commands := 0
	s.mu.Lock()
	refusedBefore := len(s.refused)
	s.mu.Unlock()
	// Deployments split before this part began (by the race above) are
	// not this part's doing.
	split := map[string]bool{}
	for dep := range s.splitDeployments(t, s.head(t)) {
		split[dep] = true
	}

	for batch := range batches {
		before := s.head(t)
		s.viewAt(t, before)
		_, now := s.viewList()
		byID := map[string]*domain.Token{}
		for _, l := range now {
			byID[l.Token.ID()] = l.Token
		}
		var actors, live, orgTokens []string
		for _, id := range ours {
			tok := byID[id]
			if tok == nil || tok.Status(time.Now()) != domain.StatusActive {
				continue
			}
			live = append(live, id)
			if tok.Scope() == domain.ScopeOrganization {
				orgTokens = append(orgTokens, id)
				if lasting(tok, time.Now()) {
					actors = append(actors, id)
				}
			}
		}
		pick := func(ids []string) string {
			if len(ids) == 0 {
				return ""
			}
			return ids[rng.IntN(len(ids))]
		}
		n := 2 + rng.IntN(2)
		cmds := make([]*randCmd, 0, n)
		// One batch in three is contested: what one ledger's locks used to
		// keep apart, sent through two instances at once.
		if rng.IntN(3) == 0 {
			cmds = s.contested(rng, batch, actors, workspaces, &nextDep)
			n = 0
		}
		for range n {
			c := &randCmd{ledger: s.ledgers[rng.IntN(len(s.ledgers))], actor: pick(actors)}
			who := caller{secret: s.secretOf(c.actor), source: s.http.newSource()}
			if c.actor == "" {
				who.secret = s.admin.secret
			}
			l := c.ledger
			switch r := rng.IntN(100); {
			case r < 30 || len(live) == 0:
				c.kind, c.event = "create", domain.TokenCreated
				req := httpapi.CreateRequest{Name: fmt.Sprintf("random %d.%d", batch, len(cmds))}
				switch k := rng.IntN(100); {
				case k < 30:
					req.Scope, req.Role = "organization", string(domain.RoleOrganizationOwner)
				case k < 40:
					req.Scope, req.Role, req.ExpirationDays = "organization", string(domain.RoleOrganizationOwner), ptr(30)
				case k < 55:
					req.Scope = "organization"
				case k < 70:
					req.Scope, req.WorkspaceID = "workspace", workspaces[rng.IntN(len(workspaces))]
				default:
					req.Scope, req.WorkspaceID, req.DeploymentID = "deployment", workspaces[rng.IntN(len(workspaces))], deployments[rng.IntN(len(deployments))]
				}
				c.send = func() answer { return s.call(l, "POST", "/v1/tokens", who, req, nil) }
			case r < 45 && len(orgTokens) > 0:
				c.kind, c.event, c.target = "update", domain.TokenUpdated, pick(orgTokens)
				role := domain.RoleOrganizationMember
				if byID[c.target].Role() != domain.RoleOrganizationOwner {
					role = domain.RoleOrganizationOwner
				}
				body := httpapi.UpdateRequest{Role: ptr(string(role)), Name: ptr(fmt.Sprintf("updated %d.%d", batch, len(cmds)))}
				target := c.target
				c.send = func() answer { return s.call(l, "PATCH", "/v1/tokens/"+target, who, body, nil) }
			case r < 65:
				c.kind, c.event, c.target = "rotate", domain.TokenRotated, pick(live)
				target := c.target
				c.send = func() answer { return s.call(l, "POST", "/v1/tokens/"+target+"/rotate", who, nil, nil) }
			case r < 75 && len(orgTokens) > 0:
				c.kind, c.event, c.target = "assign", domain.TokenAssigned, pick(orgTokens)
				path := "/v1/tokens/" + c.target + "/workspaces/" + workspaces[rng.IntN(len(workspaces))]
				body := httpapi.AssignRequest{Role: string([]domain.Role{domain.RoleWorkspaceOwner, domain.RoleWorkspaceMember, domain.RoleWorkspaceOperator}[rng.IntN(3)])}
				c.send = func() answer { return s.call(l, "PUT", path, who, body, nil) }
			case r < 80 && len(orgTokens) > 0:
				c.kind, c.event, c.target = "unassign", domain.TokenUnassigned, pick(orgTokens)
				ws := workspaces[rng.IntN(len(workspaces))]
				for w := range byID[c.target].WorkspaceRoles() {
					ws = w
					break
				}
				path := "/v1/tokens/" + c.target + "/workspaces/" + ws
				c.send = func() answer { return s.call(l, "DELETE", path, who, nil, nil) }
			default:
				c.kind, c.event = "delete", domain.TokenDeleted
				// Owners more often than their share: the rule is about them.
				if rng.IntN(2) == 0 && len(actors) > 0 {
					c.target = pick(actors)
				} else {
					c.target = pick(live)
				}
				target := c.target
				c.send = func() answer { return s.call(l, "DELETE", "/v1/tokens/"+target, who, nil, nil) }
			}
			cmds = append(cmds, c)
		}
		sends := make([]func() answer, len(cmds))
		for i, c := range cmds {
			sends[i] = c.send
		}
		for i, a := range s.race(sends...) {
			cmds[i].a = a
			cmds[i].tok, _ = a.token()
		}
		commands += len(cmds)

		// Answers, in the order the stream holds them.
		touched := map[string]bool{} // tokens a command of this batch rotated, deleted or changed
		for _, c := range cmds {
			if c.kind != "create" && c.kind != "assign" && c.kind != "unassign" {
				touched[c.target] = true
			}
		}
		sort.SliceStable(cmds, func(i, j int) bool { return cmds[i].tok.Sequence < cmds[j].tok.Sequence })
		for _, c := range cmds {
			statuses[c.kind+" "+strconv.Itoa(c.a.status)]++
			switch {
			case c.a.err != nil || c.a.status >= 500:
				violate("5xx", "batch %d: %s on %s: %s", batch, c.kind, c.ledger.name, c.a)
				continue
			case c.a.status == http.StatusUnauthorized && c.actor != "" && !touched[c.actor]:
				violate("401", "batch %d: %s on %s by %s, whose secret is current: %s", batch, c.kind, c.ledger.name, c.actor, c.a)
				continue
			case !c.a.ok2xx():
				continue
			}
			if c.tok.Sequence <= before {
				// A command that changed nothing (an assignment the token
				// had) writes nothing, and answers with the token's last
				// event: the batch's own events come after before.
				continue
			}
			// A direct get may be answered by a replica that has not stored
			// the message yet: what is acknowledged is there soon after.
			var rec eventstore.Recorded
			var err error
			waitFor(5*time.Second, func() bool {
				rec, err = s.store.Get(context.Background(), c.tok.Sequence)
				return err == nil
			})
			if err != nil || rec.Event.TokenID != c.tok.ID || rec.Event.Type != c.event {
				violate("stream", "batch %d: %s of %s acknowledged at sequence %d; the stream has %s of %s there (%v)",
					batch, c.kind, c.tok.ID, c.tok.Sequence, rec.Event.Type, rec.Event.TokenID, err)
			}
			switch c.kind {
			case "create":
				ours = append(ours, c.tok.ID)
				s.keep(c.tok.ID, c.tok.Secret)
			case "rotate":
				retired = append(retired, retiredSecret{id: c.tok.ID, secret: s.secretOf(c.tok.ID), at: c.a.done, how: "rotated away"})
				s.keep(c.tok.ID, c.tok.Secret)
			case "delete":
				retired = append(retired, retiredSecret{id: c.tok.ID, secret: s.secretOf(c.tok.ID), at: c.a.done, how: "deleted"})
			}
		}

		// Retired secrets: each new one on every instance right after its
		// command, and a few older ones again.
		var tries []retiredSecret
		for _, r := range retired {
			if r.at.After(time.Now().Add(-stalenessBound)) {
				tries = append(tries, r, r, r)
			}
		}
		for range 3 {
			if len(retired) > 0 {
				tries = append(tries, retired[rng.IntN(len(retired))])
			}
		}
		for i, r := range tries {
			l := s.ledgers[i%len(s.ledgers)]
			a := s.call(l, "GET", "/v1/tokens/"+r.id, caller{secret: r.secret, source: s.http.newSource()}, nil, nil)
			if a.ok2xx() {
				after := a.sent.Sub(r.at)
				latest = max(latest, after)
				if after > stalenessBound+stalenessSlack {
					violate("retired", "batch %d: a secret %s (%s) accepted by %s %s after its command was acknowledged", batch, r.how, r.id, l.name, after.Round(time.Millisecond))
				}
			}
		}

		// The rules, the views, on the stream's head.
		head := s.head(t)
		s.viewAt(t, head)
		s.mu.Lock()
		newlyRefused := s.refused[min(refusedBefore, len(s.refused)):]
		refusedBefore = len(s.refused)
		s.mu.Unlock()
		for _, r := range newlyRefused {
			events := ""
			if m := refusedToken.FindStringSubmatch(r); m != nil {
				events = s.eventsOf(t, m[1])
			}
			violate("history", "batch %d: %s (answers: %s; the token's events: %s)", batch, r, describe(cmds), events)
		}
		if len(s.lastingOwners(t, head)) == 0 {
			violate("owner", "batch %d: no lasting owner left (answers: %s)", batch, describe(cmds))
			tok, a := s.create(s.ledgers[0], s.admin, httpapi.CreateRequest{Scope: "organization", Name: fmt.Sprintf("restored owner %d", batch), Role: string(domain.RoleOrganizationOwner)})
			if a.status != http.StatusCreated {
				t.Fatalf("restore an owner: %s", a)
			}
			ours = append(ours, tok.ID)
			head = tok.Sequence
		}
		for dep, ws := range s.splitDeployments(t, head) {
			if !split[dep] {
				split[dep] = true
				violate("deployment", "batch %d: deployment %s has active tokens in %v (answers: %s)", batch, dep, ws, describe(cmds))
			}
		}
		for _, l := range s.ledgers {
			list := s.listAt(t, l, head)
			seq, want := s.viewList()
			if diffs := compareListing(seq, want, list.Sequence, list.Tokens); len(diffs) > 0 {
				violate("view", "batch %d: ledger %s at sequence %d differs from the stream: %s", batch, l.name, list.Sequence, strings.Join(diffs[:min(3, len(diffs))], "; "))
			}
		}
	}

	// A rebuild made now, from the first event, agrees with the view the
	// test kept up to date all along, and with every instance.
	head := s.head(t)
	fresh := projections.NewTokens()
	stop := app.Feed(s.store, fresh, func(err error) { t.Logf("the fresh rebuild: %v", err) })
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fresh.WaitFor(ctx, head); err != nil {
		t.Fatalf("a fresh rebuild did not reach %d: %v", head, err)
	}
	for _, l := range s.ledgers {
		list := s.listAt(t, l, head)
		seq := fresh.Sequence()
		if diffs := compareListing(seq, fresh.List(multiOrg), list.Sequence, list.Tokens); len(diffs) > 0 {
			violate("view", "at the end: ledger %s differs from a fresh rebuild: %s", l.name, strings.Join(diffs[:min(3, len(diffs))], "; "))
		}
	}

	t.Logf("%d commands in %d batches; answers: %v; %d secrets retired; the latest acceptance of a retired secret came %s after its command",
		commands, batches, statuses, len(retired), latest.Round(time.Millisecond))
	for _, kind := range slices.Sorted(maps.Keys(violations)) {
		v := violations[kind]
		t.Errorf("%s: %d violations (seed %d), first: %s", kind, len(v), seed, strings.Join(v[:min(3, len(v))], " | "))
	}
}

// contested is a batch of two commands through two instances that only a
// rule enforced by the stream keeps apart: two lasting owners removing
// each other (deleting or demoting), or a new deployment's first tokens
// in two workspaces.
func (s *multiSuite) contested(rng *rand.Rand, batch int, actors, workspaces []string, nextDep *int) []*randCmd {
	i := rng.IntN(len(s.ledgers))
	l1, l2 := s.ledgers[i], s.ledgers[(i+1+rng.IntN(len(s.ledgers)-1))%len(s.ledgers)]
	if len(actors) >= 2 && rng.IntN(2) == 0 {
		j := rng.IntN(len(actors))
		x, y := actors[j], actors[(j+1+rng.IntN(len(actors)-1))%len(actors)]
		remove := func(l *ledgerProc, actor, target string) *randCmd {
			who := caller{secret: s.secretOf(actor), source: s.http.newSource()}
			c := &randCmd{ledger: l, actor: actor, target: target}
			if rng.IntN(2) == 0 {
				c.kind, c.event = "delete", domain.TokenDeleted
				c.send = func() answer { return s.call(l, "DELETE", "/v1/tokens/"+target, who, nil, nil) }
			} else {
				c.kind, c.event = "update", domain.TokenUpdated
				body := httpapi.UpdateRequest{Role: ptr(string(domain.RoleOrganizationMember))}
				c.send = func() answer { return s.call(l, "PATCH", "/v1/tokens/"+target, who, body, nil) }
			}
			return c
		}
		return []*randCmd{remove(l1, x, y), remove(l2, y, x)}
	}
	*nextDep++
	dep := fmt.Sprintf("rnd-new-dep-%d", *nextDep)
	j := rng.IntN(len(workspaces))
	ws1, ws2 := workspaces[j], workspaces[(j+1)%len(workspaces)]
	create := func(l *ledgerProc, ws string) *randCmd {
		c := &randCmd{ledger: l, kind: "create", event: domain.TokenCreated}
		who := s.admin
		if len(actors) > 0 {
			c.actor = actors[rng.IntN(len(actors))]
			who = caller{secret: s.secretOf(c.actor), source: s.http.newSource()}
		}
		req := httpapi.CreateRequest{Scope: "deployment", Name: fmt.Sprintf("contested %d in %s", batch, ws), WorkspaceID: ws, DeploymentID: dep}
		c.send = func() answer { return s.call(l, "POST", "/v1/tokens", who, req, nil) }
		return c
	}
	return []*randCmd{create(l1, ws1), create(l2, ws2)}
}

// describe is a batch's answers, short.
func describe(cmds []*randCmd) string {
	var out []string
	for _, c := range cmds {
		out = append(out, fmt.Sprintf("%s %s on %s: %d", c.kind, c.target, c.ledger.name, c.a.status))
	}
	return strings.Join(out, ", ")
}
