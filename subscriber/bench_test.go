package subscriber_test

import (
	"context"
	"crypto/rand"
	"slices"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/subscriber"
)

// appendCreations writes n TokenCreated events for new tokens straight
// through the event store.
func (h *harness) appendCreations(tb testing.TB, n int) {
	ctx := context.Background()
	for range n {
		_, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "bench", Role: string(domain.RoleOrganizationMember)},
			domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := h.store.Append(ctx, e, 0); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkCatchUp: a durable created with StartFirst reads a backlog of
// b.N events (one unacked at a time, each ack confirmed).
func BenchmarkCatchUp(b *testing.B) {
	h := newHarness(b)
	h.appendCreations(b, b.N)
	last := h.last(b)
	c := newCollector()
	b.ResetTimer()
	start := time.Now()
	h.start(b, subscriber.Config{Durable: "bench", Start: subscriber.StartFirst()}, func(s *subscriber.Subscriber) { s.OnAny(c.handle) })
	c.waitFor(b, last)
	b.StopTimer()
	b.ReportMetric(float64(last)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkAppendToHandler: the time from an append's acknowledgement by
// JetStream to the handler getting the event, one event at a time.
func BenchmarkAppendToHandler(b *testing.B) {
	h := newHarness(b)
	got := make(chan time.Time, 1)
	h.start(b, subscriber.Config{Durable: "latency"}, func(s *subscriber.Subscriber) {
		s.OnAny(func(context.Context, subscriber.Event) error { got <- time.Now(); return nil })
	})
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		sent := time.Now()
		h.appendCreations(b, 1)
		select {
		case at := <-got:
			lat = append(lat, at.Sub(sent))
		case <-time.After(wait):
			b.Fatal("event not delivered")
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
