package natsaccess_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/natsaccess/natsaccesstest"
)

// service connects as a service with secret and asks who it is.
func service(t *testing.T, l *natsaccesstest.Ledger, secret string) (*attacker, natsaccess.Identity) {
	t.Helper()
	x, err := connectAttacker(t, l.URL, natsaccess.Options(secret)...)
	if err != nil {
		t.Fatal(err)
	}
	id, err := natsaccess.WhoAmI(ctx(t), x.nc)
	if err != nil {
		t.Fatal(err)
	}
	return x, id
}

// withDurable is service, keeping a durable named durable as a real
// service would.
func withDurable(t *testing.T, l *natsaccesstest.Ledger, secret, durable string) (*attacker, natsaccess.Identity, jetstream.Consumer) {
	t.Helper()
	x, id := service(t, l, secret)
	c, err := natsaccess.ClaimConsumer(ctx(t), x.js, "TOKENS", id, durable, jetstream.ConsumerConfig{FilterSubject: id.Filter, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	return x, id, c
}

// eachShape runs a test against the embedded server `ledger serve` starts
// by default and against a three-server cluster configured as `ledger nats
// setup` writes it (the ledger on one server, services on another).
func eachShape(t *testing.T, test func(*testing.T, natsaccesstest.Options)) {
	t.Run("embedded", func(t *testing.T) { test(t, natsaccesstest.Options{}) })
	t.Run("cluster", func(t *testing.T) { test(t, natsaccesstest.Options{Cluster: 3}) })
}

// attacker is a NATS connection whose refusals the test can wait for: the
// server answers a forbidden publish or subscription with an asynchronous
// permissions violation, and a forbidden request with silence.
type attacker struct {
	t    *testing.T
	nc   *nats.Conn
	js   jetstream.JetStream
	mu   sync.Mutex
	errs []string
}

func connectAttacker(t *testing.T, url string, opts ...nats.Option) (*attacker, error) {
	a := &attacker{t: t}
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		a.mu.Lock()
		a.errs = append(a.errs, err.Error())
		a.mu.Unlock()
	}), nats.MaxReconnects(0))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(nc.Close)
	a.nc = nc
	a.js, _ = natsaccess.JetStream(nc)
	return a, nil
}

// refused runs an action that must be refused by the server's permissions
// for subject, and fails the test if no violation for it arrives.
func (a *attacker) refused(what, subject string, do func()) {
	a.t.Helper()
	do()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		a.mu.Lock()
		for _, e := range a.errs {
			if strings.Contains(e, "ermissions Violation") && strings.Contains(e, subject) {
				a.mu.Unlock()
				return
			}
		}
		a.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	a.t.Errorf("%s: the server did not refuse %s", what, subject)
}

func short() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Second)
}

// ledgerConsumers lists the ledger's own consumers: what an attacker who
// guessed every name would aim at.
func ledgerConsumers(t *testing.T, l *natsaccesstest.Ledger) map[string]jetstream.ConsumerConfig {
	t.Helper()
	s, err := l.LedgerJS.Stream(ctx(t), "TOKENS")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]jetstream.ConsumerConfig{}
	infos := s.ListConsumers(ctx(t))
	for ci := range infos.Info() {
		out[ci.Name] = ci.Config
	}
	return out
}

// TestNoCredentialGetsIn: no anonymous access, no guessing the ledger's own
// users, no malformed or unknown token.
func TestNoCredentialGetsIn(t *testing.T) { eachShape(t, noCredentialGetsIn) }

func noCredentialGetsIn(t *testing.T, shape natsaccesstest.Options) {
	l := natsaccesstest.Start(t, shape)
	tries := map[string][]nats.Option{
		"no credential":          nil,
		"an unknown token":       {nats.Token("tlo_" + strings.Repeat("A", 49))},
		"a malformed token":      {nats.Token("hello")},
		"the ledger's user":      {nats.UserInfo(natsaccess.LedgerUser, "guess")},
		"the system user":        {nats.UserInfo(natsaccess.SystemUser, "guess")},
		"the old service user":   {nats.UserInfo("service", "")},
		"a secret as a password": {nats.UserInfo("x", l.OwnerSecret)},
	}
	for name, opts := range tries {
		if _, err := connectAttacker(t, l.URL, opts...); err == nil {
			t.Errorf("%s: connected", name)
		} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: refused with %v, want an authorization violation", name, err)
		}
	}
}

