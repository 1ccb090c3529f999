package httpapi_test

import (
	"bytes"
	"net/url"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/httpapi"
)

// Two instances with the stream's shared key sign exports an auditor checks
// against one pinned public key: the one the first instance serves. Each
// instance's data directory starts empty, so without the bucket each would
// have made a key of its own.
func TestBothInstancesSignExportsWithTheStreamsKey(t *testing.T) {
	ins, owner := newInstances(t, 2, instanceSetup{ledgerOpts: func(t testing.TB, js jetstream.JetStream) []app.Option {
		kv, err := exporters.KeyBucket(ctxT(t), js, streamBuckets())
		if err != nil {
			t.Fatal(err)
		}
		key, err := exporters.SharedKey(ctxT(t), kv, t.TempDir(), quietLogger())
		if err != nil {
			t.Fatal(err)
		}
		return []app.Option{app.WithAuditKey(key)}
	}})
	if _, err := ins[0].client(owner).CreateToken(ctxT(t), httpapi.CreateRequest{Scope: "organization", Name: "ci"}, ""); err != nil {
		t.Fatal(err)
	}
	served, err := ins[0].client("").AuditPublicKey(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	pinned, err := exporters.ParsePublicKey(served.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for i, in := range ins {
		var file bytes.Buffer
		manifest, err := in.client(owner).Export(ctxT(t), url.Values{"format": {"jsonl"}}, func(b []byte) error {
			file.Write(b)
			return nil
		}, nil)
		if err != nil {
			t.Fatalf("instance %d: export: %v", i, err)
		}
		rep := exporters.Verify(bytes.NewReader(file.Bytes()), int64(file.Len()), manifest, pinned)
		if !rep.OK() || rep.Rows != 2 {
			t.Errorf("instance %d's export against the key pinned from instance 0: %d rows, %v", i, rep.Rows, rep.Err())
		}
	}
}
