package httpapi_test

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore/eventstoretest"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/projections"
)

// badKinds are the five kinds of bad bearer secret the issue names, in the
// order the benchmark reports them.
var badKinds = []string{"malformed", "unknown", "expired", "rotated", "deleted"}

// neverIssued is a well-formed workspace secret nobody was given.
func neverIssued(tb testing.TB) string {
	s, err := domain.NewSecret(domain.ScopeWorkspace, rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return s.Reveal()
}

// mistyped changes a secret's last character, so its checksum fails: the
// nearest miss a malformed secret can be.
func mistyped(secret string) string {
	last := byte('A')
	if secret[len(secret)-1] == 'A' {
		last = 'B'
	}
	return secret[:len(secret)-1] + string(last)
}

func TestEveryBadTokenGetsTheSame401ByteForByte(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	ctx := ctxT(t)
	expiring := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "expiring", ExpirationDays: intp(1)})
	rotated := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "rotated"})
	if _, err := c.RotateToken(ctx, rotated.ID); err != nil {
		t.Fatal(err)
	}
	deleted := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "deleted"})
	if _, err := c.DeleteToken(ctx, deleted.ID); err != nil {
		t.Fatal(err)
	}
	h.advance(48 * time.Hour)

	unknown := neverIssued(t)
	cases := []struct{ kind, authorization string }{
		{"malformed", "Bearer " + mistyped(unknown)},
		{"unknown", "Bearer " + unknown},
		{"expired", "Bearer " + expiring.Secret},
		{"rotated", "Bearer " + rotated.Secret},
		{"deleted", "Bearer " + deleted.Secret},
		{"no header", ""},
		{"another scheme", "Basic " + unknown},
	}
	type answer struct {
		status int
		header string
		body   string
	}
	var first answer
	for i, tc := range cases {
		hdr := map[string]string{"X-Request-Id": "same-request-id"}
		if tc.authorization != "" {
			hdr["Authorization"] = tc.authorization
		}
		status, header, body := h.raw("GET", "/v1/tokens", "", nil, hdr)
		header.Del("Date")
		var lines []string
		for k, vs := range header {
			lines = append(lines, k+": "+strings.Join(vs, ", "))
		}
		sort.Strings(lines)
		got := answer{status, strings.Join(lines, "\n"), string(body)}
		if i == 0 {
			first = got
			if status != http.StatusUnauthorized || header.Get("WWW-Authenticate") != `Bearer realm="tokenledger"` {
				t.Fatalf("%s: %d, WWW-Authenticate %q", tc.kind, status, header.Get("WWW-Authenticate"))
			}
			p := decodeProblem(t, body)
			if p.Type != "urn:tokenledger:problem:unauthenticated" || p.RequestID != "" || len(p.Errors) != 1 || p.Errors[0].Field != "Authorization" {
				t.Fatalf("401 problem = %+v", p)
			}
			continue
		}
		if got != first {
			t.Fatalf("the 401 for %s differs from the one for %s:\n%d\n%s\n%s\n--- vs ---\n%d\n%s\n%s",
				tc.kind, cases[0].kind, got.status, got.header, got.body, first.status, first.header, first.body)
		}
	}
}

// BenchmarkBadTokenTiming measures how long the server takes to answer each
// of the five kinds of bad secret, interleaved in random order within one
// run so that drift (GC, frequency scaling, the reuse recorder's background
// appends) falls on all kinds alike. The time is the handler's own, from
// ServeHTTP in to ServeHTTP out, on a ledger fed by a real embedded NATS
// server; the network is left out because it only adds noise. The failure
// limit is off, or every kind would soon be a 429. It reports, per kind, the
// median and the 90th percentile in nanoseconds, and the median divided by
// the unknown secret's median.
//
//	go test ./httpapi -run '^$' -bench BadTokenTiming -benchtime 20000x -count 3
func BenchmarkBadTokenTiming(b *testing.B) {
	store, _, _ := eventstoretest.MustStore(b)
	view := projections.NewTokens()
	var skew atomic.Int64
	ledger := app.New(store, view, app.WithClock(func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }))
	b.Cleanup(app.Feed(store, view, nil))
	b.Cleanup(func() { _ = ledger.Close() }) // before the feed stops: the reuse reports still counted are written
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	owner, _, err := ledger.Bootstrap(ctx, "acme", nil)
	if err != nil || owner == nil {
		b.Fatalf("bootstrap: %v", err)
	}
	caller := app.Caller{Token: owner, RequestID: "bench-setup"}
	create := func(name string, days *int) app.Result {
		res, err := ledger.CreateToken(ctx, caller, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: name, ExpirationDays: days}, "")
		if err != nil {
			b.Fatal(err)
		}
		return res
	}
	expiring := create("expiring", intp(1))
	rotated := create("rotated", nil)
	if _, err := ledger.RotateToken(ctx, caller, rotated.Token.ID(), ""); err != nil {
		b.Fatal(err)
	}
	deleted := create("deleted", nil)
	del, err := ledger.DeleteToken(ctx, caller, deleted.Token.ID(), "")
	if err != nil {
		b.Fatal(err)
	}
	if err := view.WaitFor(ctx, del.Sequence); err != nil {
		b.Fatal(err)
	}
	skew.Store(int64(48 * time.Hour))

	unknown := neverIssued(b)
	secrets := map[string]string{
		"malformed": mistyped(unknown),
		"unknown":   unknown,
		"expired":   expiring.Secret.Reveal(),
		"rotated":   rotated.Secret.Reveal(),
		"deleted":   deleted.Secret.Reveal(),
	}
	srv := httpapi.NewServer(ledger, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, httpapi.WithFailureLimit(0, 0))
	request := func(kind string) *http.Request {
		r := httptest.NewRequest("GET", "/v1/tokens", nil)
		r.RemoteAddr = "192.0.2.1:40000"
		r.Header.Set("Authorization", "Bearer "+secrets[kind])
		return r
	}
	// Warm up every path (first map growths, pools, the reuse recorder).
	for range 200 {
		for _, k := range badKinds {
			srv.ServeHTTP(httptest.NewRecorder(), request(k))
		}
	}

	times := make([][]time.Duration, len(badKinds))
	order := []int{0, 1, 2, 3, 4}
	// b.Loop's own time (ns/op: one round of five, with building the
	// requests) is not the figure; the per-kind times below are.
	for b.Loop() {
		mrand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, k := range order {
			req, rec := request(badKinds[k]), httptest.NewRecorder()
			start := time.Now()
			srv.ServeHTTP(rec, req)
			d := time.Since(start)
			if rec.Code != http.StatusUnauthorized {
				b.Fatalf("%s: %d, want 401", badKinds[k], rec.Code)
			}
			times[k] = append(times[k], d)
		}
	}
	b.StopTimer()

	quantile := func(ds []time.Duration, q float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[int(q*float64(len(s)-1))])
	}
	base := quantile(times[1], 0.5)
	for k, kind := range badKinds {
		med := quantile(times[k], 0.5)
		b.ReportMetric(med, kind+"-p50-ns")
		b.ReportMetric(quantile(times[k], 0.9), kind+"-p90-ns")
		b.ReportMetric(med/base, kind+"/unknown-p50")
	}
}