// TestServicesCannotTouchTheLedgersReading runs the review's attacks as a
// service of the same organization, a workspace token, and an owner of
// another organization: none reaches the ledger's consumers, inboxes, API or
// stream, nor another service's consumers, nor another organization's
// events.
func TestServicesCannotTouchTheLedgersReading(t *testing.T) {
	eachShape(t, servicesCannotTouchTheLedgersReading)
}

func servicesCannotTouchTheLedgersReading(t *testing.T, shape natsaccesstest.Options) {
	l := natsaccesstest.Start(t, shape)
	member, memberSecret := l.Token(t, domain.CreateToken{Scope: "organization", Name: "svc-a", Role: string(domain.RoleOrganizationMember)})
	_, otherSecret := l.Token(t, domain.CreateToken{Scope: "organization", Name: "svc-b", Role: string(domain.RoleOrganizationMember)})
	ws, wsSecret := l.Token(t, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "ws-svc", Role: string(domain.RoleWorkspaceMember)})
	foreignSecret := l.OtherOrg(t, "globex")
	lastBefore, err := l.Store.LastSequence(ctx(t))
	if err != nil {
		t.Fatal(err)
	}

	// Service A keeps a durable, as a real service would.
	_, idA, durable := withDurable(t, l, memberSecret, "cache")
	durableName := durable.CachedInfo().Name
	theirs := ledgerConsumers(t, l)
	if len(theirs) == 0 {
		t.Fatal("the ledger has no consumer to aim at (its feed should be one)")
	}

	attackers := map[string][]nats.Option{
		"same organization":  natsaccess.Options(otherSecret),
		"workspace token":    natsaccess.Options(wsSecret),
		"other organization": natsaccess.Options(foreignSecret),
	}
	for who, opts := range attackers {
		t.Run(who, func(t *testing.T) {
			x, err := connectAttacker(t, l.URL, opts...)
			if err != nil {
				t.Fatal(err)
			}
			x.t = t
			// Eavesdropping: everything, the event subjects (core), the
			// JetStream API and advisories, other inboxes.
			for _, subj := range []string{">", "ledger.tokens.>", "$JS.API.>", "$JS.EVENT.>", "$SYS.>", "_INBOX.>", natsaccess.InboxPrefix(memberSecret) + ".>", "tokenledger.mirror.>"} {
				x.refused("subscribe "+subj, subj, func() { _, _ = x.nc.Subscribe(subj, func(*nats.Msg) {}) })
			}
			// The ledger's consumers, each by name: update it (headers
			// only, another filter), pause, delete, read from it.
			for name, cfg := range theirs {
				upd := cfg
				upd.HeadersOnly = true
				c, cancel := short()
				_, _ = x.js.UpdateConsumer(c, "TOKENS", upd)
				cancel()
				x.refused("update the ledger's consumer", natsaccess.APIPrefix+".CONSUMER.CREATE.TOKENS."+name, func() {})
				x.refused("delete the ledger's consumer", "$JS.API.CONSUMER.DELETE.TOKENS."+name, func() { _ = x.nc.Publish("$JS.API.CONSUMER.DELETE.TOKENS."+name, nil) })
				x.refused("pause the ledger's consumer", "$JS.API.CONSUMER.PAUSE.TOKENS."+name, func() { _ = x.nc.Publish("$JS.API.CONSUMER.PAUSE.TOKENS."+name, []byte(`{}`)) })
				x.refused("read from the ledger's consumer", "$JS.API.CONSUMER.MSG.NEXT.TOKENS."+name, func() { _ = x.nc.Publish("$JS.API.CONSUMER.MSG.NEXT.TOKENS."+name, []byte(`{"batch":1}`)) })
			}
			// Service A's durable: rewrite its inactive threshold, delete it.
			x.refused("update another service's durable", natsaccess.APIPrefix+".CONSUMER.CREATE.TOKENS."+durableName, func() {
				c, cancel := short()
				defer cancel()
				_, _ = x.js.CreateOrUpdateConsumer(c, "TOKENS", jetstream.ConsumerConfig{Durable: durableName, FilterSubject: idA.Filter, InactiveThreshold: time.Second})
			})
			x.refused("delete another service's durable", "$JS.API.CONSUMER.DELETE.TOKENS."+durableName, func() { _ = x.nc.Publish("$JS.API.CONSUMER.DELETE.TOKENS."+durableName, nil) })
			x.refused("delete another service's durable through the services' API", natsaccess.APIPrefix+".CONSUMER.DELETE.TOKENS."+durableName, func() { _ = x.nc.Publish(natsaccess.APIPrefix+".CONSUMER.DELETE.TOKENS."+durableName, nil) })
			// List the consumers or the stream's state, reach the ledger's
			// API through the mirror's import, forge events, drop the stream.
			for _, subj := range []string{"$JS.API.CONSUMER.NAMES.TOKENS", "$JS.API.CONSUMER.LIST.TOKENS", "$JS.API.STREAM.INFO.TOKENS", "$JS.API.STREAM.DELETE.TOKENS",
				"$JS.LEDGER.API.CONSUMER.CREATE.TOKENS", "$JS.SERVICES.API.STREAM.DELETE.TOKENS", "ledger.tokens." + natsaccesstest.Org + "." + member.ID() + ".TokenRotated", "$SYS.REQ.USER.AUTH"} {
				x.refused("publish "+subj, subj, func() { _ = x.nc.Publish(subj, []byte(`{}`)) })
			}
			// Unlimited consumers: a name outside its own is refused.
			x.refused("a consumer of a name not its own", natsaccess.APIPrefix+".CONSUMER.CREATE.TOKENS.mine-0", func() {
				c, cancel := short()
				defer cancel()
				_, _ = x.js.CreateConsumer(c, "TOKENS", jetstream.ConsumerConfig{Name: "mine-0", FilterSubject: "ledger.tokens.globex.>"})
			})
		})
	}

	// Reading beyond what the token may: another organization's events, or
	// (a workspace token) other tokens of its own organization.
	for who, c := range map[string]struct {
		secret, filter string
	}{
		"other organization reads acme":  {foreignSecret, "ledger.tokens.acme.>"},
		"other organization reads all":   {foreignSecret, "ledger.tokens.>"},
		"workspace token reads its org":  {wsSecret, "ledger.tokens.acme.>"},
		"workspace token reads a member": {wsSecret, "ledger.tokens.acme." + member.ID() + ".*"},
		"member reads another org":       {otherSecret, "ledger.tokens.globex.>"},
	} {
		x, id := service(t, l, c.secret)
		x.refused(who, natsaccess.APIPrefix+".CONSUMER.CREATE.TOKENS."+id.Consumers[0]+"."+c.filter, func() {
			cc, cancel := short()
			defer cancel()
			_, _ = x.js.CreateConsumer(cc, "TOKENS", jetstream.ConsumerConfig{Name: id.Consumers[0], FilterSubject: c.filter})
		})
		// Several filters put none in the subject: refused too.
		x.refused(who+" with two filters", natsaccess.APIPrefix+".CONSUMER.CREATE.TOKENS."+id.Consumers[0], func() {
			cc, cancel := short()
			defer cancel()
			_, _ = x.js.CreateConsumer(cc, "TOKENS", jetstream.ConsumerConfig{Name: id.Consumers[0], FilterSubjects: []string{id.Filter, c.filter}})
		})
	}

	// What may be read is read: the workspace token its own events only.
	w, wid := service(t, l, wsSecret)
	if want := "ledger.tokens.acme." + ws.ID() + ".*"; wid.Filter != want {
		t.Errorf("workspace token may read %q, want %q", wid.Filter, want)
	}
	if n := len(read(t, w.js, wid)); n != 1 {
		t.Errorf("workspace token read %d events, want its own creation", n)
	}
	// ...and the other organization's owner only its own organization.
	f, fid := service(t, l, foreignSecret)
	for _, subj := range read(t, f.js, fid) {
		if !strings.HasPrefix(subj, "ledger.tokens.globex.") {
			t.Errorf("globex read %s", subj)
		}
	}

	// Nothing changed: the stream, the ledger's consumers, A's durable.
	if last, _ := l.Store.LastSequence(ctx(t)); last != lastBefore {
		t.Errorf("the stream moved from %d to %d", lastBefore, last)
	}
	for name, cfg := range ledgerConsumers(t, l) {
		if before, ok := theirs[name]; ok && (before.HeadersOnly != cfg.HeadersOnly || before.FilterSubject != cfg.FilterSubject || !equal(before.FilterSubjects, cfg.FilterSubjects)) {
			t.Errorf("the ledger's consumer %s changed: %+v", name, cfg)
		}
	}
	// Exports stay complete and verify; the view equals the stream.
	l.CheckExportAndView(t)
	info, err := durable.Info(ctx(t))
	if err != nil {
		t.Fatalf("service A's durable is gone: %v", err)
	}
	if info.Config.InactiveThreshold != 0 {
		t.Errorf("service A's durable was changed: inactive threshold %s", info.Config.InactiveThreshold)
	}
}

