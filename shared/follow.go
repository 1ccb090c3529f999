package shared

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Follower hands every write to a bucket, the ones it held when it started
// and each one after, to a function: a local mirror of the bucket, so that
// what is read on every request is read from memory and not over the
// network.
type Follower struct {
	kv    jetstream.KeyValue
	apply func(jetstream.KeyValueEntry)
	log   *slog.Logger

	mu   sync.Mutex
	seen uint64        // the highest revision handed to apply
	wake chan struct{} // closed and replaced when seen moves

	cancel context.CancelFunc
	done   chan struct{}
}

// Follow starts handing kv's entries to apply, in revision order, from a
// goroutine of its own (apply must not block for long). A deleted key comes
// as an entry whose Operation is not KeyValuePut. When the watch breaks
// (NATS down long enough for the server to drop it) it starts again from
// the revision after the last one seen. Stop ends it.
func Follow(kv jetstream.KeyValue, apply func(jetstream.KeyValueEntry), log *slog.Logger) *Follower {
	ctx, cancel := context.WithCancel(context.Background())
	f := &Follower{kv: kv, apply: apply, log: log, wake: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go f.run(ctx)
	return f
}

func (f *Follower) run(ctx context.Context) {
	defer close(f.done)
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		var opts []jetstream.WatchOpt
		if seen := f.revision(); seen > 0 {
			opts = append(opts, jetstream.ResumeFromRevision(seen+1))
		}
		w, err := f.kv.WatchAll(ctx, opts...)
		if err == nil {
			for e := range w.Updates() {
				if e == nil {
					continue // the end of what the bucket held at the start
				}
				f.apply(e)
				f.saw(e.Revision())
				wait = 100 * time.Millisecond
			}
			_ = w.Stop()
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			f.log.Warn("shared bucket: watch failed; retrying", "bucket", f.kv.Bucket(), "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func (f *Follower) revision() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen
}

func (f *Follower) saw(rev uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if rev > f.seen {
		f.seen = rev
		close(f.wake)
		f.wake = make(chan struct{})
	}
}

// Synced returns once everything the bucket holds now has been handed to
// apply: afterwards this instance's mirror knows every write acknowledged
// before the call, wherever it was made.
func (f *Follower) Synced(ctx context.Context) error {
	want, err := LastRevision(ctx, f.kv)
	if err != nil {
		return err
	}
	for {
		f.mu.Lock()
		seen, wake := f.seen, f.wake
		f.mu.Unlock()
		if seen >= want {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-f.done:
			return errors.New("shared bucket: follower stopped")
		case <-wake:
		}
	}
}

// Stop ends the watch and waits for its goroutine.
func (f *Follower) Stop() {
	f.cancel()
	<-f.done
}
