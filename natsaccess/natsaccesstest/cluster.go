package natsaccesstest

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tokenledger/tokenledger/natsaccess"
)

// StartCluster runs a JetStream server per client port in one cluster, in
// this process, set up as `ledger nats setup --routes` sets servers up for
// creds and stream, until the test ends, and returns them once they accept
// clients. The ports are chosen before (a test may start ledgers that wait
// for the servers first); a port 0 is any free one.
func StartCluster(tb testing.TB, creds natsaccess.Credentials, stream string, clientPorts []int) []*server.Server {
	tb.Helper()
	accounts, err := creds.ServerConfig(stream)
	if err != nil {
		tb.Fatal(err)
	}
	routes, err := creds.RoutesConfig()
	if err != nil {
		tb.Fatal(err)
	}
	return startCluster(tb, clientPorts, accounts, routes, natsaccess.RouteUser, creds.RoutePassword)
}

// startCluster runs a JetStream server per client port in one cluster, in
// this process, each with the ledger's accounts (accounts is natsaccess's
// configuration) and routes that authenticate, and returns them once they
// accept clients.
func startCluster(tb testing.TB, clientPorts []int, accounts, routeAuth, routeUser, routePassword string) []*server.Server {
	tb.Helper()
	n := len(clientPorts)
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
		opts.Host, opts.Port = "127.0.0.1", clientPorts[i]
		if opts.Port == 0 {
			opts.Port = server.RANDOM_PORT
		}
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
