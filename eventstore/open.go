package eventstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// streamRequestWait bounds each JetStream API request EnsureStream makes. On
// a cluster, a request can go unanswered for good: of two ledgers creating
// one stream at the same moment, the meta leader answers the first create
// and may never answer the second (an equal assignment proposed again), and
// an update sent while the new stream has no leader yet waits for one that
// will not reply to it. Asking again once the stream has settled is
// answered.
const streamRequestWait = 3 * time.Second

// EnsureStream creates the stream cfg describes, or brings an existing one to
// cfg, and returns it once it answers with a leader. It is safe when several
// ledgers do so at once on an empty server or cluster: whoever loses a race
// to create it updates the stream the winner made, and a request the
// cluster left unanswered is asked again. It returns once it has the
// stream, on an error that asking again would not cure, or when ctx ends.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if err := askAgain(ctx, func() error { return ensureOnce(ctx, js, cfg) }); err != nil {
		return nil, err
	}
	// A stream just made on a cluster has no leader for a moment, and its
	// other servers do not answer for it meanwhile: an append or a read then
	// waits for an answer that never comes.
	var stream jetstream.Stream
	err := askAgain(ctx, func() error {
		ask, cancel := context.WithTimeout(ctx, streamRequestWait)
		defer cancel()
		s, err := js.Stream(ask, cfg.Name)
		if err != nil {
			return err
		}
		if c := s.CachedInfo().Cluster; c != nil && c.Leader == "" {
			return errNoLeader
		}
		stream = s
		return nil
	})
	return stream, err
}

var errNoLeader = errors.New("the stream has no leader yet")

// askAgain calls try until it succeeds, fails in a way asking again would not
// cure, or ctx ends.
func askAgain(ctx context.Context, try func() error) error {
	pause := 50 * time.Millisecond
	for {
		err := try()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last answer: %w)", context.Cause(ctx), err)
		}
		if !raced(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last answer: %w)", context.Cause(ctx), err)
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Second)
	}
}

// ensureOnce is CreateOrUpdateStream with a bound on each request.
//
// An existing stream's replicas are never lowered: a ledger or a bootstrap
// started with a smaller --replicas (1, the default) must not make the
// source of truth lose its copies; lowering them is an operator's act
// (nats stream edit).
func ensureOnce(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	info, cancel := context.WithTimeout(ctx, streamRequestWait)
	if s, err := js.Stream(info, cfg.Name); err == nil {
		cfg.Replicas = max(cfg.Replicas, s.CachedInfo().Config.Replicas)
	}
	cancel()
	update, cancel := context.WithTimeout(ctx, streamRequestWait)
	defer cancel()
	_, err := js.UpdateStream(update, cfg)
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return err
	}
	create, cancel := context.WithTimeout(ctx, streamRequestWait)
	defer cancel()
	_, err = js.CreateStream(create, cfg)
	return err
}

// raced reports the outcomes of a concurrent creation, and of a cluster
// that had not settled yet: another ledger created the stream between our
// update and our create (in use, when its config differs in anything the
// server filled in), it was not found by an update that raced its creation,
// or a request got no answer in streamRequestWait; or the stream, just
// made, has no leader yet.
func raced(err error) bool {
	return errors.Is(err, errNoLeader) ||
		errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) ||
		errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrTimeout)
}
