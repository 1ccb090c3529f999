package httpapi_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/shared"
)

// stepClock is the real time moved on by advance, one for all instances.
type stepClock struct{ skew atomic.Int64 }

func (c *stepClock) now() time.Time          { return time.Now().Add(time.Duration(c.skew.Load())) }
func (c *stepClock) advance(d time.Duration) { c.skew.Add(int64(d)) }

func lastUseSetup(clock *stepClock, share bool) instanceSetup {
	return instanceSetup{
		ledgerOpts: func(testing.TB, jetstream.JetStream) []app.Option { return []app.Option{app.WithClock(clock.now)} },
		started: func(t testing.TB, js jetstream.JetStream, in *instance) {
			if !share {
				return
			}
			kv, err := shared.LastUsedBucket(ctxT(t), js, streamBuckets())
			if err != nil {
				t.Fatal(err)
			}
			in.lastUsed = shared.ShareLastUsed(kv, in.view, quietLogger())
			t.Cleanup(in.lastUsed.Close)
		},
	}
}

// lastUseOf is token id's last_used_at as the instance's API answers it,
// read by the owner.
func (in *instance) lastUseOf(owner, id string) *time.Time {
	in.t.Helper()
	tok, err := in.client(owner).GetToken(ctxT(in.t), id)
	if err != nil {
		in.t.Fatal(err)
	}
	return tok.LastUsedAt
}

func syncLastUse(t testing.TB, ins []*instance) {
	t.Helper()
	for range 2 {
		for _, in := range ins {
			if err := in.lastUsed.Synced(ctxT(t)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A token used on A shows that use on B, to the second, and a later use on
// B shows on A: every instance answers the same last_used_at. Without the
// bucket, B never hears of A's use.
func TestATokenUsedOnOneInstanceShowsTheSameLastUseOnBoth(t *testing.T) {
	for _, share := range []bool{true, false} {
		t.Run(map[bool]string{true: "shared", false: "per instance"}[share], func(t *testing.T) {
			clock := &stepClock{}
			ins, owner := newInstances(t, 2, lastUseSetup(clock, share))
			a, b := ins[0], ins[1]
			ci, err := a.client(owner).CreateToken(ctxT(t), httpapi.CreateRequest{Scope: "organization", Name: "ci"}, "")
			if err != nil {
				t.Fatal(err)
			}
			if err := b.view.WaitFor(ctxT(t), ci.Sequence); err != nil {
				t.Fatal(err)
			}
			usedAt := clock.now().Truncate(time.Second)
			if code, _, _ := a.get("/v1/tokens", ci.Secret); code != http.StatusOK {
				t.Fatalf("ci's use on A: %d", code)
			}
			if !share {
				if got := b.lastUseOf(owner, ci.ID); got != nil {
					t.Fatalf("B knows of A's use without the bucket: %v", got)
				}
				return
			}
			syncLastUse(t, ins)
			onA, onB := a.lastUseOf(owner, ci.ID), b.lastUseOf(owner, ci.ID)
			if onA == nil || onB == nil || !onA.Equal(*onB) || onA.Before(usedAt) {
				t.Fatalf("after a use on A at %v: A says %v, B says %v; want both the same, at the use", usedAt, onA, onB)
			}

			clock.advance(time.Minute)
			later := clock.now().Truncate(time.Second)
			if code, _, _ := b.get("/v1/tokens", ci.Secret); code != http.StatusOK {
				t.Fatalf("ci's use on B: %d", code)
			}
			syncLastUse(t, ins)
			onA, onB = a.lastUseOf(owner, ci.ID), b.lastUseOf(owner, ci.ID)
			if onA == nil || onB == nil || !onA.Equal(*onB) || onA.Before(later) {
				t.Fatalf("after a later use on B at %v: A says %v, B says %v; want both the same, at the later use", later, onA, onB)
			}
		})
	}
}
