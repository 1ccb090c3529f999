package main

import (
	"net/http"
	"testing"

	"github.com/tokenledger/tokenledger/console"
)

// The address `ledger serve` prints opens the web console, on the API's own
// address.
func TestServeOpensTheWebConsoleAtItsRoot(t *testing.T) {
	url, _ := startInProcess(t)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != console.Path {
		t.Fatalf("GET /: %d to %q, want 303 to %s", resp.StatusCode, resp.Header.Get("Location"), console.Path)
	}
	resp, err = client.Get(url + "/console/sign-in")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Security-Policy") != console.ContentSecurityPolicy {
		t.Fatalf("GET /console/sign-in: %d, Content-Security-Policy %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	// The API is still the API beside it.
	resp, err = client.Get(url + "/v1/tokens")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v1/tokens without a token: %d, want 401", resp.StatusCode)
	}
}
