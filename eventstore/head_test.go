package eventstore_test

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
)

// A server cut off from the rest of its cluster still answers for the
// stream, from its own state: once it has had a leader, it answers stream
// info leaderless. The rest of the cluster may have stored more since, so
// its last sequence is not the stream's head, and a ledger taking it for
// one would call itself current on a stale view (and accept a secret
// rotated away through another ledger). Head refuses such answers; the
// plain stream info, which the staleness bound used before, takes them.
func TestAServerCutOffFromItsClusterIsNotTakenForTheHead(t *testing.T) {
	urls, servers := startPlainCluster(t, 3)
	ctx := context.Background()
	nc, err := nats.Connect(urls[0], nats.MaxReconnects(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := eventstore.DefaultConfig()
	cfg.Replicas = 3
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	store, err := eventstore.Open(openCtx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "first"},
		domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(openCtx, e, 0); err != nil {
		t.Fatal(err)
	}
	if head, err := store.Head(openCtx); err != nil || head != 1 {
		t.Fatalf("the head of a healthy cluster: %d, %v", head, err)
	}

	// n1 loses the other two (as a partition would); its clients keep
	// their connections to it.
	servers[1].Shutdown()
	servers[2].Shutdown()
	deadline := time.Now().Add(20 * time.Second)
	staleAnswers := 0
	for time.Now().Before(deadline) && staleAnswers < 3 {
		ask, cancel := context.WithTimeout(ctx, time.Second)
		if head, err := store.Head(ask); err == nil {
			cancel()
			t.Fatalf("n1, cut off from its cluster, was taken for the stream's head (%d)", head)
		} else if !errors.Is(err, eventstore.ErrNoQuorum) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoStreamResponse) {
			t.Logf("head from n1 alone: %v", err)
		}
		if _, err := store.LastSequence(ask); err == nil {
			staleAnswers++ // what the bound used to take for the head
		}
		cancel()
		time.Sleep(200 * time.Millisecond)
	}
	if staleAnswers == 0 {
		t.Log("n1 alone gave no stream info within 20 s: the stale answer Head refuses did not come (it is refused all the same)")
	}
}
