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
	// LedgerPassword, when set, locks the server down: only a client that logs
	// in as user "ledger" with it may write; everyone else (services on Listen)
	// may read the stream and run consumers, but cannot publish events, change
	// or delete the stream. Left empty, the server is open (tests only).
	LedgerPassword string
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

// LedgerUser is the user the ledger logs in as when LedgerPassword is set.
const LedgerUser = "ledger"

// LedgerInboxPrefix is the ledger connection's inbox prefix
// (nats.CustomInboxPrefix). Services may neither read nor write under it, so
// they cannot learn or feed the replies the ledger's own consumers run on.
const LedgerInboxPrefix = "_LEDGER_INBOX"

// servicePermissions is what an anonymous client of a locked-down server may
// do: the JetStream API calls a consumer of its own needs, and nothing that
// writes to the stream or reaches the ledger's own consumers. Those consumers
// have random names; services can neither list consumers, nor watch the
// JetStream API traffic, advisories or system events that would name them,
// nor pause, delete or unpin a consumer. Even so, the ledger does not rely on
// this alone: its feed refuses any gap in the stream's sequence (app.Run), so
// a consumer tampered with is noticed and replaced.
//
// A stricter split (the ledger and services in separate NATS accounts, the
// stream exported read-only) is the production answer for an external
// cluster; see the README.
func servicePermissions() *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{
			Allow: []string{
				"$JS.API.INFO",
				"$JS.API.STREAM.INFO.*",
				"$JS.API.STREAM.NAMES",
				"$JS.API.STREAM.LIST",
				"$JS.API.STREAM.MSG.GET.*",
				"$JS.API.DIRECT.GET.>",
				"$JS.API.CONSUMER.>",
				"$JS.ACK.>",
				"$JS.FC.>",
			},
			Deny: []string{
				"$JS.API.CONSUMER.LIST.*",
				"$JS.API.CONSUMER.NAMES.*",
				"$JS.API.CONSUMER.PAUSE.>",
				"$JS.API.CONSUMER.DELETE.>",
				"$JS.API.CONSUMER.UNPIN.>",
				"$JS.API.CONSUMER.LEADER.>",
				LedgerInboxPrefix + ".>",
			},
		},
		Subscribe: &server.SubjectPermission{
			Allow: []string{">"},
			Deny:  []string{"$JS.API.>", "$JS.EVENT.>", "$SYS.>", LedgerInboxPrefix + ".>"},
		},
	}
}

// StartEmbedded starts a JetStream-enabled nats-server and waits until it
// accepts connections. The caller shuts it down with Shutdown and
// WaitForShutdown.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	opts := &server.Options{
		ServerName: cfg.ServerName,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		// The ledger handles signals itself; nats-server must not exit the process.
		NoSigs:       true,
		NoLog:        true,
		SyncInterval: cfg.Sync.Interval,
		SyncAlways:   cfg.Sync.Always,
	}
	if cfg.LedgerPassword != "" {
		opts.Users = []*server.User{
			{Username: LedgerUser, Password: cfg.LedgerPassword},
			{Username: "service", Permissions: servicePermissions()},
		}
		opts.NoAuthUser = "service"
	}
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
