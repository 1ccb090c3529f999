package httpapi_test

import (
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/httpapi"
)

// A TokenReuseDetected that stands for several tries says how many, as the
// history and events tail print it.
func TestAReuseEventSaysHowManyTriesItStandsFor(t *testing.T) {
	for _, n := range []any{float64(7), 7} {
		got := httpapi.Changes(httpapi.HistoryEvent{EventType: "TokenReuseDetected", SourceIP: "10.0.0.9",
			Data: map[string]any{"fingerprint": "abcdef0123456789", "count": n}})
		if !strings.Contains(got, "presented 7 times from 10.0.0.9") {
			t.Errorf("count %T: %q", n, got)
		}
	}
	one := httpapi.Changes(httpapi.HistoryEvent{EventType: "TokenReuseDetected", Data: map[string]any{"fingerprint": "abcdef0123456789"}})
	if !strings.Contains(one, "presented again") {
		t.Errorf("one try: %q", one)
	}
}
