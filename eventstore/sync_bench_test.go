package eventstore_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
)

// BenchmarkAppendSync is what an fsync of every write costs an append, on
// an embedded file-storage server like `ledger serve`'s: "default" fsyncs
// every two minutes (the server's default), "always" before each
// acknowledgement (--nats-sync always). Both run in one process, one after
// the other, on the same disk:
//
//	go test -run '^$' -bench AppendSync -benchtime 2000x -count 3 ./eventstore
func BenchmarkAppendSync(b *testing.B) {
	for _, c := range []struct {
		name string
		sync eventstore.Sync
	}{
		{"default", eventstore.Sync{}},
		{"always", eventstore.Sync{Always: true}},
	} {
		// One caller waits for each append in turn; 16 callers keep the
		// server busy, as a loaded ledger does.
		for _, callers := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/callers=%d", c.name, callers), func(b *testing.B) {
				st := syncedStore(b, c.sync)
				e := domain.Env{Now: t0, Rand: rand.Reader, Actor: domain.Actor{TokenID: "tok_bench"}}
				events := make([]domain.Event, b.N)
				for i := range events {
					_, ev, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "ci"}, e)
					if err != nil {
						b.Fatal(err)
					}
					events[i] = ev
				}
				ctx := context.Background()
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for range callers {
					wg.Go(func() {
						for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
							if _, err := st.Append(ctx, events[i], 0); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
			})
		}
	}
}

// syncedStore opens the default event store on an embedded server in a
// temporary directory that fsyncs as fsync says.
func syncedStore(b *testing.B, fsync eventstore.Sync) *eventstore.Store {
	b.Helper()
	ns, err := eventstore.StartEmbedded(eventstore.EmbeddedConfig{StoreDir: b.TempDir(), Sync: fsync})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := eventstore.Open(ctx, js, eventstore.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	return st
}
