package httpapi

import (
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// BenchmarkFailureLimitOnTheSuccessPath is what the limit costs a request
// that authenticates: resolving its key and one blocked check, from every
// core at once, with nobody failing and with 10,000 sources being tracked.
//
//	go test ./httpapi -run '^$' -bench FailureLimitOnTheSuccessPath -cpu 1,2
func BenchmarkFailureLimitOnTheSuccessPath(b *testing.B) {
	for _, tracked := range []int{0, 10000} {
		b.Run("tracked="+strconv.Itoa(tracked), func(b *testing.B) {
			l := newFailureLimiter(DefaultFailureBurst, DefaultFailureInterval, DefaultFailureSources)
			now := time.Now()
			for i := range tracked {
				l.fail(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now)
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if l.blocked(sourceKey("2001:db8:1:2:3:4:5:6"), now) != 0 {
						b.Fatal("blocked")
					}
				}
			})
		})
	}
}
