package httpapi_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

// TestNoSecretOrStoredHashLeaks runs a session of every command, every kind
// of refusal, a reused rotated-away secret, exports in every format and a
// metrics scrape, then searches everything the ledger said or wrote for
// every secret it issued and every hash it stored:
//   - the server's logs, the metrics, every answer body (errors and
//     successes), every export file and manifest hold neither;
//   - the stream's files hold no secret; a stored hash appears in them only
//     where the stream keeps it on purpose, as the secret_hash or
//     previous_secret_hash of a TokenCreated or TokenRotated event (the
//     stream is the only source of truth, and the view is rebuilt from it:
//     what verifies a secret must be there; a SHA-256 of 256 random bits
//     gives nobody the secret, and no route accepts a hash in its place).
func TestNoSecretOrStoredHashLeaks(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	owner := h.client(h.owner)
	secrets := []string{h.owner}
	var said [][]byte // every answer body
	record := func(status int, _ any, body []byte) { said = append(said, body) }

	days := 7
	var ids []string
	for _, req := range []httpapi.CreateRequest{
		{Scope: "ORGANIZATION", Name: "ci", Role: "ORGANIZATION_MEMBER", ExpirationDays: &days},
		{Scope: "WORKSPACE", Name: "w1 owner", WorkspaceID: "w1", Role: "WORKSPACE_OWNER"},
		{Scope: "DEPLOYMENT", Name: "deployer", WorkspaceID: "w1", DeploymentID: "d1"},
	} {
		tok, err := owner.CreateToken(ctx, req, "key-"+req.Name[:2])
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, tok.Secret)
		ids = append(ids, tok.ID)
	}
	orgTok, wsOwner, dep := ids[0], secrets[2], ids[2]
	if _, err := owner.AssignToken(ctx, orgTok, "w1", "WORKSPACE_OPERATOR"); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.AssignToken(ctx, orgTok, "w2", "WORKSPACE_MEMBER"); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.UnassignToken(ctx, orgTok, "w2"); err != nil {
		t.Fatal(err)
	}
	name := "renamed"
	for _, id := range ids {
		if _, err := owner.UpdateToken(ctx, id, httpapi.UpdateRequest{Name: &name}); err != nil {
			t.Fatal(err)
		}
	}
	// A workspace owner manages its deployment token: rotate it twice.
	var rotatedAway []string
	prev := secrets[3]
	for range 2 {
		rot, err := h.client(wsOwner).RotateToken(ctx, dep)
		if err != nil {
			t.Fatal(err)
		}
		rotatedAway = append(rotatedAway, prev)
		prev = rot.Secret
		secrets = append(secrets, rot.Secret)
	}

	// Refusals of every kind, each with a secret somewhere in the request.
	member := secrets[1]
	for _, r := range []struct{ method, path, secret, body string }{
		{"GET", "/v1/tokens", rotatedAway[0], ""},                                              // reused: 401, and recorded
		{"GET", "/v1/tokens", rotatedAway[1], ""},                                              // reused again
		{"GET", "/v1/tokens", strings.ToLower(h.owner), ""},                                    // malformed
		{"GET", "/v1/tokens/" + h.owner, h.owner, ""},                                          // a secret as an id
		{"GET", "/v1/tokens?" + url.QueryEscape(h.owner) + "=1", h.owner, ""},                  // a secret as a parameter
		{"POST", "/v1/tokens", member, `{"scope":"workspace","name":"x","workspace_id":"w1"}`}, // 403
		{"POST", "/v1/tokens", wsOwner, `{"scope":"organization","name":"` + h.owner + `"}`},   // 403, a secret in the body
		{"POST", "/v1/tokens", h.owner, `{"scope":"galaxy","name":"x","description":"` + h.owner + `"}`},
		{"PATCH", "/v1/tokens/" + orgTok, wsOwner, `{"role":"ORGANIZATION_OWNER"}`},
		{"POST", "/v1/verify", h.owner, `{"token":"` + rotatedAway[0] + `"}`},
		{"POST", "/v1/verify", h.owner, `{"token":"` + secrets[2] + `"}`},
		{"GET", "/v1/tokens/" + orgTok + "/history", h.owner, ""},
		{"GET", "/v1/tokens/" + dep + "/history", h.owner, ""},
		{"GET", "/v1/tokens?status=active", h.owner, ""},
		{"GET", "/v1/roles?workspace_id=w1", h.owner, ""},
	} {
		hdr := map[string]string{"Content-Type": "application/json", "User-Agent": "hygiene " + r.secret[:3]}
		if r.method == "POST" && strings.HasSuffix(r.path, "/v1/tokens") {
			hdr["Idempotency-Key"] = h.owner // refused: it looks like a secret
		}
		status, hd, body := h.raw(r.method, r.path, r.secret, strings.NewReader(r.body), hdr)
		record(status, hd, body)
	}

	// The reuses are recorded asynchronously: wait until both are in the
	// deployment token's history.
	deadline := time.Now().Add(10 * time.Second)
	for {
		hist, err := owner.TokenHistory(ctx, dep)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range hist.Events {
			if e.EventType == "TokenReuseDetected" {
				n++
			}
		}
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d TokenReuseDetected events for 2 reuses", n)
		}
		time.Sleep(20 * time.Millisecond) // polling for an asynchronous write, not ordering
	}
	for _, id := range ids[1:] {
		if _, err := owner.DeleteToken(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	var exports [][]byte
	for _, f := range []string{"jsonl", "json", "parquet"} {
		file, manifest, err := h.export(h.owner, url.Values{"format": {f}})
		if err != nil {
			t.Fatal(err)
		}
		exports = append(exports, file, manifest)
	}
	_, _, metrics := h.raw("GET", "/metrics", "", nil, nil)
	if !bytes.Contains(metrics, []byte("tokenledger_")) {
		t.Fatalf("no metrics: %s", metrics)
	}

	secrets = append(secrets, rotatedAway...)
	places := map[string][][]byte{"logs": {h.logs.Bytes()}, "metrics": {metrics}, "answers": said, "exports": exports}
	for _, s := range secrets {
		hash := domain.Hash(s)
		forms := map[string][]byte{
			"secret":               []byte(s),
			"stored hash (hex)":    []byte(hex.EncodeToString(hash[:])),
			"stored hash (raw)":    hash[:],
			"stored hash (base64)": []byte(base64.StdEncoding.EncodeToString(hash[:])),
		}
		for where, blobs := range places {
			for _, b := range blobs {
				for form, v := range forms {
					if bytes.Contains(b, v) {
						t.Errorf("the %s of %s… is in the %s", form, s[:8], where)
					}
				}
			}
		}
	}

	stream := h.readAll(h.storeDir())
	for _, s := range secrets {
		if bytes.Contains(stream, []byte(s)) {
			t.Errorf("the secret %s… is in the stream's files", s[:8])
		}
		hash := domain.Hash(s)
		hx := hex.EncodeToString(hash[:])
		kept := bytes.Count(stream, []byte(`"secret_hash":"`+hx+`"`)) + bytes.Count(stream, []byte(`"previous_secret_hash":"`+hx+`"`))
		if all := bytes.Count(stream, []byte(hx)); all != kept || kept == 0 {
			t.Errorf("the stored hash of %s… is in the stream's files %d times, %d of them as secret_hash or previous_secret_hash", s[:8], all, kept)
		}
		if bytes.Contains(stream, hash[:]) {
			t.Errorf("the raw stored hash of %s… is in the stream's files", s[:8])
		}
	}
	if len(said) == 0 || len(exports) != 6 || h.logs.Len() == 0 {
		t.Fatalf("searched too little: %d answers, %d exports, %d bytes of logs", len(said), len(exports), h.logs.Len())
	}
}
