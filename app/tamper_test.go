package app_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/projections"
)

// These tests play an attacker who reached NATS and rewrites the ledger's
// own consumers (CONSUMER.CREATE on an existing name is an update), with the
// ledger's own connection. What the server then hands the ledger must not
// be signed as an export, nor quarantine a token, nor go unnoticed.

// fedLedger is a ledger whose view Feed keeps, with every report Feed made
// and whether the view's feed was marked faulty when it made it.
type fedLedger struct {
	l     *app.Ledger
	store *eventstore.Store
	js    jetstream.JetStream
	view  *projections.Tokens
	owner app.Caller

	mu      sync.Mutex
	reports []fedReport
}

type fedReport struct {
	err   error
	fault error // view.FeedFault() when err was reported
}

func newFedLedger(t *testing.T, opts ...app.Option) *fedLedger {
	t.Helper()
	store, js, _ := eventstoretest.MustStore(t)
	f := &fedLedger{store: store, js: js, view: projections.NewTokens()}
	f.l = app.New(store, f.view, opts...)
	t.Cleanup(app.Feed(store, f.view, func(err error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.reports = append(f.reports, fedReport{err, f.view.FeedFault()})
	}))
	owner, _, err := f.l.Bootstrap(context.Background(), "acme", nil)
	if err != nil || owner == nil {
		t.Fatalf("bootstrap: %v", err)
	}
	f.owner = app.Caller{Token: owner}
	return f
}

// badDeliveries are the reports of a bad delivery so far.
func (f *fedLedger) badDeliveries() []fedReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fedReport
	for _, r := range f.reports {
		if errors.Is(r.err, eventstore.ErrBadDelivery) {
			out = append(out, r)
		}
	}
	return out
}

func (f *fedLedger) create(t *testing.T, name string) app.Result {
	t.Helper()
	res, err := f.l.CreateToken(context.Background(), f.owner, domain.CreateToken{Scope: "organization", Name: name}, "")
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// waitUntil polls cond every 10 ms for at most limit.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", limit, what)
		}
	}
}

// checkNothingQuarantined: no message was refused, no token quarantined.
func (f *fedLedger) checkNothingQuarantined(t *testing.T) {
	t.Helper()
	if n := f.view.Rejected(); n != 0 {
		t.Fatalf("the view refused %d messages", n)
	}
	for _, tk := range f.view.List("acme") {
		if tk.Quarantined {
			t.Fatalf("token %s is quarantined", tk.Token.ID())
		}
	}
}

// (b) The feed's consumer is made to send headers only: every later message
// arrives without its body. That is the server's doing, not the events':
// no token is quarantined, readiness says not ready while it lasts, the feed
// follows again on a fresh consumer by itself, and the commands sent after
// the tampering all show in a view equal to the stream.
func TestAHeadersOnlyFeedQuarantinesNothingAndRecoversByItself(t *testing.T) {
	f := newFedLedger(t)
	ctx := context.Background()
	doomed := f.create(t, "doomed")
	rotated := f.create(t, "rotated")
	if err := f.l.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if n := eventstoretest.Tamper(t, f.js, func(jetstream.ConsumerConfig) bool { return true }, func(cfg *jetstream.ConsumerConfig) { cfg.HeadersOnly = true }); n != 1 {
		t.Fatalf("tampered with %d consumers, want the feed's one", n)
	}

	fresh := f.create(t, "fresh")
	rot, err := f.l.RotateToken(ctx, f.owner, rotated.Token.ID(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.l.DeleteToken(ctx, f.owner, doomed.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}

	last, err := f.store.LastSequence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the view to reach the stream on a sound feed", func() bool {
		return f.view.Sequence() >= last && f.view.FeedFault() == nil
	})
	bad := f.badDeliveries()
	if len(bad) == 0 {
		t.Fatal("the bodiless delivery was not reported")
	}
	for _, r := range bad {
		if r.fault == nil {
			t.Fatalf("the feed reported %v while readiness still said ready", r.err)
		}
	}
	f.checkNothingQuarantined(t)
	for _, c := range []struct {
		secret string
		want   projections.Outcome
	}{
		{fresh.Secret.Reveal(), projections.OutcomeActive},
		{rot.Secret.Reveal(), projections.OutcomeActive},
		{rotated.Secret.Reveal(), projections.OutcomeRotated},
		{doomed.Secret.Reveal(), projections.OutcomeDeleted},
	} {
		if v, err := f.l.Verify(ctx, f.owner, c.secret); err != nil || v.Outcome != c.want {
			t.Fatalf("verify = %s, %v; want %s", v.Outcome, err, c.want)
		}
	}
	if rebuilt := rebuild(t, f.store); rebuilt.Digest() != f.view.Digest() {
		t.Fatal("the view differs from one rebuilt from the stream")
	}
}

