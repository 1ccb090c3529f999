package app_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/projections"
)

// readMatrix reads the README's permission matrix: for each acting token
// (row) and column, the operations allowed.
func readMatrix(t *testing.T) (columns []string, rows map[string]map[string][]string) {
	t.Helper()
	f, err := os.Open("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows = map[string]map[string][]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "<!-- permission-matrix"):
			in = true
			continue
		case strings.HasPrefix(line, "<!-- end of permission-matrix"):
			in = false
		}
		if !in || !strings.HasPrefix(line, "|") || strings.HasPrefix(line, "|---") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if columns == nil {
			columns = cells[1:]
			continue
		}
		row := map[string][]string{}
		for i, c := range cells[1:] {
			if c != "—" {
				row[columns[i]] = strings.Split(c, ", ")
			}
		}
		rows[cells[0]] = row
	}
	if len(rows) == 0 {
		t.Fatal("README.md has no permission matrix between its markers")
	}
	return columns, rows
}

// permissions is a ledger with an organization "acme" (workspaces w1 and w2,
// deployments d1 in w1 and d2 in w2) and a second organization, "globex".
type permissions struct {
	t        *testing.T
	ctx      context.Context
	ledger   *app.Ledger
	store    *eventstore.Store
	owner    app.Caller // acme's bootstrap owner, who sets the scene
	foreign  *domain.Token
	sequence func() uint64
}

