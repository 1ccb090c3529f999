// Package subscriber delivers TokenLedger's token events to a Go service, so
// that it can, say, drop a token from its cache the moment the token is
// rotated or deleted.
//
//	s, err := subscriber.New(subscriber.Config{
//		Token:   os.Getenv("LEDGER_API_TOKEN"), // the service's own token
//		Durable: "billing-cache",
//	})
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
// It logs in to the ledger's NATS servers with the service's TokenLedger API
// token (Config.Token; natsaccess.Options), and reads the services' mirror of
// the ledger's stream (TOKENS, subjects
// ledger.tokens.<organization>.<token>.<EventType>, the same sequences)
// through a durable pull consumer, on a NATS connection of its own, with a
// Watermill router over watermill-nats' jetstream subscriber; middleware
// PoisonQueue, Retry and Recoverer, outermost first.
//
//   - What it reads: what the token may. An organization token reads every
//     event of its organization; a workspace or deployment token only its
//     own token's (no subject names a workspace). The durable has one
//     subject filter, the narrowest that covers the handlers' types: one
//     type's subject if they take one, else all the token reads, and events
//     of types no handler takes are acked without a handler seeing them.
//   - Durable: the consumer keeps the service's position. A token has its
//     own consumer names (natsaccess.Consumers, natsaccess.MaxConsumers of
//     them); the subscriber finds the one holding Config.Durable, or makes
//     it (natsaccess.ClaimConsumer). The first run creates it where
//     Config.Start says (new events, the whole history, a stream sequence, a
//     time); later runs resume after the last event acked, so a service that
//     was down catches up with nothing lost. The durable is the token's, not
//     the secret's: after a rotation the new secret resumes it. Services
//     with different tokens never share or see each other's durables, even
//     with the same name, and each gets every event it may read. The
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
//     consumers do (limits retention), and services read a mirror of it, so
//     a slow or stopped subscriber only falls behind itself.
//   - Rotation and deletion of its own token: the ledger cuts the token's
//     connections within about a second and the server refuses the old
//     secret, so Run returns an error that says so. Run it again with the
//     token's current secret: it resumes where it was.
//
// Logs are off unless Config.Logger is set; the token is never logged.
package subscriber
