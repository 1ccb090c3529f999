package main

import (
	"context"
	"flag"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

var rotations = flag.Int("rotations", 10000, "rotations BenchmarkRotateToCacheDrop measures (0: b.N)")

// BenchmarkRotateToCacheDrop measures how long a rotated secret stays in the
// service's cache: from just before the ledger is asked to rotate a cached
// token to the moment the cache has forgotten it (its OnDrop hook). Each
// round first puts the token's current secret in the cache through the
// service's API (not timed). The ledger runs as `ledger serve` does, on an
// embedded NATS with the ledger's accounts and file storage; the service
// logs in with its own token and consumes from the services' mirror of the
// stream (one hop more than the ledger's own readers).
//
//	go test ./examples/tokencache -run '^$' -bench RotateToCacheDrop -benchtime 1x
//	go test ./examples/tokencache -run '^$' -bench RotateToCacheDrop -benchtime 1x -args -rotations 20000
func BenchmarkRotateToCacheDrop(b *testing.B) {
	n := *rotations
	if n <= 0 {
		n = b.N
	}
	r := startLedgerRig(b)
	svc := startService(b, r, "bench")
	id, secret := r.create(b, domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "hot", Role: "WORKSPACE_MEMBER"})
	ctx := context.Background()

	latencies := make([]time.Duration, n)
	b.ResetTimer()
	for i := range n {
		b.StopTimer()
		if code, _ := svc.whoami(b, secret); code != http.StatusOK {
			b.Fatalf("round %d: the current secret is refused: %d", i, code)
		}
		b.StartTimer()
		start := time.Now()
		res, err := r.ledger.RotateToken(ctx, r.owner, id, "")
		if err != nil {
			b.Fatalf("round %d: rotate: %v", i, err)
		}
		d := svc.waitDrop(b, id, domain.TokenRotated)
		latencies[i] = d.At.Sub(start)
		if d.Entries != 1 || d.Sequence != res.Sequence {
			b.Fatalf("round %d: drop %+v, want the cached entry at sequence %d", i, d, res.Sequence)
		}
		secret = res.Secret.Reveal()
	}
	b.StopTimer()

	slices.Sort(latencies)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(latencies[n/2]), "p50_ms")
	b.ReportMetric(ms(latencies[(n*99+99)/100-1]), "p99_ms")
	b.ReportMetric(ms(latencies[n-1]), "max_ms")
	b.ReportMetric(float64(n), "rotations")
	// Per rotation, whatever b.N the framework chose.
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/op")
}