func newPermissions(t *testing.T) *permissions {
	clk := &clock{now: time.Now()}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	l, store, owner := newLedger(t, clk, app.WithAuditKey(key))
	p := &permissions{t: t, ctx: context.Background(), ledger: l, store: store, owner: owner}
	p.sequence = func() uint64 {
		seq, err := store.LastSequence(p.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	// Another organization's token: its owner cannot be bootstrapped on a
	// stream that has one, so its event is appended as the ledger would.
	tok, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "globex", Scope: "workspace", WorkspaceID: "w1", Name: "globex ws"},
		domain.Env{Now: clk.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		t.Fatal(err)
	}
	ap, err := store.Append(p.ctx, e, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CatchUp(p.ctx); err != nil || ap.Sequence == 0 {
		t.Fatal(err)
	}
	p.foreign = tok
	return p
}

// make creates a token as acme's owner.
func (p *permissions) make(cmd domain.CreateToken) *domain.Token {
	p.t.Helper()
	res, err := p.ledger.CreateToken(p.ctx, p.owner, cmd, "")
	if err != nil {
		p.t.Fatalf("create %+v: %v", cmd, err)
	}
	return res.Token
}

func (p *permissions) assign(tok *domain.Token, ws, role string) *domain.Token {
	p.t.Helper()
	res, err := p.ledger.AssignToken(p.ctx, p.owner, tok.ID(), ws, role, "")
	if err != nil {
		p.t.Fatalf("assign: %v", err)
	}
	return res.Token
}

// actor makes a fresh token acting as the matrix row says.
func (p *permissions) actor(row string) app.Caller {
	p.t.Helper()
	var tok *domain.Token
	switch {
	case row == "ORGANIZATION_MEMBER assigned WORKSPACE_OWNER in W1":
		tok = p.assign(p.make(domain.CreateToken{Scope: "organization", Name: "member owning w1", Role: "ORGANIZATION_MEMBER"}), "w1", "WORKSPACE_OWNER")
	case strings.HasPrefix(row, "ORGANIZATION_"):
		tok = p.make(domain.CreateToken{Scope: "organization", Name: "actor", Role: row})
	case strings.HasPrefix(row, "WORKSPACE_"):
		tok = p.make(domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "actor", Role: row})
	case row == "DEPLOYMENT_ADMIN":
		tok = p.make(domain.CreateToken{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "actor"})
	default:
		p.t.Fatalf("the README's matrix has a row this test does not know: %q", row)
	}
	return app.Caller{Token: tok, RequestID: "req-matrix", SourceIP: "192.0.2.1", UserAgent: "matrix"}
}

// kinds are the matrix's columns: what a token of the column is created
// with, and whether it is another organization's.
var kinds = map[string]domain.CreateToken{
	"workspace token in W1":                 {Scope: "workspace", WorkspaceID: "w1", Name: "target", Role: "WORKSPACE_MEMBER"},
	"deployment token in W1":                {Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "target"},
	"organization token assigned to W1":     {Scope: "organization", Name: "target", Role: "ORGANIZATION_MEMBER"},
	"organization token not assigned to W1": {Scope: "organization", Name: "target", Role: "ORGANIZATION_MEMBER"},
	"workspace token in W2":                 {Scope: "workspace", WorkspaceID: "w2", Name: "target", Role: "WORKSPACE_MEMBER"},
	"deployment token in W2":                {Scope: "deployment", WorkspaceID: "w2", DeploymentID: "d2", Name: "target"},
	"token of another organization":         {OrganizationID: "globex", Scope: "workspace", WorkspaceID: "w1", Name: "target"},
}

// target makes the column's token for actor to act on.
func (p *permissions) target(column string, actor app.Caller) *domain.Token {
	p.t.Helper()
	switch column {
	case "its own token":
		return actor.Token
	case "token of another organization":
		return p.foreign
	case "organization token assigned to W1":
		return p.assign(p.make(kinds[column]), "w1", "WORKSPACE_MEMBER")
	}
	cmd, ok := kinds[column]
	if !ok {
		p.t.Fatalf("the README's matrix has a column this test does not know: %q", column)
	}
	return p.make(cmd)
}

// try does op as actor on the column's token and says whether it was
// allowed. A refusal must be a permission error (or, for another
// organization's token, not found) and must write nothing.
func (p *permissions) try(actor app.Caller, op domain.Operation, column string) (bool, error) {
	p.t.Helper()
	ctx, l := p.ctx, p.ledger
	var tok *domain.Token
	if op != domain.OpCreate {
		tok = p.target(column, actor)
	}
	if op == domain.OpUnassign {
		p.assign(tok, "w9", "WORKSPACE_MEMBER") // something to remove
	}
	before := p.sequence()
	var err error
	switch op {
	case domain.OpCreate:
		_, err = l.CreateToken(ctx, actor, kinds[column], "")
	case domain.OpRead:
		_, _, err = l.GetToken(ctx, actor, tok.ID(), 0)
	case domain.OpUpdate:
		name := "renamed"
		_, err = l.UpdateToken(ctx, actor, tok.ID(), domain.UpdateToken{Name: &name}, "")
	case domain.OpRotate:
		_, err = l.RotateToken(ctx, actor, tok.ID(), "")
	case domain.OpAssign:
		_, err = l.AssignToken(ctx, actor, tok.ID(), "w3", "WORKSPACE_MEMBER", "")
	case domain.OpUnassign:
		_, err = l.UnassignToken(ctx, actor, tok.ID(), "w9", "")
	case domain.OpDelete:
		_, err = l.DeleteToken(ctx, actor, tok.ID(), "")
	}
	if err == nil {
		return true, nil
	}
	var forbidden *app.ForbiddenError
	var notFound *domain.NotFoundError
	if !errors.As(err, &forbidden) && !(errors.As(err, &notFound) && column == "token of another organization") {
		return false, fmt.Errorf("refused, but not for permission: %w", err)
	}
	if after := p.sequence(); after != before {
		return false, fmt.Errorf("refused (%v) but the stream moved from %d to %d", err, before, after)
	}
	if op == domain.OpRead {
		// What a token may not show, it may not list or trace either.
		if err := p.hidden(actor, tok); err != nil {
			return false, err
		}
	}
	return false, nil
}

// hidden checks that tok is in none of actor's other reads.
func (p *permissions) hidden(actor app.Caller, tok *domain.Token) error {
	list, _, err := p.ledger.ListTokens(p.ctx, actor, 0)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(list, func(l projections.Listed) bool { return l.Token.ID() == tok.ID() }) {
		return errors.New("refused to show, but listed")
	}
	if _, err := p.ledger.TokenHistory(p.ctx, actor, tok.ID()); err == nil {
		return errors.New("refused to show, but its history is shown")
	}
	if _, _, err := p.ledger.TokenAt(p.ctx, actor, tok.ID(), time.Now()); err == nil {
		return errors.New("refused to show, but its past state is shown")
	}
	return nil
}

// TestPermissionMatrix runs every row of the README's permission matrix
// against every column and every operation, each on fresh tokens, and
// checks that exactly the operations the README lists are allowed.
func TestPermissionMatrix(t *testing.T) {
	columns, rows := readMatrix(t)
	p := newPermissions(t)
	if len(rows) != 10 {
		t.Fatalf("the README's matrix has %d rows, want the 10 kinds of acting token", len(rows))
	}
	for row, allowed := range rows {
		for _, column := range columns {
			if column == "audit export" {
				actor := p.actor(row)
				_, err := p.ledger.Export(p.ctx, actor, app.ExportQuery{Format: "jsonl"}, app.ExportOutput{File: discard{}})
				want := len(allowed[column]) > 0 && allowed[column][0] == "yes"
				var forbidden *app.ForbiddenError
				if (err == nil) != want || (err != nil && !errors.As(err, &forbidden)) {
					t.Errorf("%s: export: %v, README says %v", row, err, allowed[column])
				}
				continue
			}
			for _, op := range domain.Operations {
				switch {
				case op == domain.OpExport:
					continue
				case op == domain.OpCreate && column == "its own token":
					continue // one cannot create oneself
				case (op == domain.OpAssign || op == domain.OpUnassign) && !orgTokenColumn(column, row):
					continue // only organization tokens are assigned to workspaces
				}
				want := slices.Contains(allowed[column], string(op))
				got, err := p.try(p.actor(row), op, column)
				if err != nil {
					t.Errorf("%s, %s on %s: %v", row, op, column, err)
				} else if got != want {
					t.Errorf("%s, %s on %s: allowed %v, README says %v", row, op, column, got, want)
				}
			}
		}
	}
}

// orgTokenColumn: the column's token is an organization token.
func orgTokenColumn(column, row string) bool {
	return column == "organization token assigned to W1" || column == "organization token not assigned to W1" ||
		column == "its own token" && strings.HasPrefix(row, "ORGANIZATION_")
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

// Escalations: each is refused with the rule, and writes nothing.
func TestEscalationsAreRefusedAndWriteNothing(t *testing.T) {
	p := newPermissions(t)
	wsOwner := p.actor("WORKSPACE_OWNER")
	operator := p.actor("WORKSPACE_OPERATOR")
	assignedOwner := p.actor("ORGANIZATION_MEMBER assigned WORKSPACE_OWNER in W1")
	w1Owner := p.make(domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "another w1 owner", Role: "WORKSPACE_OWNER"})
	w1Member := p.make(domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "w1 member"})
	ownerRole := "WORKSPACE_OWNER"
	for _, c := range []struct {
		name  string
		field string
		do    func() error
	}{
		{"a workspace owner creates an organization owner", "scope", func() error {
			_, err := p.ledger.CreateToken(p.ctx, wsOwner, domain.CreateToken{Scope: "organization", Name: "boss", Role: "ORGANIZATION_OWNER"}, "")
			return err
		}},
		{"an operator creates a workspace owner", "role", func() error {
			_, err := p.ledger.CreateToken(p.ctx, operator, domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "boss", Role: "WORKSPACE_OWNER"}, "")
			return err
		}},
		{"an operator makes a workspace member an owner", "token_id", func() error {
			_, err := p.ledger.UpdateToken(p.ctx, operator, w1Member.ID(), domain.UpdateToken{Role: &ownerRole}, "")
			return err
		}},
		{"an operator rotates a workspace owner's token (and would hold its secret)", "token_id", func() error {
			_, err := p.ledger.RotateToken(p.ctx, operator, w1Owner.ID(), "")
			return err
		}},
		{"a workspace owner assigns itself to another workspace", "workspace_id", func() error {
			_, err := p.ledger.AssignToken(p.ctx, assignedOwner, assignedOwner.Token.ID(), "w2", "WORKSPACE_OWNER", "")
			return err
		}},
		{"a workspace owner raises its own organization role", "token_id", func() error {
			role := "ORGANIZATION_OWNER"
			_, err := p.ledger.UpdateToken(p.ctx, assignedOwner, assignedOwner.Token.ID(), domain.UpdateToken{Role: &role}, "")
			return err
		}},
		{"a workspace owner creates a token in another workspace", "workspace_id", func() error {
			_, err := p.ledger.CreateToken(p.ctx, assignedOwner, domain.CreateToken{Scope: "workspace", WorkspaceID: "w2", Name: "elsewhere", Role: "WORKSPACE_OWNER"}, "")
			return err
		}},
		{"a workspace owner acts in another organization", "organization_id", func() error {
			_, err := p.ledger.CreateToken(p.ctx, wsOwner, domain.CreateToken{OrganizationID: "globex", Scope: "workspace", WorkspaceID: "w1", Name: "abroad"}, "")
			return err
		}},
	} {
		before := p.sequence()
		err := c.do()
		var forbidden *app.ForbiddenError
		if !errors.As(err, &forbidden) || forbidden.Field != c.field || forbidden.Rule == "" {
			t.Errorf("%s: %v, want 403 on field %s with its rule", c.name, err, c.field)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
		if after := p.sequence(); after != before {
			t.Errorf("%s: the stream moved from %d to %d", c.name, before, after)
		}
	}
}

