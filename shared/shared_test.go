package shared_test

import (
	"regexp"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/shared"
)

// Buckets are named after their stream, so two ledgers of two streams on
// one account share nothing; a stream name a bucket name cannot hold is
// replaced by its hash, the same on every instance.
func TestBucketsAreNamedAfterTheirStream(t *testing.T) {
	if got := shared.BucketName("TOKENS", shared.KindSessions); got != "tokenledger_sessions_TOKENS" {
		t.Errorf("BucketName(TOKENS, sessions) = %q", got)
	}
	a, b := shared.BucketName("tokens@eu", shared.KindSessions), shared.BucketName("tokens@us", shared.KindSessions)
	valid := regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	if a == b || a != shared.BucketName("tokens@eu", shared.KindSessions) || !valid.MatchString(a) || !valid.MatchString(b) {
		t.Errorf("odd stream names give %q and %q", a, b)
	}
}

// Instances starting together all open the bucket, whichever makes it,
// also when they disagree about a setting (their flags differ): the last
// to open it has its way, and nobody fails to start.
func TestInstancesStartingTogetherAllOpenTheBucket(t *testing.T) {
	ns := eventstoretest.MustServer(t)
	cfg := shared.ConfigOf(eventstore.DefaultConfig())
	errs := make(chan error, 8)
	start := make(chan struct{})
	for i := range 8 {
		_, js := eventstoretest.MustConnect(t, ns)
		go func() {
			<-start
			_, err := shared.Open(ctxT(t), js, cfg, shared.Bucket{Kind: "together", TTL: time.Duration(i+1) * time.Minute})
			errs <- err
		}()
	}
	close(start)
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
