package natsaccess_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/console"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/natsaccess/natsaccesstest"
	"github.com/tokenledger/tokenledger/shared"
)

// The buckets the ledger's instances share (console sessions, the
// failed-authentication budget, last use, the audit signing key) are in
// the ledger's own account, beside the stream, with the stream's replicas
// (three on the cluster): a service, even one with an owner's token, can
// neither read, watch, write nor delete them, through any API prefix, and
// they are as they were afterwards.
func TestServicesCannotReachTheSharedBuckets(t *testing.T) {
	eachShape(t, servicesCannotReachTheSharedBuckets)
}

func servicesCannotReachTheSharedBuckets(t *testing.T, shape natsaccesstest.Options) {
	l := natsaccesstest.Start(t, shape)
	stream, err := l.LedgerJS.Stream(ctx(t), "TOKENS")
	if err != nil {
		t.Fatal(err)
	}
	cfg := shared.ConfigOf(eventstore.DefaultConfig())
	cfg.Replicas = stream.CachedInfo().Config.Replicas
	var kvs []jetstream.KeyValue
	var revs []uint64 // the probe's revision in each
	for _, open := range []func() (jetstream.KeyValue, error){
		func() (jetstream.KeyValue, error) {
			return console.SessionBucket(ctx(t), l.LedgerJS, cfg, console.DefaultIdle, console.DefaultAbsolute)
		},
		func() (jetstream.KeyValue, error) {
			return httpapi.FailureBucket(ctx(t), l.LedgerJS, cfg, 20, 3*time.Second)
		},
		func() (jetstream.KeyValue, error) { return shared.LastUsedBucket(ctx(t), l.LedgerJS, cfg) },
		func() (jetstream.KeyValue, error) { return exporters.KeyBucket(ctx(t), l.LedgerJS, cfg) },
	} {
		kv, err := open()
		if err != nil {
			t.Fatal(err)
		}
		rev, err := kv.Put(ctx(t), "probe", []byte("the ledger's"))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
		s, err := l.LedgerJS.Stream(ctx(t), "KV_"+kv.Bucket())
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.Replicas; got != cfg.Replicas || got != max(shape.Cluster, 1) {
			t.Errorf("bucket %s has %d replicas; the stream %d", kv.Bucket(), got, cfg.Replicas)
		}
		kvs = append(kvs, kv)
	}
	x, _ := service(t, l, l.OwnerSecret)
	x.refused("watch every bucket", "$KV.>", func() { _, _ = x.nc.Subscribe("$KV.>", func(*nats.Msg) {}) })
	for i, kv := range kvs {
		b := kv.Bucket()
		for _, subj := range []string{
			"$JS.API.STREAM.MSG.GET.KV_" + b, "$JS.API.DIRECT.GET.KV_" + b, "$JS.API.DIRECT.GET.KV_" + b + ".$KV." + b + ".probe",
			natsaccess.APIPrefix + ".STREAM.MSG.GET.KV_" + b, natsaccess.APIPrefix + ".DIRECT.GET.KV_" + b,
			"$JS.API.STREAM.INFO.KV_" + b, "$JS.API.STREAM.PURGE.KV_" + b, "$JS.API.STREAM.DELETE.KV_" + b,
			"$JS.API.CONSUMER.CREATE.KV_" + b, natsaccess.APIPrefix + ".CONSUMER.CREATE.KV_" + b,
			"$KV." + b + ".probe",
		} {
			x.refused("publish "+subj, subj, func() { _ = x.nc.Publish(subj, []byte(`{"last_by_subj":"$KV.`+b+`.probe"}`)) })
		}
		e, err := kv.Get(ctx(t), "probe")
		if err != nil {
			t.Errorf("bucket %s after the tries: %v", b, err)
		} else if string(e.Value()) != "the ledger's" || e.Revision() != revs[i] {
			t.Errorf("bucket %s after the tries: %q at revision %d, want the probe at %d", b, e.Value(), e.Revision(), revs[i])
		}
	}
}