// rebuild is a view built afresh from the whole stream.
func rebuild(t *testing.T, store *eventstore.Store) *projections.Tokens {
	t.Helper()
	v := projections.NewTokens()
	stop := app.Feed(store, v, nil)
	defer stop()
	last, err := store.LastSequence(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.WaitFor(ctx, last); err != nil {
		t.Fatal(err)
	}
	return v
}

// (c) The feed's consumer is narrowed to creations only. No event has been
// skipped yet (none was written), and none need be for the ledger to
// notice: it reports it, says not ready, follows again on a fresh consumer,
// and a delete written afterwards takes effect.
func TestAFeedWhoseFilterIsNarrowedIsNoticedBeforeAnEventIsMissed(t *testing.T) {
	f := newFedLedger(t)
	ctx := context.Background()
	victim := f.create(t, "victim")
	if err := f.l.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	before, err := f.store.LastSequence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eventstoretest.Tamper(t, f.js, func(jetstream.ConsumerConfig) bool { return true }, func(cfg *jetstream.ConsumerConfig) {
		cfg.FilterSubject = "ledger.tokens.*.*.TokenCreated"
	})
	waitUntil(t, 10*time.Second, "the narrowed filter to be reported", func() bool { return len(f.badDeliveries()) > 0 })
	if r := f.badDeliveries()[0]; r.fault == nil || !strings.Contains(r.err.Error(), "filter") {
		t.Fatalf("report %v (readiness: %v), want a filter named and not ready", r.err, r.fault)
	}
	if after, _ := f.store.LastSequence(ctx); after != before {
		t.Fatal("something was written: the test must notice the filter with nothing to skip")
	}
	waitUntil(t, 10*time.Second, "the feed to be sound again", func() bool { return f.view.FeedFault() == nil })

	if _, err := f.l.DeleteToken(ctx, f.owner, victim.Token.ID(), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := f.l.Authenticate(victim.Secret.Reveal(), app.Source{}); !errors.Is(err, app.ErrUnauthenticated) {
		t.Fatal("a deleted token still authenticates")
	}
	f.checkNothingQuarantined(t)
}

// (a) While an audit export runs, its consumer is narrowed to skip every
// TokenDeleted. The export fails, and nothing is signed: no manifest is
// written. The export pauses at its first progress report (2,048 rows),
// far ahead of the first deletion and of what the client has read ahead,
// while the consumer is changed.
func TestAnExportWhoseConsumerIsNarrowedMidwayIsNotSigned(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	f := newFedLedger(t, app.WithAuditKey(key))
	const tokens = 3000
	fillCreatedThenDeleted(t, f.store, f.js, "acme", tokens)

	var manifest bytes.Buffer
	tampered := 0
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := f.l.Export(ctx, f.owner, app.ExportQuery{Format: exporters.FormatJSONL}, app.ExportOutput{
		File:     io.Discard,
		Manifest: &manifest,
		Progress: func(p app.ExportProgress) {
			if p.Rows == 0 || tampered > 0 {
				return
			}
			// The export's consumer is the one filtered on the organization;
			// the feed's reads the whole stream.
			tampered = eventstoretest.Tamper(t, f.js, func(cfg jetstream.ConsumerConfig) bool {
				return strings.Contains(cfg.FilterSubject+strings.Join(cfg.FilterSubjects, " "), ".acme.")
			}, func(cfg *jetstream.ConsumerConfig) {
				cfg.FilterSubject, cfg.FilterSubjects = "", nil
				for _, typ := range domain.EventTypes {
					if typ != domain.TokenDeleted {
						cfg.FilterSubjects = append(cfg.FilterSubjects, "ledger.tokens.acme.*."+string(typ))
					}
				}
			})
		},
	})
	if tampered != 1 {
		t.Fatalf("tampered with %d consumers, want the export's one", tampered)
	}
	if err == nil || manifest.Len() > 0 {
		t.Fatalf("the export was signed (error %v, manifest of %d bytes)", err, manifest.Len())
	}
	if !errors.Is(err, eventstore.ErrBadDelivery) || !errors.Is(err, app.ErrUnavailable) {
		t.Fatalf("export error = %v, want ErrBadDelivery, as unavailable", err)
	}
	t.Logf("export refused: %v", err)
}

// fillCreatedThenDeleted stores n tokens of org, then deletes them all, in
// bulk (as Append would store them, without waiting for each): the
// deletions are the last n events.
func fillCreatedThenDeleted(t *testing.T, st *eventstore.Store, js jetstream.JetStream, org string, n int) {
	t.Helper()
	env := domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}}
	publish := func(e domain.Event) {
		msg, err := st.Message(e)
		if err != nil {
			t.Fatal(err)
		}
		msg.Header.Set(jetstream.MsgIDHeader, e.ID)
		if _, err := js.PublishMsgAsync(msg); err != nil {
			t.Fatal(err)
		}
	}
	tokens := make([]*domain.Token, n)
	for i := range tokens {
		tok, e, _, err := domain.Create(domain.CreateToken{OrganizationID: org, Scope: "organization", Name: fmt.Sprintf("t%d", i)}, env)
		if err != nil {
			t.Fatal(err)
		}
		tokens[i] = tok
		publish(e)
	}
	for _, tok := range tokens {
		e, err := tok.Delete(env)
		if err != nil {
			t.Fatal(err)
		}
		publish(e)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(20 * time.Second):
		t.Fatal("bulk publish did not complete")
	}
}
