package main

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

func TestARotationDropsTheCachedTokenAtOnce(t *testing.T) {
	r := startLedgerRig(t)
	svc := startService(t, r, "test-rotation")
	id, old := r.create(t, domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "api-client", Role: "WORKSPACE_MEMBER"})

	if code, who := svc.whoami(t, old); code != http.StatusOK || who != id+" WORKSPACE_MEMBER" {
		t.Fatalf("first request: %d %q", code, who)
	}
	if code, _ := svc.whoami(t, old); code != http.StatusOK {
		t.Fatalf("second request: %d", code)
	}
	if s := svc.cache.Stats(); s.Misses != 1 || s.Hits != 1 || s.Entries != 1 || !s.Live {
		t.Fatalf("after two requests with one secret: %+v", s)
	}

	res, err := r.ledger.RotateToken(ctxFor(t), r.owner, id, "")
	if err != nil {
		t.Fatal(err)
	}
	d := svc.waitDrop(t, id, domain.TokenRotated)
	if d.Entries != 1 || d.Sequence != res.Sequence {
		t.Fatalf("drop = %+v, want 1 entry at sequence %d", d, res.Sequence)
	}
	if s := svc.cache.Stats(); s.Entries != 0 || s.Dropped != 1 {
		t.Fatalf("after the rotation: %+v", s)
	}
	// The old secret goes to the ledger again, which refuses it; the new
	// one verifies, and is cached in turn.
	if code, _ := svc.whoami(t, old); code != http.StatusUnauthorized {
		t.Fatalf("old secret after the rotation: %d", code)
	}
	fresh := res.Secret.Reveal()
	for i := range 2 {
		if code, who := svc.whoami(t, fresh); code != http.StatusOK || who != id+" WORKSPACE_MEMBER" {
			t.Fatalf("new secret, request %d: %d %q", i, code, who)
		}
	}
	if s := svc.cache.Stats(); s.Misses != 3 || s.Hits != 2 || s.Entries != 1 {
		t.Fatalf("after the new secret twice: %+v", s)
	}

	// A role change is dropped too: the next answer has the new role.
	role := "WORKSPACE_AUTHOR"
	if _, err := r.ledger.UpdateToken(ctxFor(t), r.owner, id, domain.UpdateToken{Role: &role}, ""); err != nil {
		t.Fatal(err)
	}
	svc.waitDrop(t, id, domain.TokenUpdated)
	if code, who := svc.whoami(t, fresh); code != http.StatusOK || who != id+" WORKSPACE_AUTHOR" {
		t.Fatalf("after the role change: %d %q", code, who)
	}

	// And a deletion.
	if _, err := r.ledger.DeleteToken(ctxFor(t), r.owner, id, ""); err != nil {
		t.Fatal(err)
	}
	if d := svc.waitDrop(t, id, domain.TokenDeleted); d.Entries != 1 {
		t.Fatalf("delete dropped %d entries", d.Entries)
	}
	if code, _ := svc.whoami(t, fresh); code != http.StatusUnauthorized {
		t.Fatalf("deleted token: %d", code)
	}
	if s := svc.cache.Stats(); s.Entries != 0 {
		t.Fatalf("a refusal was cached: %+v", s)
	}
}

// The race a cache of this kind must not lose: the ledger says "active",
// the token is rotated and its event handled, and only then does the
// answer reach the cache. Kept, it would let the old secret in until the
// next event; it is used for that one request and not kept.
func TestAnAnswerFromBeforeADropIsNotKept(t *testing.T) {
	r := startLedgerRig(t)
	svc := startService(t, r, "test-race")
	id, old := r.create(t, domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "slow", Role: "WORKSPACE_MEMBER"})

	answered, release := make(chan struct{}), make(chan struct{})
	wrap := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.URL.Path != "/v1/verify" {
				h.ServeHTTP(w, req)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if bytes.Contains(rec.Body.Bytes(), []byte(id)) {
				close(answered)
				<-release
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
		})
	}
	r.wrap.Store(&wrap)
	first := make(chan int, 1)
	go func() {
		code, _, err := svc.get(old)
		if err != nil {
			t.Error(err)
		}
		first <- code
	}()
	<-answered
	if _, err := r.ledger.RotateToken(ctxFor(t), r.owner, id, ""); err != nil {
		t.Fatal(err)
	}
	if d := svc.waitDrop(t, id, domain.TokenRotated); d.Entries != 0 {
		t.Fatalf("drop = %+v: nothing should have been cached yet", d)
	}
	close(release)
	if code := <-first; code != http.StatusOK {
		t.Fatalf("the request the ledger answered before the rotation: %d", code)
	}
	r.wrap.Store(nil)
	if s := svc.cache.Stats(); s.Entries != 0 {
		t.Fatalf("the answer from before the rotation was kept: %+v", s)
	}
	if code, _ := svc.whoami(t, old); code != http.StatusUnauthorized {
		t.Fatalf("old secret after the rotation: %d", code)
	}
}

