// Package eventstoretest starts a real embedded nats-server for tests: a random
// port, a temporary store directory, everything removed when the test ends.
// Tests never mock JetStream.
package eventstoretest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/eventstore"
)

// MustServer starts an embedded JetStream server on a random loopback port.
func MustServer(tb testing.TB) *server.Server {
	tb.Helper()
	ns, err := eventstore.StartEmbedded(eventstore.EmbeddedConfig{
		StoreDir: tb.TempDir(),
		Listen:   "127.0.0.1:0",
	})
	if err != nil {
		tb.Fatalf("start embedded nats: %v", err)
	}
	tb.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// MustConnect opens a client connection to ns, closed when the test ends.
func MustConnect(tb testing.TB, ns *server.Server) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		tb.Fatalf("connect to nats: %v", err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// MustStore starts a server and opens the default event store on it.
func MustStore(tb testing.TB) (*eventstore.Store, jetstream.JetStream, *server.Server) {
	tb.Helper()
	ns := MustServer(tb)
	_, js := MustConnect(tb, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := eventstore.Open(ctx, js, eventstore.DefaultConfig())
	if err != nil {
		tb.Fatalf("open event store: %v", err)
	}
	return st, js, ns
}

// Tamper plays an attacker who reached the JetStream API: it updates every
// consumer on the TOKENS stream that pick selects (CONSUMER.CREATE on an
// existing name is an update), with change applied to its config, and says
// how many it changed. js must be a connection that may do so (the
// ledger's own).
func Tamper(tb testing.TB, js jetstream.JetStream, pick func(jetstream.ConsumerConfig) bool, change func(*jetstream.ConsumerConfig)) int {
	tb.Helper()
	ctx := context.Background()
	stream, err := js.Stream(ctx, "TOKENS")
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	lister := stream.ListConsumers(ctx)
	for info := range lister.Info() {
		if !pick(info.Config) {
			continue
		}
		cfg := info.Config
		change(&cfg)
		if _, err := js.UpdateConsumer(ctx, "TOKENS", cfg); err != nil {
			tb.Fatalf("tamper with consumer %s: %v", info.Name, err)
		}
		n++
	}
	if err := lister.Err(); err != nil {
		tb.Fatal(err)
	}
	return n
}
