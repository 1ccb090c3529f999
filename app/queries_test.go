package app_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/projections"
)

// fixture is a small organization: the bootstrap owner and one token of
// every kind, some assigned, one expired, one deleted.
type fixture struct {
	l                  *app.Ledger
	owner              app.Caller
	clk                *clock
	orgW1, orgW2       string // organization tokens assigned to w1 (owner role) and w2
	wsW1, wsW1Old      string // workspace tokens of w1; wsW1Old has expired
	wsW2               string
	depD1, depD2, gone string // deployment tokens d1 and d2 in w1; gone was in w1, deleted
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, _, owner := newLedger(t, clk)
	f := &fixture{l: l, owner: owner, clk: clk}
	clk.Advance(time.Second) // lists are ordered by creation time: after the bootstrap token
	ctx := context.Background()
	create := func(cmd domain.CreateToken) string {
		t.Helper()
		res, err := l.CreateToken(ctx, owner, cmd, "")
		if err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second)
		return res.Token.ID()
	}
	must := func(_ app.Result, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	one := 1
	f.orgW1 = create(domain.CreateToken{Scope: "organization", Name: "org-w1"})
	f.orgW2 = create(domain.CreateToken{Scope: "organization", Name: "org-w2", Role: "ORGANIZATION_BILLING_ADMIN"})
	f.wsW1 = create(domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "ws-w1", Role: "WORKSPACE_OPERATOR"})
	f.wsW1Old = create(domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "ws-w1-old", Role: "WORKSPACE_OWNER", ExpirationDays: &one})
	f.wsW2 = create(domain.CreateToken{Scope: "workspace", WorkspaceID: "w2", Name: "ws-w2", Role: "WORKSPACE_OWNER"})
	f.depD1 = create(domain.CreateToken{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "dep-d1"})
	f.depD2 = create(domain.CreateToken{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d2", Name: "dep-d2"})
	f.gone = create(domain.CreateToken{Scope: "deployment", WorkspaceID: "w1", DeploymentID: "d1", Name: "dep-gone"})
	must(l.AssignToken(ctx, owner, f.orgW1, "w1", "WORKSPACE_OWNER", ""))
	must(l.AssignToken(ctx, owner, f.orgW2, "w2", "WORKSPACE_AUTHOR", ""))
	must(l.DeleteToken(ctx, owner, f.gone, ""))
	clk.Advance(48 * time.Hour) // ws-w1-old expires
	return f
}

func (f *fixture) find(t *testing.T, filter app.TokenFilter) []string {
	t.Helper()
	got, seq, err := f.l.FindTokens(context.Background(), f.owner, filter, 0)
	if err != nil {
		t.Fatalf("find %+v: %v", filter, err)
	}
	if seq == 0 {
		t.Fatal("a list answered without its sequence")
	}
	ids := make([]string, len(got))
	for i, l := range got {
		ids[i] = l.Token.ID()
	}
	return ids
}

func TestFindTokensCombinesItsFilters(t *testing.T) {
	f := newFixture(t)
	boot := f.owner.Token.ID()
	cases := []struct {
		name   string
		filter app.TokenFilter
		want   []string
	}{
		{"no filter: everything, deleted included", app.TokenFilter{}, []string{boot, f.orgW1, f.orgW2, f.wsW1, f.wsW1Old, f.wsW2, f.depD1, f.depD2, f.gone}},
		{"scope in any case", app.TokenFilter{Scope: ptr(" Workspace ")}, []string{f.wsW1, f.wsW1Old, f.wsW2}},
		{"workspace: its tokens, its deployments' tokens, organization tokens assigned to it", app.TokenFilter{WorkspaceID: ptr("w1")},
			[]string{f.orgW1, f.wsW1, f.wsW1Old, f.depD1, f.depD2, f.gone}},
		{"workspace w2", app.TokenFilter{WorkspaceID: ptr("w2")}, []string{f.orgW2, f.wsW2}},
		{"a workspace nobody holds", app.TokenFilter{WorkspaceID: ptr("w9")}, []string{}},
		{"deployment", app.TokenFilter{DeploymentID: ptr("d1")}, []string{f.depD1, f.gone}},
		{"role: the token's own", app.TokenFilter{Role: ptr("workspace_owner")}, []string{f.wsW1Old, f.wsW2}},
		{"role in a workspace: an organization token's assigned role counts", app.TokenFilter{WorkspaceID: ptr("w1"), Role: ptr("WORKSPACE_OWNER")}, []string{f.orgW1, f.wsW1Old}},
		{"role in a workspace: deployment tokens hold DEPLOYMENT_ADMIN", app.TokenFilter{WorkspaceID: ptr("w1"), Role: ptr("DEPLOYMENT_ADMIN")}, []string{f.depD1, f.depD2, f.gone}},
		{"an organization role is not held in a workspace", app.TokenFilter{WorkspaceID: ptr("w2"), Role: ptr("ORGANIZATION_BILLING_ADMIN")}, []string{}},
		{"status active", app.TokenFilter{Status: ptr("active")}, []string{boot, f.orgW1, f.orgW2, f.wsW1, f.wsW2, f.depD1, f.depD2}},
		{"status expired, by the ledger's clock", app.TokenFilter{Status: ptr("EXPIRED")}, []string{f.wsW1Old}},
		{"status deleted", app.TokenFilter{Status: ptr("deleted")}, []string{f.gone}},
		{"workspace and status", app.TokenFilter{WorkspaceID: ptr("w1"), Status: ptr("active")}, []string{f.orgW1, f.wsW1, f.depD1, f.depD2}},
		{"workspace and scope", app.TokenFilter{WorkspaceID: ptr("w1"), Scope: ptr("organization")}, []string{f.orgW1}},
		{"workspace and deployment", app.TokenFilter{WorkspaceID: ptr("w1"), DeploymentID: ptr("d2")}, []string{f.depD2}},
		{"a deployment in another workspace", app.TokenFilter{WorkspaceID: ptr("w2"), DeploymentID: ptr("d2")}, []string{}},
		{"deployment and status", app.TokenFilter{DeploymentID: ptr("d1"), Status: ptr("active")}, []string{f.depD1}},
		{"scope and role", app.TokenFilter{Scope: ptr("organization"), Role: ptr("ORGANIZATION_OWNER")}, []string{boot}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := f.find(t, tc.filter); !slices.Equal(got, tc.want) {
				t.Fatalf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestFindTokensNamesEveryBadFilterValue(t *testing.T) {
	f := newFixture(t)
	_, _, err := f.l.FindTokens(context.Background(), f.owner, app.TokenFilter{
		Scope: ptr("galaxy"), WorkspaceID: ptr("a.b"), DeploymentID: ptr(""), Role: ptr("SUPERUSER"), Status: ptr("gone"),
	}, 0)
	var verr *domain.ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("err = %v, want a validation error", err)
	}
	var fields []string
	for _, p := range verr.Problems {
		if p.Rule == "" {
			t.Errorf("%s has no rule", p.Field)
		}
		fields = append(fields, p.Field)
	}
	if want := []string{"scope", "workspace_id", "deployment_id", "role", "status"}; !slices.Equal(fields, want) {
		t.Fatalf("fields %v, want %v", fields, want)
	}
}

func TestHoldingsAnswerWhoCanActInAWorkspaceOrADeployment(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	got, seq, err := f.l.Holdings(ctx, f.owner, ptr("w1"), nil, 0)
	if err != nil || seq == 0 {
		t.Fatalf("holdings in w1: %v (sequence %d)", err, seq)
	}
	type held struct {
		id   string
		role domain.Role
		how  projections.How
	}
	var have []held
	for _, h := range got {
		have = append(have, held{h.Token.ID(), h.Role, h.How})
	}
	// Ordered by name; the expired and the deleted token cannot act.
	want := []held{
		{f.depD1, domain.RoleDeploymentAdmin, projections.HeldByDeploymentToken},
		{f.depD2, domain.RoleDeploymentAdmin, projections.HeldByDeploymentToken},
		{f.orgW1, domain.RoleWorkspaceOwner, projections.HeldByOrganizationToken},
		{f.wsW1, domain.RoleWorkspaceOperator, projections.HeldByWorkspaceToken},
	}
	if !slices.Equal(have, want) {
		t.Fatalf("w1:\ngot  %v\nwant %v", have, want)
	}
	got, _, err = f.l.Holdings(ctx, f.owner, nil, ptr("d1"), 0)
	if err != nil || len(got) != 1 || got[0].Token.ID() != f.depD1 {
		t.Fatalf("d1 = %v, %v; want dep-d1 alone (dep-gone is deleted)", got, err)
	}

	for _, tc := range []struct {
		name    string
		ws, dep *string
		fields  []string
	}{
		{"neither", nil, nil, []string{"workspace_id", "deployment_id"}},
		{"both", ptr("w1"), ptr("d1"), []string{"workspace_id", "deployment_id"}},
		{"a bad workspace id", ptr("w 1"), nil, []string{"workspace_id"}},
		{"an empty deployment id", nil, ptr(""), []string{"deployment_id"}},
	} {
		_, _, err := f.l.Holdings(ctx, f.owner, tc.ws, tc.dep, 0)
		var verr *domain.ValidationError
		if !errors.As(err, &verr) {
			t.Fatalf("%s: %v, want a validation error", tc.name, err)
		}
		for _, field := range tc.fields {
			if !slices.ContainsFunc(verr.Problems, func(p domain.FieldError) bool { return p.Field == field }) {
				t.Errorf("%s: %v does not name %s", tc.name, err, field)
			}
		}
	}
}

func TestATokenAsItWasAtAnyTime(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	l, _, owner := newLedger(t, clk)
	ctx := context.Background()
	t0 := clk.Now()
	days := 30
	res, err := l.CreateToken(ctx, owner, domain.CreateToken{Scope: "organization", Name: "first", ExpirationDays: &days}, "")
	if err != nil {
		t.Fatal(err)
	}
	id := res.Token.ID()
	clk.Advance(time.Hour) // t0+1h
	up, err := l.UpdateToken(ctx, owner, id, domain.UpdateToken{Name: ptr("second"), Role: ptr("ORGANIZATION_BILLING_ADMIN")}, "")
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour) // t0+2h
	if _, err := l.AssignToken(ctx, owner, id, "w1", "WORKSPACE_MEMBER", ""); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour) // t0+3h
	del, err := l.DeleteToken(ctx, owner, id, "")
	if err != nil {
		t.Fatal(err)
	}

	_, _, err = l.TokenAt(ctx, owner, id, t0.Add(-time.Second))
	var nf *domain.NotFoundError
	if !errors.As(err, &nf) || nf.Field != "at" {
		t.Fatalf("before creation: %v, want not found on field at", err)
	}
	for _, tc := range []struct {
		at      time.Time
		name    string
		role    domain.Role
		assign  bool
		status  domain.Status
		version uint64
		seq     uint64
	}{
		{t0, "first", domain.RoleOrganizationMember, false, domain.StatusActive, 1, res.Sequence},
		{t0.Add(90 * time.Minute), "second", domain.RoleOrganizationBillingAdmin, false, domain.StatusActive, 2, up.Sequence},
		{t0.Add(2 * time.Hour), "second", domain.RoleOrganizationBillingAdmin, true, domain.StatusActive, 3, up.Sequence + 1},
		{t0.Add(4 * time.Hour), "second", domain.RoleOrganizationBillingAdmin, true, domain.StatusDeleted, 4, del.Sequence},
	} {
		tok, seq, err := l.TokenAt(ctx, owner, id, tc.at)
		if err != nil {
			t.Fatalf("at %v: %v", tc.at, err)
		}
		_, assigned := tok.WorkspaceRole("w1")
		if tok.Name() != tc.name || tok.Role() != tc.role || assigned != tc.assign || tok.Status(tc.at) != tc.status || tok.Version() != tc.version || seq != tc.seq {
			t.Errorf("at %v: %s %s assigned=%v %s v%d seq %d; want %s %s %v %s v%d seq %d", tc.at,
				tok.Name(), tok.Role(), assigned, tok.Status(tc.at), tok.Version(), seq, tc.name, tc.role, tc.assign, tc.status, tc.version, tc.seq)
		}
	}
	// Expiry is judged at the time asked about.
	tok, _, _ := l.TokenAt(ctx, owner, id, t0.Add(2*time.Hour))
	if tok.Status(t0.Add(31*24*time.Hour)) != domain.StatusExpired {
		t.Error("the token as of t0+2h is not expired 31 days later")
	}

	hist, err := l.TokenHistory(ctx, owner, id)
	if err != nil || len(hist) != 4 {
		t.Fatalf("history: %d events, %v", len(hist), err)
	}
	for i, r := range hist {
		if r.Event.Version != uint64(i+1) || (i > 0 && r.Sequence <= hist[i-1].Sequence) {
			t.Fatalf("history out of order at %d: v%d seq %d", i, r.Event.Version, r.Sequence)
		}
	}
	for _, unknown := range []string{"tok_aaaaaaaaaaaaaaaaaaaaaaaaaa", "not-an-id"} {
		if _, err := l.TokenHistory(ctx, owner, unknown); !errors.As(err, &nf) || nf.Field != "token_id" {
			t.Errorf("history of %s: %v, want not found on token_id", unknown, err)
		}
		if _, _, err := l.TokenAt(ctx, owner, unknown, t0); !errors.As(err, &nf) || nf.Field != "token_id" {
			t.Errorf("%s at t0: %v, want not found on token_id", unknown, err)
		}
	}
}

func TestTheHistoryOfAQuarantinedTokenIsRefusedNotRetried(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	store, js, _ := eventstoretest.MustStore(t)
	view := projections.NewTokens()
	l := app.New(store, view, app.WithClock(clk.Now))
	t.Cleanup(app.Feed(store, view, nil))
	boot, _, err := l.Bootstrap(context.Background(), "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := app.Caller{Token: boot}
	ctx := context.Background()
	res, err := l.CreateToken(ctx, c, domain.CreateToken{Scope: "organization", Name: "victim"}, "")
	if err != nil {
		t.Fatal(err)
	}
	// A writer bypassing the ledger stores garbage on the token's subject.
	if _, err := js.Publish(ctx, "ledger.tokens.acme."+res.Token.ID()+".TokenDeleted", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if err := l.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = l.TokenHistory(ctx, c, res.Token.ID())
	var se *domain.StateError
	if !errors.As(err, &se) || se.Field != "token_id" || errors.Is(err, app.ErrUnavailable) {
		t.Fatalf("history of a quarantined token: %v, want a state error on token_id", err)
	}
}
