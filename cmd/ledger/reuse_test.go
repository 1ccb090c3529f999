package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

// Through the CLI: an old secret used after a rotation is refused, and
// `token history` shows the reuse with where it came from; `token show` and
// `token list` say when a token was last used.
func TestCLIShowsReuseAndLastUse(t *testing.T) {
	url, secret := startInProcess(t)
	owner := cli{t: t, env: map[string]string{"LEDGER_URL": url, "LEDGER_API_TOKEN": secret}}
	code, out, _ := owner.run("", "token", "create", "--scope", "workspace", "--workspace", "w1", "--name", "leaky", "-o", "json")
	var created httpapi.Token
	if code != 0 || json.Unmarshal([]byte(out), &created) != nil {
		t.Fatalf("create: %d %s", code, out)
	}
	if code, out, _ := owner.run("", "token", "rotate", created.ID, "-c"); code != 0 || !strings.HasPrefix(out, "tlw_") {
		t.Fatalf("rotate: %d %s", code, out)
	}

	leaked := cli{t: t, env: map[string]string{"LEDGER_URL": url, "LEDGER_API_TOKEN": created.Secret}}
	if code, _, errOut := leaked.run("", "token", "show", created.ID); code != exitFailed || !strings.Contains(errOut, "HTTP 401") {
		t.Fatalf("show with the rotated-away secret: %d %s", code, errOut)
	}

	// The event is written in the background: poll history, with a deadline.
	fp := domain.Fingerprint(created.Secret)[:8]
	want := regexp.MustCompile(`(?m)^\d+\s+\S+\s+TokenReuseDetected\s+system\s+rotated-away secret ` + fp + `… presented again from 127\.0\.0\.1; user agent "ledger-cli"$`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out, _ := owner.run("", "token", "history", created.ID)
		if code != 0 {
			t.Fatalf("history: %d %s", code, out)
		}
		if want.MatchString(out) {
			if n := strings.Count(out, "TokenReuseDetected"); n != 1 {
				t.Fatalf("%d reuse lines for one attempt:\n%s", n, out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reuse line in the history after 20 s:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The owner token has been used (by these commands); the leaky one's
	// new secret has not.
	code, out, _ = owner.run("", "token", "list")
	if code != 0 || !strings.Contains(out, "LAST USED") {
		t.Fatalf("list: %d %s", code, out)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 1 && f[1] == "bootstrap":
			if _, err := time.Parse(time.RFC3339, f[len(f)-1]); err != nil {
				t.Fatalf("the owner's LAST USED is %q: %v", f[len(f)-1], err)
			}
		case len(f) > 1 && f[1] == "leaky":
			if f[len(f)-1] != "-" {
				t.Fatalf("an unused token's LAST USED is %q", f[len(f)-1])
			}
		}
	}
	if code, out, _ := owner.run("", "token", "show", created.ID); code != 0 || !regexp.MustCompile(`(?m)^Last used:\s+none recorded$`).MatchString(out) {
		t.Fatalf("show: %d %s", code, out)
	}
}
