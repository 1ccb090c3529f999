package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/projections"
)

// natsConnected is the ledger's connection check (app.WithConnectionCheck):
// while the connection is down, commands are refused at once instead of
// waiting for a publish to time out.
func natsConnected(nc *nats.Conn) func() error {
	return func() error {
		if nc.IsConnected() {
			return nil
		}
		return fmt.Errorf("connection %s", strings.ToLower(nc.Status().String()))
	}
}

// healthOf reports what /healthz and /readyz show: NATS connected, the stream
// answering (within 2 s), the view keeping up with it (see lagWatch) on a
// feed that delivers what it asked for (see app.Run: a consumer found
// changed, a message without its body). The stream is not asked while NATS
// is down, so neither answer waits for it; the view's lag cannot be judged
// then, and it keeps answering reads.
func healthOf(nc *nats.Conn, store *eventstore.Store, view *projections.Tokens, lag *lagWatch) func(context.Context) []httpapi.Component {
	connected := natsConnected(nc)
	return func(ctx context.Context) []httpapi.Component {
		natsErr := connected()
		var streamErr, viewErr error
		if natsErr != nil {
			streamErr = errors.New("cannot be reached while NATS is down")
		} else {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			last, err := store.LastSequence(ctx)
			if err != nil {
				streamErr = err
			} else {
				viewErr = lag.check(view.Sequence(), last, time.Now())
			}
		}
		if fault := view.FeedFault(); fault != nil {
			viewErr = fmt.Errorf("feed fault: %w", fault)
		}
		return []httpapi.Component{{Name: "nats", Err: natsErr}, {Name: "stream", Err: streamErr}, {Name: "view", Err: viewErr}}
	}
}
