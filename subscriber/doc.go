// Package subscriber delivers TokenLedger's token events to a Go service, so
// that it can, say, drop a token from its cache the moment the token is
// rotated or deleted.
//
//	s, err := subscriber.New(subscriber.Config{Durable: "billing-cache"})
//	if err != nil { ... }
//	subscriber.On(s, func(ctx context.Context, e subscriber.Event, d domain.RotatedData) error {
//		cache.Drop(e.TokenID) // the old secret stopped working
//		return nil
//	})
//	subscriber.On(s, func(ctx context.Context, e subscriber.Event, _ domain.DeletedData) error {
//		cache.Drop(e.TokenID)
//		return nil
//	})
//	err = s.Run(ctx) // until ctx ends
//
// It reads the ledger's JetStream stream (TOKENS, subjects
// ledger.tokens.<organization>.<token>.<EventType>) through a durable pull
// consumer named Config.Durable, on a NATS connection of its own, with a
// Watermill router over watermill-nats' jetstream subscriber; middleware
// PoisonQueue, Retry and Recoverer, outermost first.
//
//   - Durable: the consumer keeps the service's position. The first run
//     creates it where Config.Start says (new events, the whole history, a
//     stream sequence, a time); later runs resume after the last event
//     acked, so a service that was down catches up with nothing lost.
//     Services with different durable names each get every event. The
//     subscriber never creates or changes the stream and never deletes the
//     durable; it brings the durable's filter to the handlers registered.
//   - At least once: an event is acked, and the ack confirmed, once its
//     handlers returned nil or it was parked. After a crash JetStream
//     delivers the unacked event again (Event.Delivered > 1) after
//     Config.AckWait; handlers should be idempotent.
//   - In order: one event at a time, in stream order, so each token's events
//     come with versions 1, 2, 3, ... The durable allows one unacked event
//     (MaxAckPending 1), so an event delivered again comes before any later
//     one.
//   - Retries, then the poison queue: a handler's error (or panic) is
//     retried Config.MaxRetries times with a doubling interval; then the
//     event is parked in Config.PoisonQueue (by default in memory, read
//     through Subscriber.Poisoned) and acked, and the next events flow. An
//     event that cannot be decoded, or a Permanent error, is parked at once.
//   - Graceful shutdown: when Run's context ends it takes no new event, lets
//     the one in flight finish with its context intact (for at most
//     Config.ShutdownTimeout), acks it, and returns nil; an event that
//     reached it meanwhile is handed back to JetStream at once.
//   - It never blocks the ledger: the stream keeps every event whatever its
//     consumers do (limits retention), so a slow or stopped subscriber only
//     falls behind itself.
//
// On `ledger serve`'s embedded NATS server a service connects without
// credentials and may read the stream and run consumers of its own, which is
// all the subscriber needs. Logs are off unless Config.Logger is set.
package subscriber
