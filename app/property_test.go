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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/projections"
)

// TestViewsAgreeWhateverTheCommands drives long random sequences of valid and
// invalid commands, in two organizations, and checks that the view built as
// they happened equals the view rebuilt from the stream, equals each token
// folded from its own events through the domain, and equals a view restarted
// from a snapshot and fed the rest of the stream.
func TestViewsAgreeWhateverTheCommands(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			rnd := mrand.New(mrand.NewPCG(seed, seed))
			clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			store, js, _ := eventstoretest.MustStore(t)
			live := projections.NewTokens()
			l := app.New(store, live, app.WithClock(clk.Now))
			t.Cleanup(app.Feed(store, live, nil))
			acme, _, err := l.Bootstrap(context.Background(), "acme", nil)
			must(t, err)
			callers := []app.Caller{{Token: acme, RequestID: "r"}, {Token: writeOwner(t, store, live, "globex", clk.Now()), RequestID: "r"}}
			ok, refused := run(t, rnd, l, live, callers, clk, 750)
			if ok < 250 || refused < 75 {
				t.Fatalf("%d commands succeeded and %d were refused: the generator is not exercising both", ok, refused)
			}
			checkViewsAgree(t, store, js, live, func() { run(t, rnd, l, live, callers, clk, 150) })
		})
	}
}

// TestViewsAgreeOverManyShortSequences runs a thousand short random command
// sequences, each in an organization of its own, on one stream, and checks
// the same agreement over all of them.
func TestViewsAgreeOverManyShortSequences(t *testing.T) {
	rnd := mrand.New(mrand.NewPCG(99, 99))
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	store, js, _ := eventstoretest.MustStore(t)
	live := projections.NewTokens()
	l := app.New(store, live, app.WithClock(clk.Now))
	t.Cleanup(app.Feed(store, live, nil))
	sequences := 1000
	if testing.Short() {
		sequences = 100
	}
	owners := make([]app.Caller, sequences)
	for i := range owners {
		owners[i] = app.Caller{Token: writeOwner(t, store, live, fmt.Sprintf("o%d", i), clk.Now())}
	}
	for i := range owners {
		run(t, rnd, l, live, owners[i:i+1], clk, 5)
	}
	checkViewsAgree(t, store, js, live, func() {
		for i := range 50 {
			run(t, rnd, l, live, owners[i:i+1], clk, 3)
		}
	})
}

// checkViewsAgree compares the live view with: a view rebuilt from the stream;
// every token of the stream (found from the stream's subjects, not from any
// view) folded from its own events through the domain; and a view restarted
// from a snapshot taken now and fed what more happens in more.
func checkViewsAgree(t *testing.T, store *eventstore.Store, js jetstream.JetStream, live *projections.Tokens, more func()) {
	t.Helper()
	ctx := context.Background()
	l := app.New(store, live)
	must(t, l.CatchUp(ctx))

	rebuilt := follow(t, store)
	if rebuilt.Digest() != live.Digest() {
		t.Fatal("the view rebuilt from the stream differs from the one built live")
	}

	stored := tokensInStream(t, js)
	seen := 0
	for key := range stored {
		org, id, _ := strings.Cut(key, "/")
		got, last, ok := live.Get(org, id)
		if !ok {
			t.Fatalf("token %s is in the stream but not in the view", key)
		}
		seen++
		hist, err := store.Load(ctx, org, id)
		must(t, err)
		events := make([]domain.Event, len(hist))
		for i, r := range hist {
			events[i] = r.Event
		}
		folded, err := domain.Replay(events)
		must(t, err)
		if a, b := normal(folded.State()), normal(got.State()); !reflect.DeepEqual(a, b) {
			t.Fatalf("token %s folded from its events:\n%+v\nin the view:\n%+v", key, a, b)
		}
		if want := hist[len(hist)-1].Sequence; last != want {
			t.Fatalf("token %s: view says last event at %d, stream at %d", key, last, want)
		}
	}
	if seen < 10 {
		t.Fatalf("only %d tokens in the stream: nothing was checked", seen)
	}

	path := filepath.Join(t.TempDir(), "TOKENS.snap")
	id, err := store.Identity(ctx)
	must(t, err)
	_, err = live.SaveSnapshot(path, "TOKENS", id.Created)
	must(t, err)
	more()
	must(t, l.CatchUp(ctx))
	restarted, h, err := projections.LoadSnapshot(path)
	must(t, err)
	id, err = store.Identity(ctx)
	must(t, err)
	must(t, h.Check("TOKENS", id.Created, id.LastSequence))
	if h.Sequence == id.LastSequence {
		t.Fatal("nothing happened after the snapshot: the tail replay is not tested")
	}
	t.Cleanup(app.Feed(store, restarted, nil))
	must(t, restarted.WaitFor(ctx, id.LastSequence))
	if restarted.Digest() != live.Digest() {
		t.Fatal("the view restarted from a snapshot differs from the live one")
	}
}

