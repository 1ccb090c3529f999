package eventstore_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
)

// Several ledgers started at once on an empty server all open the stream:
// none fails because another created it in between, and they share one
// stream (the same creation time), not one each.
func TestLedgersOpeningAnEmptyServerAtOnceShareOneStream(t *testing.T) {
	ns := eventstoretest.MustServer(t)
	for round := range 20 {
		cfg := eventstore.DefaultConfig()
		cfg.Stream, cfg.SubjectPrefix = fmt.Sprintf("RACE%d", round), fmt.Sprintf("race%d", round)
		openAtOnce(t, []string{ns.ClientURL()}, cfg, 6)
	}
}

// The same on a three-server cluster, the stream replicated on all three:
// the servers' meta leader sees the creations in some order, and the late
// ones must not fail.
func TestLedgersOpeningAnEmptyClusterAtOnceShareOneStream(t *testing.T) {
	urls, _ := startPlainCluster(t, 3)
	for round := range 5 {
		cfg := eventstore.DefaultConfig()
		cfg.Stream, cfg.SubjectPrefix, cfg.Replicas = fmt.Sprintf("RACE%d", round), fmt.Sprintf("race%d", round), 3
		// One ledger per server, as behind a load balancer.
		openAtOnce(t, urls, cfg, 3)
	}
}

// openAtOnce opens cfg's stream from n connections at the same moment (the
// i-th on urls[i%len(urls)]) and checks they all got the same stream.
func openAtOnce(t *testing.T, urls []string, cfg eventstore.Config, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	jss := make([]jetstream.JetStream, n)
	for i := range jss {
		nc, err := nats.Connect(urls[i%len(urls)])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		if jss[i], err = jetstream.New(nc); err != nil {
			t.Fatal(err)
		}
	}
	start := make(chan struct{})
	created := make([]time.Time, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			store, err := eventstore.Open(ctx, jss[i], cfg)
			if err != nil {
				errs[i] = err
				return
			}
			id, err := store.Identity(ctx)
			errs[i], created[i] = err, id.Created
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("stream %s, ledger %d of %d: %v", cfg.Stream, i+1, n, err)
		}
		if !created[i].Equal(created[0]) {
			t.Fatalf("stream %s: ledger %d sees a stream created at %s, ledger 1 one created at %s", cfg.Stream, i+1, created[i], created[0])
		}
	}
}

// startPlainCluster runs size JetStream servers in one cluster, in this
// process, without authentication (the store's own tests), and returns their
// client URLs once the cluster has a JetStream meta leader.
func startPlainCluster(t *testing.T, size int) ([]string, []*server.Server) {
	t.Helper()
	ports := make([]int, size)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	servers := make([]*server.Server, size)
	var urls []string
	for i := range servers {
		opts := &server.Options{}
		conf := fmt.Sprintf("cluster {\n  name: race\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n", ports[i], strings.Join(routes, ", "))
		if err := opts.ProcessConfigString(conf); err != nil {
			t.Fatal(err)
		}
		opts.ServerName = fmt.Sprintf("n%d", i+1)
		opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
		opts.JetStream, opts.StoreDir = true, t.TempDir()
		opts.NoSigs, opts.NoLog = true, true
		ns, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		servers[i] = ns
	}
	for i, ns := range servers {
		if !ns.ReadyForConnections(20 * time.Second) {
			t.Fatalf("server %d not ready", i+1)
		}
		urls = append(urls, ns.ClientURL())
	}
	deadline := time.Now().Add(30 * time.Second)
	for !metaReady(servers) {
		if time.Now().After(deadline) {
			t.Fatal("the cluster has no JetStream meta leader after 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return urls, servers
}

// metaReady: one server leads JetStream's meta group and all are current
// with it.
func metaReady(servers []*server.Server) bool {
	leader := false
	for _, ns := range servers {
		if !ns.JetStreamIsCurrent() {
			return false
		}
		leader = leader || ns.JetStreamIsLeader()
	}
	return leader
}
