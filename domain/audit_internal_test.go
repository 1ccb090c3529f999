package domain

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// Details are written by hand for speed; they must stay what json.Marshal
// writes, or the hashes of events already stored would stop matching.
func TestDetailsAreWrittenAsEncodingJSONWritesThem(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	texts := []string{"", "plain", `say "hi"`, "back\\slash", "<b>&amp;</b>", "é ünïcode 🙂", "tab\tnew\nline\x01", "\xff\xfe bad utf8", "\u2028\u2029"}
	pick := func() *string {
		if rnd.IntN(3) == 0 {
			return nil
		}
		s := texts[rnd.IntN(len(texts))]
		return &s
	}
	for range 5000 {
		d := details{Version: rnd.Uint64N(1 << 40), Name: pick(), PreviousName: pick(), Description: pick(), PreviousDescription: pick()}
		if rnd.IntN(2) == 0 {
			d.ExpirationDays = rnd.IntN(366)
			at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rnd.Int64N(1 << 50))).Truncate(time.Microsecond)
			d.ExpiresAt = &at
		}
		if rnd.IntN(2) == 0 {
			d.PreviousFingerprint = texts[rnd.IntN(len(texts))]
		}
		if rnd.IntN(3) == 0 {
			d.Count = rnd.Uint64()
		}
		want, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if got := d.appendJSON(nil); string(got) != string(want) {
			t.Fatalf("details written as\n%s\nencoding/json writes\n%s", got, want)
		}
	}
}
