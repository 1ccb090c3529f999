package natsaccesstest

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startCluster runs n JetStream servers in one cluster, in this process,
// each with the ledger's accounts (accounts is natsaccess's configuration)
// and routes that authenticate, and returns them once they accept clients.
func startCluster(tb testing.TB, n int, accounts, routeAuth, routeUser, routePassword string) []*server.Server {
	tb.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(tb)
	}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://%s:%s@127.0.0.1:%d", routeUser, routePassword, p))
	}
	servers := make([]*server.Server, n)
	for i := range servers {
		conf := accounts + fmt.Sprintf("\ncluster {\n  name: ledger\n  listen: 127.0.0.1:%d\n  %s\n  routes: [%s]\n}\n",
			ports[i], strings.ReplaceAll(routeAuth, "\n", "\n  "), strings.Join(routes, ", "))
		opts := &server.Options{}
		if err := opts.ProcessConfigString(conf); err != nil {
			tb.Fatalf("cluster server %d configuration: %v", i+1, err)
		}
		opts.ServerName = fmt.Sprintf("n%d", i+1)
		opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
		opts.JetStream, opts.StoreDir = true, tb.TempDir()
		opts.NoSigs, opts.NoLog = true, true
		ns, err := server.NewServer(opts)
		if err != nil {
			tb.Fatal(err)
		}
		go ns.Start()
		tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		servers[i] = ns
	}
	for i, ns := range servers {
		if !ns.ReadyForConnections(20 * time.Second) {
			tb.Fatalf("cluster server %d not ready", i+1)
		}
	}
	return servers
}

func freePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
