package httpapi

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Changes sums up what an event did, for a person: "role WORKSPACE_AUTHOR ->
// WORKSPACE_OPERATOR", "assigned w1 as WORKSPACE_OWNER", "new secret,
// fingerprint 3f9a0c1d…". Names and descriptions are quoted, so a newline
// or tab in one cannot break a table. `ledger token history`, `ledger events
// tail` and the web console all say it this way.
func Changes(e HistoryEvent) string {
	d := e.Data
	str := func(k string) string { s, _ := d[k].(string); return s }
	has := func(k string) bool { _, ok := d[k]; return ok }
	fp := func(k string) string {
		f := str(k)
		if len(f) > 8 {
			f = f[:8] + "…"
		}
		return f
	}
	var parts []string
	add := func(format string, args ...any) { parts = append(parts, fmt.Sprintf(format, args...)) }
	switch e.EventType {
	case "TokenCreated":
		add("created %s token %q as %s", str("scope"), str("name"), str("role"))
		if ws := str("workspace_id"); ws != "" {
			parts[0] += " in workspace " + ws
		}
		if dep := str("deployment_id"); dep != "" {
			parts[0] += " deployment " + dep
		}
		if exp := str("expires_at"); exp != "" {
			add("expires %s", exp)
		}
		add("fingerprint %s", fp("fingerprint"))
	case "TokenUpdated":
		if has("name") {
			add("name %q -> %q", str("previous_name"), str("name"))
		}
		if has("description") {
			add("description %q -> %q", clipText(str("previous_description")), clipText(str("description")))
		}
		if has("role") {
			add("role %s -> %s", str("previous_role"), str("role"))
		}
	case "TokenRotated":
		add("new secret, fingerprint %s (was %s)", fp("fingerprint"), fp("previous_fingerprint"))
		if exp := str("expires_at"); exp != "" {
			add("expires %s", exp)
		}
	case "TokenAssigned":
		add("assigned %s as %s", str("workspace_id"), str("role"))
		if prev := str("previous_role"); prev != "" {
			parts[0] += " (was " + prev + ")"
		}
	case "TokenUnassigned":
		add("unassigned %s (was %s)", str("workspace_id"), str("previous_role"))
	case "TokenDeleted":
		add("deleted")
	case "TokenReuseDetected":
		add("rotated-away secret %s presented again", fp("fingerprint"))
		// One event may stand for several tries (data.count, absent: one).
		if n := count(d["count"]); n > 1 {
			parts[0] = fmt.Sprintf("rotated-away secret %s presented %d times", fp("fingerprint"), n)
		}
		if ip := e.SourceIP; ip != "" {
			parts[0] += " from " + ip
		}
		if ua := e.UserAgent; ua != "" {
			add("user agent %q", clipText(ua))
		}
	default:
		b, _ := json.Marshal(d)
		add("%s", clipText(string(b)))
	}
	return strings.Join(parts, "; ")
}

// clipText shortens a text quoted in a summary to 40 characters.
func clipText(s string) string {
	if r := []rune(s); len(r) > 40 {
		return string(r[:40]) + "…"
	}
	return s
}

// count reads a JSON number that is a count, as decoded from an answer
// (float64) or as the ledger built it.
func count(v any) int {
	switch n := v.(type) {
	case float64:
		return int(n)
	case int:
		return n
	case int64:
		return int(n)
	case uint64:
		return int(n)
	}
	return 0
}
