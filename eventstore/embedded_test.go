package eventstore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/eventstore"
)

func TestParseSyncTakesAlwaysOrAPositiveDuration(t *testing.T) {
	for in, want := range map[string]eventstore.Sync{
		"always": {Always: true},
		"Always": {Always: true},
		"1s":     {Interval: time.Second},
		"2m":     {Interval: 2 * time.Minute},
	} {
		if got, err := eventstore.ParseSync(in); err != nil || got != want {
			t.Errorf("ParseSync(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "sometimes", "0s", "-1s", "10"} {
		if _, err := eventstore.ParseSync(in); err == nil || !strings.Contains(err.Error(), `"always"`) {
			t.Errorf("ParseSync(%q): %v; want an error naming the accepted values", in, err)
		}
	}
}

// The embedded server fsyncs as configured: the setting reaches JetStream.
func TestTheEmbeddedServerFsyncsAsConfigured(t *testing.T) {
	for _, c := range []struct {
		sync         eventstore.Sync
		wantAlways   bool
		wantInterval time.Duration
	}{
		{eventstore.Sync{}, false, 2 * time.Minute}, // nats-server's default
		{eventstore.Sync{Interval: time.Second}, false, time.Second},
		{eventstore.Sync{Always: true}, true, 2 * time.Minute},
	} {
		ns, err := eventstore.StartEmbedded(eventstore.EmbeddedConfig{StoreDir: t.TempDir(), Sync: c.sync})
		if err != nil {
			t.Fatal(err)
		}
		got := ns.JetStreamConfig()
		ns.Shutdown()
		ns.WaitForShutdown()
		if got.SyncAlways != c.wantAlways || got.SyncInterval != c.wantInterval {
			t.Errorf("%+v: JetStream syncs always=%v every %s; want always=%v every %s", c.sync, got.SyncAlways, got.SyncInterval, c.wantAlways, c.wantInterval)
		}
	}
}
