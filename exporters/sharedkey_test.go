package exporters

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/shared"
)

func keyCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// keyBuckets opens the audit key bucket once per connection: n ledger
// processes on one NATS server, each with its own connection.
func keyBuckets(t *testing.T, n int) []jetstream.KeyValue {
	t.Helper()
	ns := eventstoretest.MustServer(t)
	var out []jetstream.KeyValue
	for range n {
		_, js := eventstoretest.MustConnect(t, ns)
		kv, err := KeyBucket(keyCtx(t), js, shared.ConfigOf(eventstore.DefaultConfig()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, kv)
	}
	return out
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)) }

// Eight instances starting at the same moment on an empty bucket, none with
// a key file, end up with one key: one create wins, the others read it.
// One started later gets it too.
func TestInstancesStartingTogetherSignWithOneKey(t *testing.T) {
	kvs := keyBuckets(t, 9)
	keys := make([]ed25519.PrivateKey, 8)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range keys {
		wg.Go(func() {
			<-start
			k, err := SharedKey(keyCtx(t), kvs[i], "", quietLog())
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	close(start)
	wg.Wait()
	later, err := SharedKey(keyCtx(t), kvs[8], "", quietLog())
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if k == nil || !k.Equal(later) {
			t.Fatalf("instance %d signs with key %v, the one started later with %s", i, k != nil, KeyID(later.Public().(ed25519.PublicKey)))
		}
	}
}

// A ledger that ran alone has a key file its auditors pinned: the first
// instance to find the bucket empty shares that key, not a new one. An
// instance with another key file of its own signs with the shared key,
// says so in its log, and leaves its file as it was.
func TestAKeyFileFromARunAloneBecomesTheSharedKey(t *testing.T) {
	kvs := keyBuckets(t, 2)
	pinnedDir, otherDir := t.TempDir(), t.TempDir()
	pinned, err := LoadOrCreateKey(pinnedDir)
	if err != nil {
		t.Fatal(err)
	}
	other, err := LoadOrCreateKey(otherDir)
	if err != nil {
		t.Fatal(err)
	}
	otherFile := mustRead(t, filepath.Join(otherDir, KeyFile))

	got, err := SharedKey(keyCtx(t), kvs[0], pinnedDir, quietLog())
	if err != nil || !got.Equal(pinned) {
		t.Fatalf("the first instance shares key %v (%v), want its key file's", got != nil, err)
	}
	var logs bytes.Buffer
	got, err = SharedKey(keyCtx(t), kvs[1], otherDir, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil || !got.Equal(pinned) {
		t.Fatalf("the second instance signs with key %v (%v), want the shared (pinned) one", got != nil, err)
	}
	pinnedID, otherID := KeyID(pinned.Public().(ed25519.PublicKey)), KeyID(other.Public().(ed25519.PublicKey))
	if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, pinnedID) || !strings.Contains(l, otherID) {
		t.Errorf("the second instance's log does not name both keys (%s, %s):\n%s", pinnedID, otherID, l)
	}
	if !bytes.Equal(mustRead(t, filepath.Join(otherDir, KeyFile)), otherFile) {
		t.Error("the second instance's key file was changed")
	}
}

// A key file that cannot be read is an error, not a reason to share a new
// key: its public half may be the one auditors pinned.
func TestAnUnreadableKeyFileIsNotReplacedInSilence(t *testing.T) {
	kv := keyBuckets(t, 1)[0]
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := SharedKey(keyCtx(t), kv, dir, quietLog()); err == nil || k != nil {
		t.Fatalf("a broken key file gave a key (%v)", err)
	}
	if _, err := kv.Get(keyCtx(t), sharedKeyName); err == nil {
		t.Error("a key was shared although the instance's key file could not be read")
	}
}

// An operator's key file (PEM PKCS#8, as openssl genpkey and
// LoadOrCreateKey write it) gives every instance that is handed it the
// same key; anything else is refused without quoting the file.
func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	want, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadKeyFile(filepath.Join(dir, KeyFile))
	if err != nil || !got.Equal(want) {
		t.Fatalf("LoadKeyFile = %v, %v", got != nil, err)
	}
	bad := filepath.Join(dir, "bad.pem")
	secretish := "-----BEGIN PRIVATE KEY-----\nTUlJQ0lqQU5CZ2txaGtpRzl3MEJBUUVGQUFPQ0FnOEFNSUlDQ2dLQ0FnRUF0\n-----END PRIVATE KEY-----\n"
	if err := os.WriteFile(bad, []byte(secretish), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadKeyFile(bad)
	if err == nil || strings.Contains(err.Error(), "TUlJQ0lq") {
		t.Fatalf("a malformed key file: %v", err)
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing.pem")); err == nil {
		t.Fatal("a missing key file gave a key")
	}
}
