// Package shared keeps what a ledger's instances must agree on beyond the
// stream (console sessions, the failed-authentication budget, last use, the
// audit signing key) in JetStream key-value buckets beside the stream, so
// that N ledgers behind a load balancer without stickiness behave as one.
//
// The buckets live where the stream does: in the ledger's own NATS account
// (natsaccess's LEDGER), where only the ledger logs in, and nothing is
// exported from them to the services' accounts. They are replicated as the
// stream is. Each is named after the stream (tokenledger_<kind>_<stream>),
// so two ledgers of different streams on one account share nothing.
//
// Open makes a bucket; the packages that use one (console, httpapi,
// exporters, and LastUsed here) say what goes in it.
package shared

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/eventstore"
)

// Config is what a ledger's buckets take from its stream.
type Config struct {
	// Stream is the event stream's name; buckets are named after it.
	Stream   string
	Replicas int
	Storage  jetstream.StorageType
}

// ConfigOf is the buckets' config for the stream cfg describes.
func ConfigOf(cfg eventstore.Config) Config {
	return Config{Stream: cfg.Stream, Replicas: cfg.Replicas, Storage: cfg.Storage}
}

// Bucket kinds, the middle of a bucket's name.
const (
	KindSessions     = "sessions"
	KindAuthFailures = "auth_failures"
	KindLastUsed     = "last_used"
	KindAuditKey     = "audit_key"
)

var bucketSafe = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// BucketName is the name of the stream's bucket of kind: the stream's name
// as it is when a bucket name may hold it, else the first 16 hex digits of
// its SHA-256 (a bucket name takes only letters, digits, '_' and '-').
func BucketName(stream, kind string) string {
	s := stream
	if !bucketSafe.MatchString(s) {
		sum := sha256.Sum256([]byte(stream))
		s = hex.EncodeToString(sum[:8])
	}
	return "tokenledger_" + kind + "_" + s
}

// Bucket is how one bucket is shaped.
type Bucket struct {
	Kind        string
	Description string
	// TTL removes a key this long after its last write (0: kept).
	TTL time.Duration
	// MaxMsgs bounds the keys (delete markers included; 0: unbounded).
	// Past it the oldest writes go, not the new one: a flood then costs the
	// entries nearest to their end, never a refused write.
	MaxMsgs int64
	// MaxValue bounds one write's size in bytes, its subject (the key and
	// the bucket's name) and headers included (0: 64 KiB).
	MaxValue int32
}

// Open creates the stream's bucket b, or brings an existing one to b, and
// returns it once it can answer.
//
// The bucket is a KV bucket made by hand rather than by CreateKeyValue for
// one setting: it does not allow direct gets. A direct get may be answered
// by any replica, one that has not yet applied a sign-out, say; without
// them every Get is answered by the stream's leader, which has applied
// every write acknowledged before it (read your writes, on every
// instance). Keys keep one value (history 1).
func Open(ctx context.Context, js jetstream.JetStream, cfg Config, b Bucket) (jetstream.KeyValue, error) {
	if b.Kind == "" || !bucketSafe.MatchString(b.Kind) {
		return nil, fmt.Errorf("bucket kind %q: letters, digits, '_' and '-' only", b.Kind)
	}
	replicas := max(cfg.Replicas, 1)
	name := BucketName(cfg.Stream, b.Kind)
	dup := 2 * time.Minute
	if b.TTL > 0 && b.TTL < dup {
		dup = b.TTL
	}
	maxMsgs := b.MaxMsgs
	if maxMsgs <= 0 {
		maxMsgs = -1
	}
	maxValue := b.MaxValue
	if maxValue <= 0 {
		maxValue = 64 << 10
	}
	scfg := jetstream.StreamConfig{
		Name:              "KV_" + name,
		Description:       b.Description,
		Subjects:          []string{"$KV." + name + ".>"},
		MaxMsgsPerSubject: 1,
		MaxMsgs:           maxMsgs,
		MaxBytes:          -1,
		MaxAge:            b.TTL,
		MaxMsgSize:        maxValue,
		MaxConsumers:      -1,
		Storage:           cfg.Storage,
		Replicas:          replicas,
		Discard:           jetstream.DiscardOld,
		AllowRollup:       true,
		DenyDelete:        true,
		Duplicates:        dup,
		AllowDirect:       false,
	}
	_, err := js.CreateOrUpdateStream(ctx, scfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		// Another instance made it between our update and our create,
		// with other settings (another TTL, say): ours are brought in.
		_, err = js.UpdateStream(ctx, scfg)
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", name, err)
	}
	if replicas > 1 {
		if err := waitForLeader(ctx, js, "KV_"+name); err != nil {
			return nil, fmt.Errorf("bucket %s: %w", name, err)
		}
	}
	kv, err := js.KeyValue(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", name, err)
	}
	return kv, nil
}

// waitForLeader returns once a replicated stream has a leader: one just
// created on a cluster has none for a moment, and a write then finds nobody
// to answer it.
func waitForLeader(ctx context.Context, js jetstream.JetStream, stream string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		s, err := js.Stream(ctx, stream)
		if err == nil {
			if c := s.CachedInfo().Cluster; c != nil && c.Leader != "" {
				return nil
			}
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no leader yet: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// LastRevision is the revision of the newest write kv holds (0: it holds
// none): a watcher that has seen it has seen everything kv held when it was
// asked. The newest write is the last to age out, so when it is gone the
// bucket is empty.
func LastRevision(ctx context.Context, kv jetstream.KeyValue) (uint64, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, fmt.Errorf("bucket %s: unexpected status %T", kv.Bucket(), st)
	}
	if state := bs.StreamInfo().State; state.Msgs > 0 {
		return state.LastSeq, nil
	}
	return 0, nil
}
