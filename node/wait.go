package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// Start-up waits for what it needs (a NATS server to connect to, JetStream
// to answer, the stream to have a leader) for as long as its context lets
// it: instances started together on an empty cluster, or before the cluster
// has elected a JetStream leader (after a full restart), all come up once it
// is ready, rather than give up after some fixed time and leave a process
// supervisor to start them again in a loop. Each try is bounded by
// tryTimeout (a JetStream request sent before the cluster had a leader is
// never answered), short enough that the log says every few seconds what
// the start is waiting for, and the tries back off from firstPause to
// maxPause.
const (
	tryTimeout = 5 * time.Second
	firstPause = 100 * time.Millisecond
	maxPause   = 5 * time.Second
)

// waitFor calls try until it succeeds, fails for good (permanent), or ctx
// ends, logging each failed try: what it waits for, the attempt, the time
// spent so far and why.
func waitFor(ctx context.Context, log *slog.Logger, what string, try func(context.Context) error) error {
	started := time.Now()
	pause := firstPause
	for attempt := 1; ; attempt++ {
		tryCtx, cancel := context.WithTimeout(ctx, tryTimeout)
		err := try(tryCtx)
		cancel()
		if err == nil {
			if attempt > 1 {
				log.Info("start-up: ready after waiting", "for", what, "attempts", attempt, "elapsed", time.Since(started).Round(time.Millisecond))
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: gave up after %d attempts in %s (%w): %w", what, attempt, time.Since(started).Round(time.Millisecond), context.Cause(ctx), err)
		}
		if permanent(err) {
			return fmt.Errorf("%s: %w", what, err)
		}
		log.Warn("start-up: waiting", "for", what, "attempt", attempt, "elapsed", time.Since(started).Round(time.Millisecond),
			"retry_in", pause, "error", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: gave up after %d attempts in %s (%w): %w", what, attempt, time.Since(started).Round(time.Millisecond), context.Cause(ctx), err)
		case <-time.After(pause):
		}
		pause = min(2*pause, maxPause)
	}
}

// permanent tells the errors waiting does not cure: credentials the servers
// refuse are a configuration to fix, not a cluster still coming up.
func permanent(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked)
}
