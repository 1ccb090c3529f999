package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The compliance analyst's round trip: export with the CLI, verify with the
// CLI (against the key the ledger serves, or one pinned with --pubkey), and
// see a changed byte caught with exit 1.
func TestCLIAuditExportThenVerify(t *testing.T) {
	url, secret := startInProcess(t)
	c := cli{t: t, env: map[string]string{"LEDGER_URL": url, "LEDGER_API_TOKEN": secret}}
	tok := c.createJSON("--scope", "WORKSPACE", "--workspace", "w1", "--name", "nightly etl")
	c.ok("token", "rotate", tok.ID)
	dir := t.TempDir()

	pubkey := strings.TrimSpace(c.ok("audit", "pubkey"))
	if !strings.HasPrefix(pubkey, "ed25519:") {
		t.Fatalf("audit pubkey printed %q", pubkey)
	}
	for _, format := range []string{"parquet", "jsonl", "json"} {
		out := filepath.Join(dir, "audit."+format)
		code, stdout, stderr := c.run("", "audit", "export", "--format", format, "--out", out)
		if code != 0 || stdout != "" || !strings.Contains(stderr, "exported 3 events") || strings.Contains(stderr, "\r") {
			// No progress bar on a pipe, nothing on stdout when writing a file.
			t.Fatalf("export %s: exit %d, stdout %q, stderr %q", format, code, stdout, stderr)
		}
		if _, err := os.Stat(out + ".manifest.json"); err != nil {
			t.Fatalf("export %s wrote no manifest: %v", format, err)
		}
		if code, stdout, stderr := c.run("", "audit", "verify", out); code != 0 || !strings.HasPrefix(stdout, "valid: ") {
			t.Fatalf("verify %s: exit %d: %s %s", format, code, stdout, stderr)
		}
		// An auditor without access to the ledger pins the key instead.
		offline := cli{t: t, env: map[string]string{"LEDGER_URL": "http://127.0.0.1:1"}}
		if code, stdout, stderr := offline.run("", "audit", "verify", out, "--pubkey", pubkey); code != 0 {
			t.Fatalf("verify %s --pubkey: exit %d: %s %s", format, code, stdout, stderr)
		}
		if code, _, stderr := offline.run("", "audit", "verify", out); code != 2 || !strings.Contains(stderr, "--pubkey") {
			t.Fatalf("verify without a key to trust: exit %d (%s), want 2 asking for --pubkey", code, stderr)
		}

		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x20
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
		code, stdout, _ = c.run("", "audit", "verify", out)
		if code != 1 || !strings.Contains(stdout, "INVALID") || !strings.Contains(stdout, "SHA-256") {
			t.Fatalf("verify of a changed %s file: exit %d: %s", format, code, stdout)
		}
	}

	// Standard output: the file goes there, the manifest only where asked.
	manifest := filepath.Join(dir, "stdout.manifest.json")
	code, stdout, stderr := c.run("", "audit", "export", "--format", "jsonl", "--out", "-", "--manifest", manifest, "--type", "TokenRotated")
	if code != 0 || strings.Count(stdout, "\n") != 1 || !strings.Contains(stdout, `"event_type":"TokenRotated"`) {
		t.Fatalf("export to stdout: exit %d: %q %q", code, stdout, stderr)
	}
	if err := os.WriteFile(filepath.Join(dir, "stdout.jsonl"), []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := c.run("", "audit", "verify", filepath.Join(dir, "stdout.jsonl"), "--manifest", manifest); code != 0 {
		t.Fatalf("verify of the stdout export: exit %d: %s", code, out)
	}

	if code, _, stderr := c.run("", "audit", "export", "--format", "csv"); code != 2 || !strings.Contains(stderr, "--format") {
		t.Fatalf("export --format csv: exit %d: %s", code, stderr)
	}
	if code, _, stderr := c.run("", "audit", "export", "--since", "last week", "--out", filepath.Join(dir, "x")); code != 1 || !strings.Contains(stderr, "since") {
		t.Fatalf("export --since 'last week': exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Fatal("a refused export left a file behind")
	}
	// A manifest that cannot be written leaves no export without one.
	lone := filepath.Join(dir, "lone.jsonl")
	if code, _, stderr := c.run("", "audit", "export", "--format", "jsonl", "--out", lone, "--manifest", filepath.Join(dir, "missing", "m.json")); code == 0 || !strings.Contains(stderr, "--manifest") {
		t.Fatalf("export with an unwritable manifest: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(lone); err == nil {
		t.Fatal("an export whose manifest could not be written was left in place")
	}
}

// verdict is what `ledger audit verify -o json` prints.
type verdict struct {
	File         string          `json:"file"`
	Valid        bool            `json:"valid"`
	Rows         int64           `json:"rows"`
	Filters      map[string]any  `json:"filters"`
	Filtered     bool            `json:"filtered"`
	ChainsLinked bool            `json:"chains_linked"`
	Findings     []verdictFinder `json:"findings"`
}

type verdictFinder struct {
	Problem string `json:"problem"`
	Message string `json:"message"`
}

func (c cli) verdict(args ...string) (int, verdict) {
	c.t.Helper()
	code, stdout, stderr := c.run("", append(append([]string{"audit", "verify"}, args...), "-o", "json")...)
	var v verdict
	if err := json.Unmarshal([]byte(stdout), &v); err != nil {
		c.t.Fatalf("verify %v -o json: exit %d: not JSON (%v): %q %q", args, code, err, stdout, stderr)
	}
	return code, v
}

// An export filtered by type holds a token's rotations but not the update
// between them, so its rows of that token do not follow one another: the
// verdict judges it by what its filters promise (valid, and says so), names
// the filters in text and JSON, and still refuses a manifest whose filters
// were edited to pass the selection off as the whole log. An unfiltered
// export with a row dropped stays INVALID.
func TestCLIAuditVerifyJudgesAnExportByItsFilters(t *testing.T) {
	url, secret := startInProcess(t)
	c := cli{t: t, env: map[string]string{"LEDGER_URL": url, "LEDGER_API_TOKEN": secret}}
	tok := c.createJSON("--scope", "WORKSPACE", "--workspace", "w1", "--name", "nightly etl")
	c.ok("token", "rotate", tok.ID)
	c.ok("token", "update", tok.ID, "--name", "nightly etl v2")
	c.ok("token", "rotate", tok.ID)
	dir := t.TempDir()
	pubkey := strings.TrimSpace(c.ok("audit", "pubkey"))

	rotations := filepath.Join(dir, "rotations.jsonl")
	c.ok("audit", "export", "--format", "jsonl", "--out", rotations, "--type", "TokenRotated")
	code, stdout, _ := c.run("", "audit", "verify", rotations, "--pubkey", pubkey)
	if code != 0 || !strings.HasPrefix(stdout, "valid: "+rotations+": jsonl, 2 rows") {
		t.Fatalf("a --type filtered export: exit %d, want 0 and valid:\n%s", code, stdout)
	}
	for _, want := range []string{"filters: --type TokenRotated", "not checked: that a token's rows follow one another"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the verdict does not say %q:\n%s", want, stdout)
		}
	}
	code, v := c.verdict(rotations, "--pubkey", pubkey)
	if code != 0 || !v.Valid || v.File != rotations || v.Rows != 2 || !v.Filtered || v.ChainsLinked || len(v.Findings) != 0 {
		t.Errorf("-o json of the filtered export: exit %d, %+v", code, v)
	}
	if types, _ := v.Filters["types"].([]any); len(types) != 1 || types[0] != "TokenRotated" || len(v.Filters) != 1 {
		t.Errorf("-o json filters %v, want types [TokenRotated] only", v.Filters)
	}

	// Someone edits the manifest to say the selection is the whole log.
	manifest := mustReadFile(t, rotations+".manifest.json")
	edited := regexp.MustCompile(`"filters": \{[^}]*\}`).ReplaceAll(manifest, []byte(`"filters": {}`))
	if bytes.Equal(edited, manifest) {
		t.Fatalf("the manifest's types filter is not where the test looks:\n%s", manifest)
	}
	if err := os.WriteFile(rotations+".manifest.json", edited, 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ = c.run("", "audit", "verify", rotations, "--pubkey", pubkey)
	if code != 1 || !strings.HasPrefix(stdout, "INVALID: ") || !strings.Contains(stdout, "manifest signature does not verify") || !strings.Contains(stdout, "filters (as the manifest claims): none") {
		t.Errorf("a manifest whose filters were removed: exit %d, want 1, a signature finding and the filters it claims:\n%s", code, stdout)
	}
	if code, v := c.verdict(rotations, "--pubkey", pubkey); code != 1 || v.Valid || len(v.Findings) == 0 || v.Findings[0].Problem != "signature" {
		t.Errorf("-o json of the edited manifest: exit %d, %+v", code, v)
	}

	// The whole log, with the update between the rotations dropped.
	all := filepath.Join(dir, "all.jsonl")
	c.ok("audit", "export", "--format", "jsonl", "--out", all)
	code, stdout, _ = c.run("", "audit", "verify", all, "--pubkey", pubkey)
	if code != 0 || !strings.Contains(stdout, "filters: none") || !strings.Contains(stdout, "token chains intact") {
		t.Fatalf("the unfiltered export: exit %d:\n%s", code, stdout)
	}
	var kept []string
	for line := range strings.Lines(string(mustReadFile(t, all))) {
		if !strings.Contains(line, `"event_type":"TokenUpdated"`) {
			kept = append(kept, line)
		}
	}
	if err := os.WriteFile(all, []byte(strings.Join(kept, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ = c.run("", "audit", "verify", all, "--pubkey", pubkey)
	if code != 1 || !strings.HasPrefix(stdout, "INVALID: ") || !strings.Contains(stdout, "a row between sequence") {
		t.Errorf("the unfiltered export with a row dropped: exit %d, want 1 naming the missing row:\n%s", code, stdout)
	}
	if code, v := c.verdict(all, "--pubkey", pubkey); code != 1 || v.Valid || v.Filtered || !v.ChainsLinked {
		t.Errorf("-o json of the unfiltered export with a row dropped: exit %d, %+v", code, v)
	}
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
