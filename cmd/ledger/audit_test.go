package main

import (
	"os"
	"path/filepath"
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
