package httpapi_test

import (
	"crypto/tls"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/tokenledger/tokenledger/httpapi"
)

// A front end marks its cookies Secure when the browser's connection is
// TLS. Behind a TLS-terminating proxy only the proxy can say so, and only a
// proxy the operator trusts may: anyone else could send the header.
func TestOverTLSBelievesOnlyTrustedProxies(t *testing.T) {
	s := httpapi.NewServer(nil, nil, nil, httpapi.WithTrustedProxies([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}))
	cases := []struct {
		name   string
		peer   string
		tls    bool
		protos []string
		want   bool
	}{
		{"direct TLS", "203.0.113.5:4000", true, nil, true},
		{"plain HTTP", "203.0.113.5:4000", false, nil, false},
		{"a client claiming https", "203.0.113.5:4000", false, []string{"https"}, false},
		{"trusted proxy, https", "10.1.2.3:4000", false, []string{"https"}, true},
		{"trusted proxy, http", "10.1.2.3:4000", false, []string{"http"}, false},
		{"trusted proxy, no header", "10.1.2.3:4000", false, nil, false},
		{"trusted proxy appended http after a client's https", "10.1.2.3:4000", false, []string{"https, http"}, false},
		{"trusted proxy's own header last", "10.1.2.3:4000", false, []string{"http", "HTTPS"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/console/", nil)
			r.RemoteAddr = tc.peer
			if tc.tls {
				r.TLS = &tls.ConnectionState{}
			}
			for _, p := range tc.protos {
				r.Header.Add("X-Forwarded-Proto", p)
			}
			if got := s.OverTLS(r); got != tc.want {
				t.Fatalf("OverTLS = %v, want %v", got, tc.want)
			}
		})
	}
}
