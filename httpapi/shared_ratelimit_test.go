package httpapi_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/httpapi"
)

const (
	sharedBurst = 6
	// An interval far longer than the test: no failure is earned back
	// while it runs.
	sharedInterval = time.Hour
)

func sharedLimitSetup(share bool) instanceSetup {
	return instanceSetup{serverOpts: func(t testing.TB, js jetstream.JetStream) []httpapi.ServerOption {
		opts := []httpapi.ServerOption{httpapi.WithFailureLimit(sharedBurst, sharedInterval)}
		if share {
			kv, err := httpapi.FailureBucket(ctxT(t), js, streamBuckets(), sharedBurst, sharedInterval)
			if err != nil {
				t.Fatal(err)
			}
			opts = append(opts, httpapi.WithSharedFailureLimit(kv))
		}
		return opts
	}}
}

// A guesser spreading its tries over two ledgers behind a load balancer
// gets one budget, not two: six failures, three on each, use up a burst of
// six, and the seventh try is 429 on both, a valid secret's included.
// Without the shared bucket the same spread leaves each instance at three
// of six, and both answer the seventh 401: the sharing is what refuses it.
func TestFailuresOnEitherInstanceCountAgainstOneBudget(t *testing.T) {
	for _, share := range []bool{true, false} {
		name := map[bool]string{true: "shared", false: "per instance"}[share]
		t.Run(name, func(t *testing.T) {
			ins, owner := newInstances(t, 2, sharedLimitSetup(share))
			for i := range sharedBurst {
				in := ins[i%2]
				if code, _, _ := in.get("/v1/tokens", "not-a-secret"); code != http.StatusUnauthorized {
					t.Fatalf("failure %d on instance %d: %d, want 401", i+1, i%2, code)
				}
				syncAll(t, ins)
			}
			for i, in := range ins {
				code, hdr, body := in.get("/v1/tokens", "not-a-secret")
				valid, _, _ := in.get("/v1/tokens", owner)
				if share {
					if code != http.StatusTooManyRequests || valid != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" {
						t.Errorf("instance %d after %d failures spread over both: bad secret %d, valid secret %d (Retry-After %q), want 429 for both: %s",
							i, sharedBurst, code, valid, hdr.Get("Retry-After"), body)
					}
				} else if code != http.StatusUnauthorized || valid != http.StatusOK {
					t.Errorf("instance %d on its own after %d of its failures: bad secret %d, valid %d; want 401 and 200", i, sharedBurst/2, code, valid)
				}
			}
		})
	}
}

// With no synchronisation by the test, a source that used up its budget on
// A is refused on B within a bound: the lag between instances is A's write
// and B's read of the bucket. B is asked with a valid secret, which never
// charges the budget, until it answers 429.
func TestABudgetUsedUpOnOneInstanceIsRefusedOnTheOtherWithinASecond(t *testing.T) {
	ins, owner := newInstances(t, 2, sharedLimitSetup(true))
	a, b := ins[0], ins[1]
	for i := range sharedBurst {
		if code, _, _ := a.get("/v1/tokens", "not-a-secret"); code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i+1, code)
		}
	}
	start := time.Now()
	if code, _, _ := a.get("/v1/tokens", owner); code != http.StatusTooManyRequests {
		t.Fatalf("A itself after its burst: %d, want 429", code)
	}
	for {
		code, _, _ := b.get("/v1/tokens", owner)
		if code == http.StatusTooManyRequests {
			break
		}
		if code != http.StatusOK {
			t.Fatalf("B: %d", code)
		}
		if time.Since(start) > time.Second {
			t.Fatalf("B still lets the source in %s after A refused it", time.Since(start))
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("B refused the source %s after A did", time.Since(start))
}

// Two instances on one clock announce the same wait for a source, earn its
// attempts back at the same moment, and a failure after that on either
// one closes both again: one budget, one interval at a time.
func TestBothInstancesAnnounceTheSameWaitAndForgiveAtTheSameMoment(t *testing.T) {
	const burst, interval = 3, 10 * time.Second
	var clock atomic.Int64
	clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	ins, owner := newInstances(t, 2, instanceSetup{serverOpts: func(t testing.TB, js jetstream.JetStream) []httpapi.ServerOption {
		kv, err := httpapi.FailureBucket(ctxT(t), js, streamBuckets(), burst, interval)
		if err != nil {
			t.Fatal(err)
		}
		return []httpapi.ServerOption{httpapi.WithFailureLimit(burst, interval), httpapi.WithServerClock(now), httpapi.WithSharedFailureLimit(kv)}
	}})
	a, b := ins[0], ins[1]
	for range burst {
		a.get("/v1/tokens", "not-a-secret")
	}
	syncAll(t, ins)
	for i, in := range ins {
		if code, hdr, _ := in.get("/v1/tokens", owner); code != http.StatusTooManyRequests || hdr.Get("Retry-After") != "10" {
			t.Fatalf("instance %d after a burst on A: %d, Retry-After %q; want 429 and 10", i, code, hdr.Get("Retry-After"))
		}
	}
	clock.Add(int64(interval))
	for i, in := range ins {
		if code, _, _ := in.get("/v1/tokens", owner); code != http.StatusOK {
			t.Fatalf("instance %d one interval later: %d, want the attempt earned back", i, code)
		}
	}
	if code, _, _ := b.get("/v1/tokens", "not-a-secret"); code != http.StatusUnauthorized {
		t.Fatalf("the earned attempt, spent on B: %d", code)
	}
	syncAll(t, ins)
	for i, in := range ins {
		if code, hdr, _ := in.get("/v1/tokens", owner); code != http.StatusTooManyRequests || hdr.Get("Retry-After") != "10" {
			t.Fatalf("instance %d after the earned attempt failed on B: %d, Retry-After %q; want 429 and 10", i, code, hdr.Get("Retry-After"))
		}
	}
}