// tokensInStream lists "org/token" for every token with an event in the
// stream, read straight from the subjects.
func tokensInStream(t *testing.T, js jetstream.JetStream) map[string]bool {
	t.Helper()
	ctx := context.Background()
	cons, err := js.OrderedConsumer(ctx, "TOKENS", jetstream.OrderedConsumerConfig{})
	must(t, err)
	out := map[string]bool{}
	for n := cons.CachedInfo().NumPending; n > 0; n-- {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		must(t, err)
		parts := strings.Split(msg.Subject(), ".") // ledger.tokens.<org>.<token>.<type>
		out[parts[2]+"/"+parts[3]] = true
	}
	return out
}

// run issues n random commands, about a quarter of them invalid in some way
// (a bad field, an unknown token, a role that does not fit, a reused key),
// and authentications with the secrets they issued (current, rotated away,
// of deleted tokens: last uses and reuse reports), and returns how many
// succeeded and how many were refused. It returns once the reuse reports
// are in the stream.
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
	var secrets []string
	issued := func(res app.Result) {
		if !res.Secret.IsZero() {
			secrets = append(secrets, res.Secret.Reveal())
		}
	}
	defer func() {
		// Tries after a source's first are written once their interval is
		// over: end it, and wait for every try to be in an event.
		clk.Advance(app.DefaultReuseInterval)
		awaitRecorded(t, l, l.ReuseStats().Tries)
	}()
	for range n {
		clk.Advance(time.Duration(rnd.IntN(48)) * time.Hour)
		ci := rnd.IntN(len(callers))
		// A command is judged by its caller's token as it is: once the
		// commands have deleted, rotated or demoted it, the organization's
		// owners go on with another owner token (or with the rotated one's
		// new secret).
		callers[ci].Token = actingOwner(live, callers[ci].Token, clk.Now())
		c := callers[ci]
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
		var res app.Result
		switch rnd.IntN(9) {
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
			res, err = l.CreateToken(ctx, c, cmd, key)
			issued(res)
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
			res, err = l.RotateToken(ctx, c, id, key)
			issued(res)
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
		case 8:
			if len(secrets) > 0 {
				_, err = l.Authenticate(secrets[rnd.IntN(len(secrets))], app.Source{RequestID: "r", SourceIP: "192.0.2.1"})
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

// actingOwner is tok if it is still an active ORGANIZATION_OWNER with the
// secret it had, and otherwise the first of its organization's active owner
// tokens that never expire, as the view has them (the ledger keeps one).
func actingOwner(live *projections.Tokens, tok *domain.Token, now time.Time) *domain.Token {
	if v := live.Resume(tok.OrganizationID(), tok.ID(), tok.SecretHash(), now); v.Outcome == projections.OutcomeActive &&
		v.Token().Role() == domain.RoleOrganizationOwner {
		return tok
	}
	for _, t := range live.List(tok.OrganizationID()) {
		if t.Token.Role() == domain.RoleOrganizationOwner && t.Token.Status(now) == domain.StatusActive && t.Token.ExpiresAt().IsZero() && !t.Quarantined {
			return t.Token
		}
	}
	return tok
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