// TestATokenHasItsOwnConsumerNamesOnly: nine durables do not fit.
func TestATokenHasItsOwnConsumerNamesOnly(t *testing.T) {
	l := natsaccesstest.Start(t, natsaccesstest.Options{})
	_, secret := l.Token(t, domain.CreateToken{Scope: "organization", Name: "svc", Role: string(domain.RoleOrganizationMember)})
	x, id := service(t, l, secret)
	for i := range natsaccess.MaxConsumers {
		if _, err := natsaccess.ClaimConsumer(ctx(t), x.js, "TOKENS", id, "d"+string(rune('a'+i)), jetstream.ConsumerConfig{FilterSubject: id.Filter}); err != nil {
			t.Fatalf("durable %d: %v", i, err)
		}
	}
	if _, err := natsaccess.ClaimConsumer(ctx(t), x.js, "TOKENS", id, "one-too-many", jetstream.ConsumerConfig{FilterSubject: id.Filter}); err == nil {
		t.Fatal("a ninth durable was created")
	}
	// Claiming an existing durable again finds it.
	c, err := natsaccess.ClaimConsumer(ctx(t), x.js, "TOKENS", id, "dc", jetstream.ConsumerConfig{FilterSubject: id.Filter})
	if err != nil || c.CachedInfo().Name != natsaccess.ConsumerName(id.TokenID, 2) {
		t.Fatalf("claim of an existing durable: %v", err)
	}
}

