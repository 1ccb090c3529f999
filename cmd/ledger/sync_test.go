package main

import (
	"strings"
	"testing"
)

func TestServeNATSSyncUsageErrors(t *testing.T) {
	c := cli{t: t}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--nats-sync", "sometimes"}, `--nats-sync: "sometimes" is neither "always" nor a positive duration`},
		{[]string{"serve", "--nats-sync", "always", "--nats-url", "nats://127.0.0.1:1", "--nats-credentials", "nats-credentials.json"}, "sync_interval"},
	} {
		code, _, errOut := c.run("", tc.args...)
		if code != exitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d naming %s", tc.args, code, errOut, exitUsage, tc.want)
		}
	}
}
