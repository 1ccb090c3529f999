package exporters

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// history is a ledger's events in stream order (event i is stored at sequence
// i+1), made through the domain's own commands, and every secret it issued.
type history struct {
	events  []domain.Event
	secrets []domain.Secret
}

func (h history) rows() []Row {
	rows := make([]Row, len(h.events))
	for i, e := range h.events {
		rows[i] = RowOf(uint64(i+1), e)
	}
	return rows
}

// Names and descriptions a real ledger meets: unicode, quotes, backslashes,
// characters JSON and HTML escape; descriptions also newlines, tabs and
// JavaScript's line separators (names refuse control characters, line
// separators and bidirectional controls).
var (
	names = []string{
		"ci deploy", `"quoted" name`, `back\slash`, "Ünïcødé 🚀 名前", "<script>&amp;</script>",
		"line, sep; para", "tab-free 'single' quotes", "emoji 👩‍👩‍👧‍👦", "Ω≈ç√∫", "plain",
	}
	descriptions = []string{
		"", "multi\nline\ndescription", "tabs\there\tand\n\nblank line", `{"json":"inside"}`,
		"ünïcode\u2028and\u2029separators", "trailing spaces   ", "\\u0000 is not a NUL", "null",
	}
	userAgents = []string{"", "ledger-cli", "curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64) \"quoted\" ünï", "python-requests/2.31 \u00e9\u00e8"}
	sourceIPs  = []string{"", "10.0.0.7", "192.168.1.20", "2001:db8::1", "::1"}
)

