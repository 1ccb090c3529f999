package console_test

import (
	"html"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/domain"
)

// A secret pasted into a name or description, and characters that show as
// nothing, are refused in the create and edit forms beside the field they
// are in, with the rule, without the secret in the message, and nothing is
// written.
func TestSecretsAndInvisibleCharactersAreRefusedBesideTheirFields(t *testing.T) {
	h := newHarness(t)
	target, leaked := h.create(domain.CreateToken{Scope: "workspace", WorkspaceID: "analytics", Name: "target"})
	b := h.browser()
	b.signIn(h.owner)
	before := h.lastSeq()

	const secretRule, invisibleRule = "must not contain a TokenLedger secret", "must not contain invisible characters"
	besides := func(v visit, want map[string]string) {
		t.Helper()
		if v.status != http.StatusBadRequest {
			t.Errorf("status %d, want 400", v.status)
		}
		for id, rule := range want {
			errs := errorsBeside(t, v.body, id)
			if len(errs) != 1 || !strings.Contains(strings.ToLower(html.UnescapeString(errs[0])), strings.ToLower(rule)) {
				t.Errorf("beside %s: %q, want one message saying %q", id, errs, rule)
			}
			for _, e := range errs {
				if strings.Contains(e, leaked) {
					t.Errorf("the message beside %s quotes the secret", id)
				}
			}
		}
		// Nor does the form, filled in again with what was typed.
		if strings.Contains(v.body, leaked) || strings.Contains(v.body, strings.Repeat("x", 49)) {
			t.Error("the refused form shows the pasted secret again")
		}
	}

	b.get("/console/tokens/new?scope=workspace")
	v := b.submit("/console/tokens", url.Values{"scope": {"workspace"}, "name": {"ci " + leaked}, "description": {"boot\u200bstrap"},
		"workspace_id": {"analytics"}, "role": {"WORKSPACE_MEMBER"}, "expires": {"never"}, "idempotency_key": {b.key()}})
	besides(v, map[string]string{"name": secretRule, "description": invisibleRule + " (found U+200B)"})

	b.get("/console/tokens/new?scope=organization")
	v = b.submit("/console/tokens", url.Values{"scope": {"organization"}, "name": {"\u3164"}, "description": {"old key tlo_" + strings.Repeat("x", 49)},
		"role": {"ORGANIZATION_MEMBER"}, "expires": {"never"}, "idempotency_key": {b.key()}})
	besides(v, map[string]string{"name": invisibleRule + " (found U+3164)", "description": secretRule})

	b.get("/console/tokens/" + target.ID() + "/edit")
	v = b.submit("/console/tokens/"+target.ID()+"/edit", url.Values{"name": {"target\ufeff"}, "description": {"was " + leaked},
		"role": {"WORKSPACE_MEMBER"}, "version": {"1"}})
	besides(v, map[string]string{"name": invisibleRule + " (found U+FEFF)", "description": secretRule})

	if got := h.lastSeq(); got != before {
		t.Errorf("refused forms moved the stream from %d to %d", before, got)
	}
}