// Without a running subscription the cache would miss events: it serves
// nothing from memory, and every request goes to the ledger.
func TestNothingIsServedFromMemoryWhileNotLive(t *testing.T) {
	r := startLedgerRig(t)
	svc := startService(t, r, "test-live")
	_, secret := r.create(t, domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "x"})
	svc.whoami(t, secret)
	svc.cache.SetLive(false)
	if s := svc.cache.Stats(); s.Entries != 0 || s.Live {
		t.Fatalf("after going down: %+v", s)
	}
	for range 2 {
		if code, _ := svc.whoami(t, secret); code != http.StatusOK {
			t.Fatalf("while down: %d", code)
		}
	}
	if s := svc.cache.Stats(); s.Hits != 0 || s.Misses != 3 || s.Entries != 0 {
		t.Fatalf("while down: %+v", s)
	}
	svc.cache.SetLive(true)
	svc.whoami(t, secret)
	svc.whoami(t, secret)
	if s := svc.cache.Stats(); s.Hits != 1 || s.Entries != 1 {
		t.Fatalf("live again: %+v", s)
	}
}

func TestRequestsWithoutAGoodBearerAreRefused(t *testing.T) {
	r := startLedgerRig(t)
	svc := startService(t, r, "test-refuse")
	for _, h := range []string{"", "Basic abc", "Bearer ", "Bearer tlw_notasecret"} {
		req, _ := http.NewRequest(http.MethodGet, svc.url+"/v1/whoami", nil)
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("Authorization %q: %d %v", h, resp.StatusCode, resp.Header)
		}
	}
	// The service's own token must be active: it is checked at the start.
	_, err := newService(ctxFor(t), config{ledgerURL: r.api.URL, apiToken: "tlo_nope", natsURL: r.natsURL, durable: "x", maxAge: 1}, quiet)
	var prob *httpapi.Problem
	if err == nil || !strings.Contains(err.Error(), "ledger at") || !errors.As(err, &prob) || prob.Status != http.StatusUnauthorized {
		t.Fatalf("a bad LEDGER_API_TOKEN: %v", err)
	}
}

// The service's own token serves both the API and NATS: it must read every
// event of its organization, so a workspace token is refused at the start.
// Rotated, it stops the service, which says why: its cache would no longer
// hear of drops.
func TestTheServicesOwnToken(t *testing.T) {
	r := startLedgerRig(t)
	_, ws := r.create(t, domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "narrow", Role: "WORKSPACE_MEMBER"})
	_, err := newService(ctxFor(t), config{ledgerURL: r.api.URL, apiToken: ws, natsURL: r.natsURL, durable: "narrow", maxAge: time.Minute}, quiet)
	if err == nil || !strings.Contains(err.Error(), "needs an organization token") {
		t.Fatalf("a workspace token as the service's: %v", err)
	}

	id, own := r.create(t, domain.CreateToken{Scope: "organization", Name: "tokencache", Role: "ORGANIZATION_MEMBER"})
	svc := startServiceWith(t, r, "own-token", own)
	_, client := r.create(t, domain.CreateToken{Scope: "workspace", WorkspaceID: "w1", Name: "client"})
	if code, _ := svc.whoami(t, client); code != http.StatusOK {
		t.Fatalf("a client before the rotation: %d", code)
	}
	svc.mayFail = true
	if _, err := r.ledger.RotateToken(ctxFor(t), r.owner, id, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case <-svc.ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the service still runs 30 s after its own token was rotated")
	}
	if svc.runErr == nil || !strings.Contains(svc.runErr.Error(), "current secret") || strings.Contains(svc.runErr.Error(), own) {
		t.Fatalf("the service ended with %v", svc.runErr)
	}
	if s := svc.cache.Stats(); s.Live || s.Entries != 0 {
		t.Fatalf("the cache after the subscription ended: %+v", s)
	}
}
