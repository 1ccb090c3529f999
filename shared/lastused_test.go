package shared_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/projections"
	"github.com/tokenledger/tokenledger/shared"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A use made on A can reach B before B's view has the token's creation
// (two streams of messages, no order between them): B keeps the stamp and
// takes it in once the creation arrives.
func TestAUseThatArrivesBeforeItsTokenIsKeptUntilTheTokenDoes(t *testing.T) {
	ns := eventstoretest.MustServer(t)
	share := func(v *projections.Tokens) *shared.LastUsed {
		_, js := eventstoretest.MustConnect(t, ns)
		kv, err := shared.LastUsedBucket(ctxT(t), js, shared.ConfigOf(eventstore.DefaultConfig()))
		if err != nil {
			t.Fatal(err)
		}
		u := shared.ShareLastUsed(kv, v, slog.New(slog.DiscardHandler))
		t.Cleanup(u.Close)
		return u
	}
	tok, created, secret, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "ci"},
		domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		t.Fatal(err)
	}
	a, b := projections.NewTokens(), projections.NewTokens()
	if err := a.Apply(1, created); err != nil {
		t.Fatal(err)
	}
	ua, ub := share(a), share(b)
	used := time.Now().Truncate(time.Second)
	a.MarkUsed(a.Verify(secret.Reveal(), used), used)
	for _, u := range []*shared.LastUsed{ua, ub} {
		if err := u.Synced(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, ok := b.Get("acme", tok.ID()); ok {
		t.Fatal("B holds the token before its creation was applied")
	}
	if err := b.Apply(1, created); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _, _ := b.Get("acme", tok.ID())
		if got.LastUsedAt().Equal(used) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("B's last use of the token is %v 5 s after its creation arrived, want %v", got.LastUsedAt(), used)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
