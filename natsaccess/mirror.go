package natsaccess

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/eventstore"
)

// MaxAckPending bounds each service consumer's unacknowledged events, and so
// the server memory its pending state takes.
const MaxAckPending = 1000

// EnsureMirror creates, or brings to this configuration, the services'
// read-only mirror of the ledger's stream: same name, same subjects and
// sequences. nc is the ledger's connection (in LEDGER), which reaches the
// services' JetStream API under ServicesAPIPrefix.
func EnsureMirror(ctx context.Context, nc *nats.Conn, stream string, storage jetstream.StorageType, replicas int) error {
	js, err := jetstream.NewWithAPIPrefix(nc, ServicesAPIPrefix)
	if err != nil {
		return err
	}
	// Several ledgers may make it at once (eventstore.EnsureStream).
	_, err = eventstore.EnsureStream(ctx, js, jetstream.StreamConfig{
		Name:        stream,
		Description: "TokenLedger events for services: a read-only mirror of the ledger's stream",
		Storage:     storage,
		Replicas:    replicas,
		Mirror: &jetstream.StreamSource{
			Name: stream,
			External: &jetstream.ExternalStream{
				APIPrefix:     LedgerAPIPrefix,
				DeliverPrefix: MirrorDeliverPrefix(stream),
			},
		},
		DenyDelete:     true,
		DenyPurge:      true,
		ConsumerLimits: jetstream.StreamConsumerLimits{MaxAckPending: MaxAckPending},
	})
	if err != nil {
		return fmt.Errorf("services' mirror of stream %s: %w", stream, err)
	}
	return nil
}