// makeHistory runs a varied, seeded history: tokens of every scope, expiring
// and not, then updates, rotations, assignments, unassignments and deletions
// interleaved across tokens, until there are at least events events.
func makeHistory(tb testing.TB, tokens, events int, seed uint64) history {
	tb.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	randSrc := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 42})
	now := time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.UTC)
	var h history
	var live []*domain.Token
	retired := map[string]string{} // token id -> fingerprint of a secret rotated away
	actor := domain.SystemActor
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	env := func() domain.Env {
		// A clock with nanoseconds: the domain must cut them to microseconds.
		now = now.Add(time.Duration(rng.IntN(5000)+1)*time.Millisecond + time.Duration(rng.IntN(1000)))
		a := domain.Actor{TokenID: actor, SourceIP: pick(sourceIPs), UserAgent: pick(userAgents)}
		if rng.IntN(4) > 0 {
			a.RequestID = fmt.Sprintf("req-%06d", rng.IntN(1_000_000))
		}
		return domain.Env{Now: now, Rand: randSrc, Actor: a}
	}
	add := func(e domain.Event) {
		h.events = append(h.events, e)
		if e.Hash.String() != e.Record().ChainHash() {
			tb.Fatalf("domain made an event whose Hash is not its record's ChainHash: %+v", e)
		}
	}
	create := func(i int) {
		cmd := domain.CreateToken{OrganizationID: "org-main", Name: fmt.Sprintf("%s #%d", names[i%len(names)], i), Description: descriptions[i%len(descriptions)]}
		switch i % 3 {
		case 0:
			cmd.Scope = "organization"
			cmd.Role = []string{"", "ORGANIZATION_OWNER", "organization_billing_admin"}[i%9/3]
		case 1:
			cmd.Scope, cmd.WorkspaceID = "WORKSPACE", fmt.Sprintf("ws-%d", i%4)
			cmd.Role = []string{"", "WORKSPACE_OWNER", "WORKSPACE_OPERATOR", "WORKSPACE_AUTHOR", "WORKSPACE_ACCESSOR"}[i%5]
		case 2:
			cmd.Scope, cmd.WorkspaceID, cmd.DeploymentID = "DEPLOYMENT", fmt.Sprintf("ws-%d", i%4), fmt.Sprintf("dep-%d", i%7)
		}
		if i%4 == 1 {
			days := 1 + i%365
			cmd.ExpirationDays = &days
		}
		tok, e, secret, err := domain.Create(cmd, env())
		if err != nil {
			tb.Fatalf("create %+v: %v", cmd, err)
		}
		add(e)
		h.secrets = append(h.secrets, secret)
		live = append(live, tok)
		if actor == domain.SystemActor {
			actor = tok.ID() // later events are made by the first token
		}
	}
	for i := range tokens {
		create(i)
	}
	for len(h.events) < events {
		if len(live) == 0 || rng.IntN(20) == 0 {
			create(len(h.secrets))
			continue
		}
		k := rng.IntN(len(live))
		tok := live[k]
		var (
			e       domain.Event
			changed = true
			err     error
		)
		switch op := rng.IntN(12); {
		case op < 3:
			var cmd domain.UpdateToken
			if rng.IntN(2) == 0 {
				n := fmt.Sprintf("%s v%d", pick(names), tok.Version())
				cmd.Name = &n
			}
			if rng.IntN(2) == 0 {
				d := pick(descriptions) + fmt.Sprint(tok.Version())
				cmd.Description = &d
			}
			if rng.IntN(2) == 0 {
				roles := domain.RolesOf(tok.Scope())
				r := string(roles[rng.IntN(len(roles))])
				cmd.Role = &r
			}
			if cmd.Name == nil && cmd.Description == nil && cmd.Role == nil {
				n := "renamed " + fmt.Sprint(tok.Version())
				cmd.Name = &n
			}
			e, changed, err = tok.Update(cmd, env())
		case op < 6:
			var s domain.Secret
			retired[tok.ID()] = tok.Fingerprint()
			e, s, err = tok.Rotate(env())
			h.secrets = append(h.secrets, s)
		case op < 10 && tok.Scope() == domain.ScopeOrganization:
			roles := domain.RolesOf(domain.ScopeWorkspace)
			e, changed, err = tok.Assign(fmt.Sprintf("ws-%d", rng.IntN(4)), string(roles[rng.IntN(len(roles))]), env())
		case op < 11 && len(tok.WorkspaceRoles()) > 0:
			var wss []string // in workspace order: the history must not depend on map order
			tok.EachWorkspaceRole(func(ws string, _ domain.Role) { wss = append(wss, ws) })
			e, err = tok.Unassign(wss[rng.IntN(len(wss))], env())
		case op == 11 && rng.IntN(3) == 0:
			e, err = tok.Delete(env())
			live = append(live[:k], live[k+1:]...)
		case op == 11 && retired[tok.ID()] != "":
			// Someone presented a secret the token had before: the
			// ledger's report, made by no token.
			env := env()
			env.Actor.TokenID = domain.SystemActor
			e, err = tok.RecordReuse(retired[tok.ID()], env)
		default:
			continue
		}
		if err != nil {
			tb.Fatalf("command on %s: %v", tok.ID(), err)
		}
		if changed {
			add(e)
		}
	}
	return h
}

// TestHistoryIsVaried guards the fixture: the export tests prove little on a
// history that lacks an event type, a scope or the awkward strings.
func TestHistoryIsVaried(t *testing.T) {
	h := makeHistory(t, 30, 400, 1)
	types := map[domain.EventType]int{}
	scopes := map[domain.Scope]int{}
	var expiring, prevRole, multiline, nullable int
	for _, r := range h.rows() {
		types[r.EventType]++
		scopes[r.Scope]++
		if r.Role != "" && r.PreviousRole != "" {
			prevRole++
		}
		if r.WorkspaceID == "" || r.SourceIP == "" || r.RequestID == "" {
			nullable++
		}
		if strings.Contains(r.Details, "expires_at") {
			expiring++
		}
		if strings.Contains(r.Details, `\n`) {
			multiline++
		}
	}
	for _, et := range domain.EventTypes {
		if types[et] == 0 {
			t.Errorf("no %s event in the history", et)
		}
	}
	for _, s := range []domain.Scope{domain.ScopeOrganization, domain.ScopeWorkspace, domain.ScopeDeployment} {
		if scopes[s] == 0 {
			t.Errorf("no %s token in the history", s)
		}
	}
	if expiring == 0 || prevRole == 0 || multiline == 0 || nullable == 0 {
		t.Errorf("history lacks variety: expiring %d, role changes %d, multi-line descriptions %d, rows with nulls %d", expiring, prevRole, multiline, nullable)
	}
}
