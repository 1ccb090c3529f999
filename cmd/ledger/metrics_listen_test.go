package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/httpapi"
)

// `ledger serve --metrics-listen` takes a host:port, loopback by default,
// and not the API's own.
func TestServeMetricsListenUsageErrors(t *testing.T) {
	c := cli{t: t}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--metrics-listen", "nonsense"}, `--metrics-listen "nonsense": want host:port`},
		{[]string{"serve", "--metrics-listen", "127.0.0.1:99999"}, "the port must be a number from 0 to 65535"},
		{[]string{"serve", "--metrics-listen", "metrics.example:9464"}, "the host must be an IP address or localhost"},
		{[]string{"serve", "--http", "127.0.0.1:8080", "--metrics-listen", "127.0.0.1:8080"}, "is the API's address"},
	} {
		code, _, errOut := c.run("", tc.args...)
		if code != exitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d saying %q", tc.args, code, errOut, exitUsage, tc.want)
		}
	}
	started := false
	f := newServeCmd(io.Discard, io.Discard, &started).Flags().Lookup("metrics-listen")
	host, _, err := net.SplitHostPort(f.DefValue)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Fatalf("--metrics-listen defaults to %q; want a loopback address", f.DefValue)
	}
}

// Issue 16: the reuse detector's series moved only for rotated-away
// secrets, on the API's public /metrics. A ledger serves them on the
// operator's address alone; the API's /metrics has none of them.
func TestReuseMetricsAreServedOnTheOperatorAddressOnly(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := startLedger(ctx, serveOptions{
		dataDir: dir, httpAddr: "127.0.0.1:0", natsListen: "127.0.0.1:0", org: "acme", stream: "TOKENS", replicas: 1,
		metricsListen: "127.0.0.1:0",
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	if n.MetricsAddr() == "" || n.MetricsAddr() == n.HTTPAddr() {
		t.Fatalf("operator metrics on %q, API on %q", n.MetricsAddr(), n.HTTPAddr())
	}
	b, err := os.ReadFile(filepath.Join(dir, "bootstrap-token"))
	if err != nil {
		t.Fatal(err)
	}
	owner := httpapi.NewClient("http://"+n.HTTPAddr(), strings.TrimSpace(string(b)))
	tok, err := owner.CreateToken(ctx, httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "leaky"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := owner.RotateToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := httpapi.NewClient("http://"+n.HTTPAddr(), tok.Secret).GetToken(ctx, tok.ID); err == nil {
		t.Fatal("the rotated-away secret was accepted")
	}

	get := func(url string) string {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", url, resp.StatusCode)
		}
		return string(body)
	}
	public := get("http://" + n.HTTPAddr() + "/metrics")
	operator := get("http://" + n.MetricsAddr() + "/metrics")
	if strings.Contains(public, "tokenledger_reuse_") || !strings.Contains(public, "tokenledger_auth_failures_total 1\n") {
		t.Fatalf("the API's /metrics:\n%s", public)
	}
	if !strings.Contains(operator, "tokenledger_reuse_detected_total 1\n") || !strings.Contains(operator, "tokenledger_auth_failures_total 1\n") {
		t.Fatalf("the operator's /metrics:\n%s", operator)
	}
	// Only /metrics, only GET, on the operator's address.
	for _, path := range []string{"/v1/tokens", "/console/", "/healthz"} {
		resp, err := http.Get("http://" + n.MetricsAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s on the operator's address: %d, want 404", path, resp.StatusCode)
		}
	}
}
