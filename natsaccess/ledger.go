package natsaccess

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Conns are the ledger's two connections: Ledger in LEDGER (the stream, the
// callout, the services' mirror) and System in SYS (the revoker).
type Conns struct {
	Ledger *nats.Conn
	System *nats.Conn
}

// Close closes both.
func (c *Conns) Close() {
	if c.System != nil {
		c.System.Close()
	}
	if c.Ledger != nil {
		c.Ledger.Close()
	}
}

// Connect logs the ledger in. url is a server or a cluster's URLs, comma-
// separated; inProcess, when not nil, connects to an embedded server
// without a socket (url is then ignored). opts apply to both connections.
func Connect(url string, inProcess nats.InProcessConnProvider, creds Credentials, opts ...nats.Option) (*Conns, error) {
	connect := func(name, user, password string) (*nats.Conn, error) {
		// A server checks the password against its bcrypt hash, which takes
		// longer than nats.go's 2 s default on a busy or slow machine.
		o := append([]nats.Option{nats.Name(name), nats.UserInfo(user, password), nats.Timeout(20 * time.Second)}, opts...)
		if inProcess != nil {
			o = append(o, nats.InProcessServer(inProcess))
			return nats.Connect("", o...)
		}
		return nats.Connect(url, o...)
	}
	var c Conns
	var err error
	if c.Ledger, err = connect("ledger", LedgerUser, creds.LedgerPassword); err != nil {
		return nil, fmt.Errorf("connect to NATS as %s: %w", LedgerUser, err)
	}
	if c.System, err = connect("ledger-revoker", SystemUser, creds.SystemPassword); err != nil {
		c.Ledger.Close()
		return nil, fmt.Errorf("connect to NATS as %s: %w", SystemUser, err)
	}
	return &c, nil
}

// Access is the services' side of a running ledger: their mirror, the
// callout that lets them in and the revoker that cuts them off.
type Access struct {
	stop func()
}

// Settings are what Start needs of the ledger's stream.
type Settings struct {
	Stream        string
	SubjectPrefix string
	Storage       jetstream.StorageType
	Replicas      int
	// RevokeEvery is the revoker's interval; zero: RevokeEvery.
	RevokeEvery time.Duration
}

// Start keeps the services' mirror, answers the callout and runs the
// revoker until Stop.
func Start(ctx context.Context, conns *Conns, tokens Tokens, creds Credentials, s Settings, log *slog.Logger) (*Access, error) {
	if s.Stream == "" || s.SubjectPrefix == "" {
		return nil, errors.New("natsaccess: stream and subject prefix are required")
	}
	if err := EnsureMirror(ctx, conns.Ledger, s.Stream, s.Storage, max(s.Replicas, 1)); err != nil {
		return nil, err
	}
	callout, err := NewCallout(tokens, creds, s.Stream, s.SubjectPrefix, log)
	if err != nil {
		return nil, err
	}
	sub, err := callout.Serve(conns.Ledger)
	if err != nil {
		return nil, err
	}
	every := s.RevokeEvery
	if every <= 0 {
		every = RevokeEvery
	}
	revoker, err := NewRevoker(conns.System, conns.Ledger, tokens, s.Stream, s.SubjectPrefix, log)
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	revoker.heal = func(ctx context.Context) error {
		return EnsureMirror(ctx, conns.Ledger, s.Stream, s.Storage, max(s.Replicas, 1))
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		revoker.Run(rctx, every)
	}()
	return &Access{stop: func() {
		_ = sub.Unsubscribe()
		cancel()
		<-done
	}}, nil
}

// Stop stops answering and watching; connections already made stay.
func (a *Access) Stop() { a.stop() }
