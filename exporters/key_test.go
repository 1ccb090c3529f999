package exporters

import (
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys") // does not exist yet
	key, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, KeyFile)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	if b := mustRead(t, path); !strings.HasPrefix(string(b), "-----BEGIN PRIVATE KEY-----") {
		t.Errorf("key file is not PEM PKCS#8: %.30q", b)
	}
	again, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Equal(key) {
		t.Error("second call made a new key")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want only the key (temporary file left behind?)", len(entries))
	}

	mustWrite(t, path, []byte("not a key"))
	if _, err := LoadOrCreateKey(dir); err == nil || !strings.Contains(err.Error(), "PEM") {
		t.Errorf("damaged key file: %v", err)
	}
}

// TestLoadOrCreateKeyRace starts many callers at once on a fresh directory:
// all must get the same key, the one on disk.
func TestLoadOrCreateKeyRace(t *testing.T) {
	dir := t.TempDir()
	keys := make([]ed25519.PrivateKey, 16)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := LoadOrCreateKey(dir)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	onDisk, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if !k.Equal(onDisk) {
			t.Errorf("caller %d got a key that is not the one on disk", i)
		}
	}
}

func TestPublicKeyText(t *testing.T) {
	key := newKey(t)
	p := pub(key)
	s := FormatPublicKey(p)
	if !strings.HasPrefix(s, "ed25519:") {
		t.Fatalf("FormatPublicKey = %q", s)
	}
	for _, in := range []string{s, strings.TrimPrefix(s, "ed25519:"), " " + s + "\n"} {
		got, err := ParsePublicKey(in)
		if err != nil || !got.Equal(p) {
			t.Errorf("ParsePublicKey(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "ed25519:", "ed25519:!!!", base64.StdEncoding.EncodeToString([]byte("short"))} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted", bad)
		}
	}
	id := KeyID(p)
	if len(id) != 16 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Errorf("KeyID = %q, want 16 hex characters", id)
	}
	if KeyID(pub(newKey(t))) == id {
		t.Error("two keys share a KeyID")
	}
}