// TestRotatingOrDeletingATokenCutsItsConnections measures how long a live
// connection outlives its token's rotation, deletion or quarantine (at most
// 5 s).
func TestRotatingOrDeletingATokenCutsItsConnections(t *testing.T) {
	eachShape(t, rotatingOrDeletingATokenCutsItsConnections)
}

func rotatingOrDeletingATokenCutsItsConnections(t *testing.T, shape natsaccesstest.Options) {
	l := natsaccesstest.Start(t, shape)
	for _, how := range []string{"rotate", "delete", "quarantine"} {
		tok, secret := l.Token(t, domain.CreateToken{Scope: "organization", Name: "svc-" + how, Role: string(domain.RoleOrganizationMember)})
		closed := make(chan time.Time, 1)
		nc, err := nats.Connect(l.URL, append(natsaccess.Options(secret), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
			nats.DisconnectErrHandler(func(*nats.Conn, error) {
				select {
				case closed <- time.Now():
				default:
				}
			}))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		if _, err := natsaccess.WhoAmI(ctx(t), nc); err != nil {
			t.Fatal(err)
		}
		at := time.Now()
		var newSecret string
		if how == "rotate" {
			res, err := l.App.RotateToken(ctx(t), l.Owner, tok.ID(), "")
			if err != nil {
				t.Fatal(err)
			}
			newSecret = res.Secret.Reveal()
		} else if how == "delete" {
			if _, err := l.App.DeleteToken(ctx(t), l.Owner, tok.ID(), ""); err != nil {
				t.Fatal(err)
			}
		} else {
			// A message the view cannot apply, written past the ledger,
			// quarantines the token: it is trusted nowhere, NATS included.
			if _, err := l.LedgerJS.Publish(ctx(t), "ledger.tokens."+natsaccesstest.Org+"."+tok.ID()+".TokenUpdated", []byte("not an event")); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case cut := <-closed:
			took := cut.Sub(at)
			t.Logf("%s: connection cut %s after the command", how, took.Round(time.Millisecond))
			if took > 5*time.Second {
				t.Errorf("%s: cut after %s, want within 5 s", how, took)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the connection outlived its token by 10 s", how)
		}
		// It cannot come back with the old secret...
		if _, err := nats.Connect(l.URL, natsaccess.Options(secret)...); err == nil {
			t.Errorf("%s: the old secret connected again", how)
		}
		// ...and a rotated token's new secret works at once.
		if newSecret != "" {
			fresh, err := nats.Connect(l.URL, natsaccess.Options(newSecret)...)
			if err != nil {
				t.Fatalf("the new secret: %v", err)
			}
			fresh.Close()
		}
	}
}

func read(t *testing.T, js jetstream.JetStream, id natsaccess.Identity) []string {
	t.Helper()
	c, err := natsaccess.ClaimConsumer(ctx(t), js, "TOKENS", id, "", jetstream.ConsumerConfig{FilterSubject: id.Filter, AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var subjects []string
	pending := int(c.CachedInfo().NumPending)
	for len(subjects) < pending {
		b, err := c.Fetch(pending-len(subjects), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range b.Messages() {
			n++
			subjects = append(subjects, m.Subject())
		}
		if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	return subjects
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
