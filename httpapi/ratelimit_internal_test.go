package httpapi

import (
	"net/netip"
	"testing"
	"time"
)

// Failures that raced past the check together (all checked before any was
// charged) each pay for themselves: 40 of them with a burst of 3 keep the
// source out for 37 intervals and one more, not for one interval.
func TestRacingFailuresEachPay(t *testing.T) {
	const interval = 10 * time.Second
	l := newFailureLimiter(3, interval, 100)
	src := netip.MustParseAddr("198.51.100.9")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for range 40 {
		if l.blocked(src, now) != 0 {
			t.Fatal("the first check of the race is already blocked")
		}
	}
	for range 40 {
		l.fail(src, now)
	}
	if wait, want := l.blocked(src, now), 38*interval; wait != want {
		t.Fatalf("after 40 racing failures the source waits %s, want %s", wait, want)
	}
}