// A deployment keeps the workspace its tokens name: an operator of w2
// cannot mint a token for w1's deployment by calling it w2's.
func TestADeploymentStaysInItsWorkspace(t *testing.T) {
	p := newPermissions(t)
	p.make(domain.CreateToken{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "etl-prod", Name: "etl"})
	operator := p.make(domain.CreateToken{Scope: "workspace", WorkspaceID: "w2", Name: "w2 operator", Role: "WORKSPACE_OPERATOR"})
	before := p.sequence()
	_, err := p.ledger.CreateToken(p.ctx, app.Caller{Token: operator}, domain.CreateToken{Scope: "deployment", WorkspaceID: "w2", DeploymentID: "etl-prod", Name: "borrowed"}, "")
	var state *domain.StateError
	if !errors.As(err, &state) || state.Field != "deployment_id" {
		t.Fatalf("a token for another workspace's deployment: %v, want a conflict on deployment_id", err)
	}
	if after := p.sequence(); after != before {
		t.Errorf("the stream moved from %d to %d", before, after)
	}
}

// Verify tells a caller nothing about tokens it may not read.
func TestVerifyAnswersUnknownForTokensOutOfReach(t *testing.T) {
	p := newPermissions(t)
	res, err := p.ledger.CreateToken(p.ctx, p.owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "w2", Name: "w2 token"}, "")
	if err != nil {
		t.Fatal(err)
	}
	w1 := p.actor("WORKSPACE_OWNER")
	v, err := p.ledger.Verify(p.ctx, w1, res.Secret.Reveal())
	if err != nil || v.Outcome != projections.OutcomeUnknown || v.Token() != nil {
		t.Errorf("a w1 token verifying a w2 secret: %v (%v)", v.Outcome, err)
	}
	v, err = p.ledger.Verify(p.ctx, p.actor("ORGANIZATION_MEMBER"), res.Secret.Reveal())
	if err != nil || v.Outcome != projections.OutcomeActive || v.Token() == nil {
		t.Errorf("an organization member verifying a w2 secret: %v (%v)", v.Outcome, err)
	}
}

