package eventstore

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures the NATS server the ledger runs in-process when no
// external one is given, so a first run needs nothing installed.
type EmbeddedConfig struct {
	// StoreDir holds JetStream's files.
	StoreDir string
	// Listen is host:port for services to connect to; port 0 picks a free one
	// (tests), "" listens nowhere but in-process.
	Listen string
	// ServerName names the node in logs and cluster views.
	ServerName string
	// Config is nats-server configuration text applied first: the accounts
	// and authorization that lock the server down (natsaccess.ServerConfig).
	// Left empty, the server is open to anyone (tests of the store alone).
	Config string
	// Sync is when JetStream fsyncs what it stored. Left zero, the server's
	// default: every two minutes, so a power loss can take the last two
	// minutes of acknowledged events with it (a process crash loses nothing:
	// the writes are in the OS's page cache).
	Sync Sync
}

// Sync says when an embedded JetStream fsyncs its files: every Interval, or,
// with Always, every write before it is acknowledged.
type Sync struct {
	Interval time.Duration
	Always   bool
}

// ParseSync reads "always" or a duration such as "1s" (a --nats-sync flag).
func ParseSync(s string) (Sync, error) {
	if strings.EqualFold(s, "always") {
		return Sync{Always: true}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return Sync{}, fmt.Errorf("%q is neither \"always\" nor a positive duration (such as 1s or 2m)", s)
	}
	return Sync{Interval: d}, nil
}

// StartEmbedded starts a JetStream-enabled nats-server and waits until it
// accepts connections. The caller shuts it down with Shutdown and
// WaitForShutdown.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	opts := &server.Options{}
	if cfg.Config != "" {
		if err := opts.ProcessConfigString(cfg.Config); err != nil {
			return nil, fmt.Errorf("embedded nats configuration: %w", err)
		}
	}
	opts.ServerName = cfg.ServerName
	opts.JetStream = true
	opts.StoreDir = cfg.StoreDir
	// The ledger handles signals itself; nats-server must not exit the process.
	opts.NoSigs = true
	opts.NoLog = true
	opts.SyncInterval = cfg.Sync.Interval
	opts.SyncAlways = cfg.Sync.Always
	if cfg.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("nats listen address %q: %w", cfg.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("nats listen address %q: port: %w", cfg.Listen, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready after 30s (is %s already in use?)", cfg.Listen)
	}
	return ns, nil
}
