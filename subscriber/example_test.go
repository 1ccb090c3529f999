package subscriber_test

import (
	"context"
	"log"
	"os"
	"os/signal"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/subscriber"
)

// A service keeps the tokens it has verified in a cache and drops one the
// moment it is rotated or deleted.
func Example() {
	var verified sync.Map // token id -> whatever the service keeps

	s, err := subscriber.New(subscriber.Config{
		URL:     "nats://127.0.0.1:4222",       // `ledger serve --nats-listen`
		Token:   os.Getenv("LEDGER_API_TOKEN"), // the service's own token
		Durable: "billing-token-cache",         // one name per service
		Start:   subscriber.StartNew(),         // where a new durable begins
	})
	if err != nil {
		log.Fatal(err)
	}
	subscriber.On(s, func(_ context.Context, e subscriber.Event, d domain.RotatedData) error {
		verified.Delete(e.TokenID)
		log.Printf("token %s rotated (old secret %s retired) at sequence %d", e.TokenID, d.PreviousFingerprint, e.Sequence)
		return nil
	})
	subscriber.On(s, func(_ context.Context, e subscriber.Event, _ domain.DeletedData) error {
		verified.Delete(e.TokenID)
		return nil
	})
	go func() {
		for m := range s.Poisoned() {
			log.Printf("parked event %s: %s", m.UUID, m.Metadata.Get(middleware.ReasonForPoisonedKey))
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := s.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