// A retry is judged like the first attempt: repeating another caller's keyed
// create does not answer with its token when the caller could not have
// created it, and a key another workspace's token used is no key of this
// caller's: its command runs as its own and says nothing of the other's.
func TestAReplayIsNoWayAround(t *testing.T) {
	p := newPermissions(t)
	cmd := domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "boss", Role: "WORKSPACE_OWNER"}
	first, err := p.ledger.CreateToken(p.ctx, p.owner, cmd, "owner-key-1")
	if err != nil {
		t.Fatal(err)
	}
	operator := p.actor("WORKSPACE_OPERATOR")
	before := p.sequence()
	_, err = p.ledger.CreateToken(p.ctx, operator, cmd, "owner-key-1")
	var forbidden *app.ForbiddenError
	if !errors.As(err, &forbidden) || p.sequence() != before {
		t.Fatalf("an operator repeating the owner's keyed create of a workspace owner: %v, want 403 and nothing written", err)
	}
	w2 := p.make(domain.CreateToken{Scope: "workspace", WorkspaceID: "w2", Name: "w2 owner", Role: "WORKSPACE_OWNER"})
	depW2 := p.make(domain.CreateToken{Scope: "deployment", WorkspaceID: "w2", DeploymentID: "d2", Name: "d2"})
	if _, err := p.ledger.RotateToken(p.ctx, app.Caller{Token: w2}, depW2.ID(), "w2-key"); err != nil {
		t.Fatal(err)
	}
	w1Operator := p.actor("WORKSPACE_OPERATOR")
	depW1 := p.make(domain.CreateToken{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "d1"})
	res, err := p.ledger.RotateToken(p.ctx, w1Operator, depW1.ID(), "w2-key")
	if err != nil || res.Replayed || res.Token.ID() != depW1.ID() || res.Secret.IsZero() {
		t.Fatalf("another workspace's key: replayed %t, %v; want a rotation of %s, the caller's own command", res.Replayed, err, depW1.ID())
	}
	if first.Token == nil {
		t.Fatal("the owner's create answered no token")
	}
}

// A deployment stays in its workspace after its tokens are gone.
func TestADeploymentKeepsItsWorkspaceWhenItsTokensAreGone(t *testing.T) {
	p := newPermissions(t)
	etl := p.make(domain.CreateToken{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "etl-prod", Name: "etl"})
	if _, err := p.ledger.DeleteToken(p.ctx, p.owner, etl.ID(), ""); err != nil {
		t.Fatal(err)
	}
	operator := p.make(domain.CreateToken{Scope: "workspace", WorkspaceID: "w2", Name: "w2 operator", Role: "WORKSPACE_OPERATOR"})
	before := p.sequence()
	_, err := p.ledger.CreateToken(p.ctx, app.Caller{Token: operator}, domain.CreateToken{Scope: "deployment", WorkspaceID: "w2", DeploymentID: "etl-prod", Name: "taken over"}, "")
	var state *domain.StateError
	if !errors.As(err, &state) || state.Field != "deployment_id" || strings.Contains(state.Rule, "w1") {
		t.Fatalf("a deployment whose tokens are deleted, claimed by another workspace: %v, want a conflict on deployment_id that does not name w1", err)
	}
	if after := p.sequence(); after != before {
		t.Errorf("the stream moved from %d to %d", before, after)
	}
	// Its own workspace may still give it tokens.
	if _, err := p.ledger.CreateToken(p.ctx, p.owner, domain.CreateToken{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "etl-prod", Name: "etl again"}, ""); err != nil {
		t.Fatal(err)
	}
}
