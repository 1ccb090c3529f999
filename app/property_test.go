package app_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/projections"
)

// TestViewsAgreeWhateverTheCommands drives random sequences of valid and
// invalid commands, in two organizations, and checks that the view built as
// they happened equals the view rebuilt from the stream, equals each token
// folded from its own events through the domain, and equals a view restarted
// from a snapshot and fed the rest of the stream.
func TestViewsAgreeWhateverTheCommands(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			checkViewsAgree(t, seed, 750)
		})
	}
}

func checkViewsAgree(t *testing.T, seed uint64, commands int) {
	ctx := context.Background()
	rnd := mrand.New(mrand.NewPCG(seed, seed))
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	store, _, _ := eventstoretest.MustStore(t)
	live := projections.NewTokens()
	l := app.New(store, live, app.WithClock(clk.Now))
	t.Cleanup(app.Feed(store, live, nil))
	acme, _, err := l.Bootstrap(ctx, "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	globex := writeOwner(t, store, live, "globex", clk.Now())
	callers := []app.Caller{{Token: acme, RequestID: "r"}, {Token: globex, RequestID: "r"}}

	ok, refused := run(t, rnd, l, live, callers, clk, commands)
	if ok < commands/3 || refused < commands/10 {
		t.Fatalf("%d commands succeeded and %d were refused: the generator is not exercising both", ok, refused)
	}
	must(t, l.CatchUp(ctx))

	// 1. Rebuilt from the stream.
	rebuilt := follow(t, store)
	if rebuilt.Digest() != live.Digest() {
		t.Fatal("the view rebuilt from the stream differs from the one built live")
	}
	// 2. Each token folded from its own history through the domain.
	for _, org := range []string{"acme", "globex"} {
		for _, got := range live.List(org) {
			hist, err := store.Load(ctx, org, got.Token.ID())
			must(t, err)
			events := make([]domain.Event, len(hist))
			for i, r := range hist {
				events[i] = r.Event
			}
			folded, err := domain.Replay(events)
			must(t, err)
			if a, b := normal(folded.State()), normal(got.Token.State()); !reflect.DeepEqual(a, b) {
				t.Fatalf("token %s folded from its events:\n%+v\nin the view:\n%+v", got.Token.ID(), a, b)
			}
			if last := hist[len(hist)-1].Sequence; got.Sequence != last {
				t.Fatalf("token %s: view says last event at %d, stream at %d", got.Token.ID(), got.Sequence, last)
			}
		}
	}
	// 3. Restarted from a snapshot, then fed what came after it.
	path := filepath.Join(t.TempDir(), "TOKENS.snap")
	id, err := store.Identity(ctx)
	must(t, err)
	_, err = live.SaveSnapshot(path, "TOKENS", id.Created)
	must(t, err)
	run(t, rnd, l, live, callers, clk, commands/5)
	must(t, l.CatchUp(ctx))
	restarted, h, err := projections.LoadSnapshot(path)
	must(t, err)
	id, err = store.Identity(ctx)
	must(t, err)
	must(t, h.Check("TOKENS", id.Created, id.LastSequence))
	t.Cleanup(app.Feed(store, restarted, nil))
	must(t, restarted.WaitFor(ctx, id.LastSequence))
	if restarted.Digest() != live.Digest() {
		t.Fatal("the view restarted from a snapshot differs from the live one")
	}
}

// run issues n random commands, about a quarter of them invalid in some way
// (a bad field, an unknown token, a role that does not fit, a reused key),
// and returns how many succeeded and how many were refused.
func run(t *testing.T, rnd *mrand.Rand, l *app.Ledger, live *projections.Tokens, callers []app.Caller, clk *clock, n int) (ok, refused int) {
	ctx := context.Background()
	pick := func(xs ...string) string { return xs[rnd.IntN(len(xs))] }
	bad := func() bool { return rnd.IntN(4) == 0 }
	validRoles := map[string][]string{
		"organization": {"ORGANIZATION_OWNER", "ORGANIZATION_MEMBER", "ORGANIZATION_BILLING_ADMIN", ""},
		"workspace":    {"WORKSPACE_OWNER", "WORKSPACE_OPERATOR", "WORKSPACE_AUTHOR", "WORKSPACE_MEMBER", "WORKSPACE_ACCESSOR", ""},
		"deployment":   {"DEPLOYMENT_ADMIN", ""},
	}
	wsRoles := validRoles["workspace"][:5]
	anyRole := func() string {
		return pick(append(append([]string{"SUPERUSER"}, wsRoles...), validRoles["organization"][:3]...)...)
	}
	for range n {
		clk.Advance(time.Duration(rnd.IntN(48)) * time.Hour)
		c := callers[rnd.IntN(len(callers))]
		key := ""
		if rnd.IntN(5) == 0 {
			key = fmt.Sprintf("k%d", rnd.IntN(40)) // reused now and then: replays and misuses
		}
		tokens := live.List(c.Token.OrganizationID())
		id := "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa" // never exists
		var scope domain.Scope
		if len(tokens) > 0 && !bad() {
			tk := tokens[rnd.IntN(len(tokens))].Token
			id, scope = tk.ID(), tk.Scope()
		}
		var err error
		switch rnd.IntN(8) {
		case 0, 1, 2:
			sc := pick("organization", "workspace", "deployment")
			cmd := domain.CreateToken{Scope: sc, Name: pick("ci", "  deploy  ", "a name"), Description: pick("", "desc"), Role: pick(validRoles[sc]...)}
			if sc != "organization" {
				cmd.WorkspaceID = pick("w1", "w2")
			}
			if sc == "deployment" {
				cmd.DeploymentID = pick("d1", "d2")
			}
			if rnd.IntN(3) == 0 {
				d := 1 + rnd.IntN(365)
				cmd.ExpirationDays = &d
			}
			if bad() {
				switch rnd.IntN(5) {
				case 0:
					cmd.Name = pick("", "x\x00y")
				case 1:
					cmd.Role = anyRole()
				case 2:
					d := pick("0", "366")
					days := map[string]int{"0": 0, "366": 366}[d]
					cmd.ExpirationDays = &days
				case 3:
					cmd.WorkspaceID = "bad.id"
				case 4:
					cmd.Scope = "galaxy"
				}
			}
			_, err = l.CreateToken(ctx, c, cmd, key)
		case 3:
			var u domain.UpdateToken
			name, desc := pick("renamed", "other"), pick("", "new description")
			u.Name, u.Description = &name, &desc
			if rnd.IntN(2) == 0 && scope != "" {
				r := pick(validRoles[strings.ToLower(string(scope))]...)
				if r != "" {
					u.Role = &r
				}
			}
			if bad() {
				r := anyRole()
				u.Role = &r
			}
			_, err = l.UpdateToken(ctx, c, id, u, key)
		case 4:
			_, err = l.RotateToken(ctx, c, id, key)
		case 5:
			role := pick(wsRoles...)
			if bad() {
				role = anyRole()
			}
			_, err = l.AssignToken(ctx, c, id, pick("w1", "w2", "w3"), role, key)
		case 6:
			_, err = l.UnassignToken(ctx, c, id, pick("w1", "w2", "w3"), key)
		case 7:
			if rnd.IntN(2) == 0 { // deletions are rarer, or nothing would be left
				_, err = l.DeleteToken(ctx, c, id, key)
			}
		}
		if err != nil {
			refused++
		} else {
			ok++
		}
	}
	return ok, refused
}

func follow(t *testing.T, store *eventstore.Store) *projections.Tokens {
	t.Helper()
	v := projections.NewTokens()
	t.Cleanup(app.Feed(store, v, nil))
	id, err := store.Identity(context.Background())
	must(t, err)
	must(t, v.WaitFor(context.Background(), id.LastSequence))
	return v
}

// writeOwner stores an owner token for another organization straight into
// the stream (the API cannot: no token acts outside its organization).
func writeOwner(t *testing.T, store *eventstore.Store, view *projections.Tokens, org string, now time.Time) *domain.Token {
	t.Helper()
	tok, e, _, err := domain.Create(domain.CreateToken{OrganizationID: org, Scope: "organization", Name: "owner", Role: "ORGANIZATION_OWNER"},
		domain.Env{Now: now, Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	must(t, err)
	ap, err := store.Append(context.Background(), e, 0)
	must(t, err)
	must(t, view.WaitFor(context.Background(), ap.Sequence))
	return tok
}

// normal makes equal states compare equal: an empty role map is no map.
func normal(s domain.TokenState) domain.TokenState {
	if len(s.WorkspaceRoles) == 0 {
		s.WorkspaceRoles = nil
	} else {
		s.WorkspaceRoles = maps.Clone(s.WorkspaceRoles)
	}
	return s
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
