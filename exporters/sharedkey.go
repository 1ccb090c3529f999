package exporters

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/shared"
)

// N ledgers behind one load balancer must sign with one key, or an
// auditor's pinned key verifies some exports and not others. Two ways:
// an operator gives every instance the same key file (LoadKeyFile), or,
// by default, the stream's key lives in a bucket beside the stream
// (SharedKey), made once by whichever instance comes first.

// LoadKeyFile reads an operator-supplied signing key: an Ed25519 private
// key, PEM PKCS#8 ("PRIVATE KEY"), as `openssl genpkey -algorithm ed25519`
// and LoadOrCreateKey write it. Give every instance the same file; keep it
// readable by the ledger only.
func LoadKeyFile(path string) (ed25519.PrivateKey, error) {
	return loadKey(path)
}

// sharedKeyName is the key's entry in the bucket.
const sharedKeyName = "ed25519"

// KeyBucket opens the bucket of the stream's audit signing key
// (tokenledger_audit_key_<stream>), making it the first time. It holds one
// entry, kept for good.
func KeyBucket(ctx context.Context, js jetstream.JetStream, cfg shared.Config) (jetstream.KeyValue, error) {
	return shared.Open(ctx, js, cfg, shared.Bucket{
		Kind:        shared.KindAuditKey,
		Description: "TokenLedger: the stream's audit export signing key (Ed25519, PEM PKCS#8)",
		MaxValue:    4 << 10,
	})
}

// SharedKey returns the stream's signing key from kv (see KeyBucket), the
// one every instance signs with. The first instance to find the bucket
// empty puts a key there with a create that only one writer can win, so
// instances starting together agree: the key of dataDir's key file (see
// LoadOrCreateKey) if there is one, so that a ledger that ran alone keeps
// the key its auditors pinned; else a new one. An instance whose own file
// holds another key signs with the bucket's and says so in its log (the
// file is left as it is). dataDir "" looks at no file.
func SharedKey(ctx context.Context, kv jetstream.KeyValue, dataDir string, log *slog.Logger) (ed25519.PrivateKey, error) {
	var local ed25519.PrivateKey
	if dataDir != "" {
		k, err := loadKey(filepath.Join(dataDir, KeyFile))
		switch {
		case err == nil:
			local = k
		case !errors.Is(err, fs.ErrNotExist):
			// A key file that cannot be read is not replaced by another key
			// in silence: its public half may be pinned.
			return nil, err
		}
	}
	key, err := sharedKeyOf(ctx, kv)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		candidate, from := local, "the key file under the data directory"
		if candidate == nil {
			if _, candidate, err = ed25519.GenerateKey(rand.Reader); err != nil {
				return nil, fmt.Errorf("audit key: generate: %w", err)
			}
			from = "a new key"
		}
		der, err := x509.MarshalPKCS8PrivateKey(candidate)
		if err != nil {
			return nil, fmt.Errorf("audit key: %w", err)
		}
		_, err = kv.Create(ctx, sharedKeyName, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		switch {
		case err == nil:
			log.Info("audit signing key shared in its bucket", "bucket", kv.Bucket(), "from", from, "key_id", KeyID(candidate.Public().(ed25519.PublicKey)))
			return candidate, nil
		case errors.Is(err, jetstream.ErrKeyExists):
			key, err = sharedKeyOf(ctx, kv) // another instance was first
		default:
			return nil, fmt.Errorf("audit key: bucket %s: %w", kv.Bucket(), err)
		}
	}
	if err != nil {
		return nil, err
	}
	if local != nil && !local.Equal(key) {
		log.Warn("audit signing key: the key file under the data directory is not the stream's shared key; signing with the shared key",
			"file", filepath.Join(dataDir, KeyFile), "file_key_id", KeyID(local.Public().(ed25519.PublicKey)),
			"shared_key_id", KeyID(key.Public().(ed25519.PublicKey)))
	}
	return key, nil
}

func sharedKeyOf(ctx context.Context, kv jetstream.KeyValue) (ed25519.PrivateKey, error) {
	e, err := kv.Get(ctx, sharedKeyName)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("audit key: bucket %s: %w", kv.Bucket(), err)
	}
	key, err := parseKey(e.Value())
	if err != nil {
		return nil, fmt.Errorf("audit key in bucket %s: %w", kv.Bucket(), err)
	}
	return key, nil
}
