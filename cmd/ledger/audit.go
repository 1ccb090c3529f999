package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/httpapi"
)

func newAuditCmd(stdout, stderr io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	cmd := groupCmd("audit", "Export the audit log for compliance, and prove an export complete and unaltered")
	cmd.AddCommand(
		newAuditExportCmd(stdout, stderr, clientRunnerFor(getenv, started)),
		newAuditVerifyCmd(stdout, getenv, started),
		newAuditPubkeyCmd(stdout, getenv, started),
	)
	return cmd
}

func newAuditExportCmd(stdout, stderr io.Writer, withClient clientRunner) *cobra.Command {
	var (
		format, out, manifestPath, since, until, token, ws, dep, actor string
		types                                                          []string
		after                                                          uint64
	)
	cmd := &cobra.Command{
		Use:   "export [--format parquet|jsonl|json] [--out FILE|-] [filters]",
		Short: "Write the organization's audit log (one row per event) as Parquet, JSON Lines or JSON, with a signed manifest beside it",
		Long: `Write the organization's audit log, one row per event, as Parquet, JSON Lines
or one JSON array, and its signed manifest as FILE.manifest.json. Only an
ORGANIZATION_OWNER token may export. --since and --until take an RFC 3339
time or a duration back from now (90m, 24h, 30d). For a nightly export of
only what is new, pass --after-sequence with the previous manifest's
stream_sequence: nothing is missed and nothing repeated.`,
		Args: cobra.NoArgs,
		RunE: withClient(func(cmd *cobra.Command, _ []string, c *httpapi.Client) error {
			f, err := exporters.ParseFormat(format)
			if err != nil {
				return usageError{fmt.Errorf("--format: must be parquet, jsonl or json (got %q)", format)}
			}
			q := url.Values{"format": {string(f)}}
			for name, v := range map[string]string{"since": since, "until": until, "token": token, "workspace": ws, "deployment": dep, "actor": actor} {
				if v != "" {
					q.Set(name, v)
				}
			}
			q["type"] = types
			if cmd.Flags().Changed("after-sequence") {
				q.Set("after_sequence", strconv.FormatUint(after, 10))
			}
			if out == "" {
				out = "audit-" + time.Now().UTC().Format("20060102T150405Z") + f.Ext()
			}
			if manifestPath == "" && out != "-" {
				manifestPath = out + ".manifest.json"
			}
			return exportTo(cmd.Context(), c, q, out, manifestPath, stdout, stderr)
		}),
	}
	fl := cmd.Flags()
	fl.StringVar(&format, "format", "parquet", "parquet, jsonl (one JSON object per line) or json (one JSON array)")
	fl.StringVar(&out, "out", "", "the file to write, or - for standard output (default audit-<time>.<format>)")
	fl.StringVar(&manifestPath, "manifest", "", "where to write the signed manifest (default FILE.manifest.json; with --out -, none unless given)")
	fl.StringVar(&since, "since", "", "only events at or after this time (RFC 3339, or a duration back from now: 24h, 30d)")
	fl.StringVar(&until, "until", "", "only events before this time (RFC 3339, or a duration back from now)")
	fl.StringArrayVar(&types, "type", nil, "only this event type (TokenCreated, TokenUpdated, TokenRotated, TokenAssigned, TokenUnassigned, TokenDeleted, TokenReuseDetected); repeat for several")
	fl.StringVar(&token, "token", "", "only this token's events")
	fl.StringVar(&ws, "workspace", "", "only rows whose workspace_id is this workspace")
	fl.StringVar(&dep, "deployment", "", "only rows whose deployment_id is this deployment")
	fl.StringVar(&actor, "actor", "", "only events caused by this token")
	fl.Uint64Var(&after, "after-sequence", 0, "only events after this stream sequence (the previous manifest's stream_sequence)")
	return cmd
}

// exportTo runs an export into out ("-": stdout) and its manifest into
// manifestPath (none if empty). A file is written under a temporary name and
// renamed only once its manifest has arrived and matches it, so a broken-off
// export never leaves a file that looks whole.
func exportTo(ctx context.Context, c *httpapi.Client, q url.Values, out, manifestPath string, stdout, stderr io.Writer) error {
	var (
		dst  io.Writer = stdout
		file *os.File
		tmp  string
	)
	if out != "-" {
		var err error
		file, err = os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".partial-*")
		if err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		tmp = file.Name()
		defer func() {
			file.Close()
			os.Remove(tmp) // gone already once renamed
		}()
		dst = file
	}
	sum := sha256.New()
	w := io.MultiWriter(dst, sum)

	bar := newExportBar(stderr)
	manifest, err := c.Export(ctx, q, func(b []byte) error {
		_, err := w.Write(b)
		return err
	}, bar.progress)
	bar.finish()
	if err != nil {
		return err
	}
	m, err := manifestSummary(manifest, sum)
	if err != nil {
		return err
	}
	// The manifest lands first: a file in place always has its manifest.
	if manifestPath != "" {
		if err := writeFileAtomic(manifestPath, manifest); err != nil {
			return fmt.Errorf("--manifest: %w", err)
		}
	}
	if file != nil {
		if err := file.Sync(); err != nil {
			return err
		}
		if err := file.Close(); err != nil {
			return err
		}
		if err := os.Rename(tmp, out); err != nil {
			return err
		}
	}
	where := out
	if out == "-" {
		where = "standard output"
	}
	fmt.Fprintf(stderr, "exported %d events (stream sequences %d-%d, up to %d) to %s", m.Rows, m.FirstSequence, m.LastSequence, m.StreamSequence, where)
	if manifestPath != "" {
		fmt.Fprintf(stderr, "; manifest %s\n", manifestPath)
	} else {
		fmt.Fprintf(stderr, "; no manifest written (give --manifest PATH)\n")
	}
	return nil
}

// writeFileAtomic writes b to path through a synced temporary file and a
// rename, so path never holds half of it.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // gone already once renamed
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

type signedSummary struct {
	Rows           uint64 `json:"rows"`
	FirstSequence  uint64 `json:"first_sequence"`
	LastSequence   uint64 `json:"last_sequence"`
	StreamSequence uint64 `json:"stream_sequence"`
	SHA256         string `json:"sha256"`
}

// manifestSummary reads what the manifest says of the file and checks it
// against what arrived. The signature is for `ledger audit verify` to check.
func manifestSummary(manifest []byte, sum hash.Hash) (signedSummary, error) {
	var env struct {
		Signed signedSummary `json:"signed"`
	}
	if err := json.Unmarshal(manifest, &env); err != nil {
		return signedSummary{}, fmt.Errorf("the ledger's manifest cannot be read: %w", err)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != env.Signed.SHA256 {
		return signedSummary{}, fmt.Errorf("the export arrived damaged: its SHA-256 is %s, the ledger sent %s", got, env.Signed.SHA256)
	}
	return env.Signed, nil
}

// exportBar is a progress bar on stderr when stderr is a terminal, and
// nothing otherwise.
type exportBar struct{ bar *progressbar.ProgressBar }

func newExportBar(stderr io.Writer) *exportBar {
	f, ok := stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return &exportBar{}
	}
	return &exportBar{bar: progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(stderr),
		progressbar.OptionSetDescription("exporting"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("events"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)}
}

func (b *exportBar) progress(p httpapi.ExportProgress) {
	if b.bar == nil {
		return
	}
	if p.Estimate > 0 && b.bar.GetMax64() != int64(p.Estimate) {
		b.bar.ChangeMax64(int64(p.Estimate))
	}
	_ = b.bar.Set64(int64(p.Rows))
}

func (b *exportBar) finish() {
	if b.bar != nil {
		_ = b.bar.Finish()
	}
}

func newAuditVerifyCmd(stdout io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	var (
		manifestPath, pubkey string
		out                  output
	)
	cmd := &cobra.Command{
		Use:   "verify FILE [--manifest M] [--pubkey KEY] [-o text|json]",
		Short: "Prove an export complete and unaltered: signature, file hash, row count, order, filters and every token's hash chain",
		Long: `Check an export against its signed manifest: the manifest's signature (by
the ledger's key: --pubkey, or else the key of the ledger at LEDGER_URL), the
file's SHA-256, the row count, the sequence order, that every row is one the
export's filters keep, and every token's hash chain. The verdict names the
filters: a filtered export is a selection, and where its filters leave out
events between a token's rows (--type, --workspace, --actor) the links
between them are not checked. Says exactly what is wrong. Exit 0 valid,
1 tampered or invalid, 2 usage error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			*started = true
			if err := out.check(); err != nil {
				return err
			}
			path := args[0]
			if manifestPath == "" {
				manifestPath = path + ".manifest.json"
			}
			manifest, err := os.ReadFile(manifestPath)
			if err != nil {
				return usageError{fmt.Errorf("manifest: %w (give --manifest PATH)", err)}
			}
			file, err := os.Open(path)
			if err != nil {
				return usageError{fmt.Errorf("FILE: %w", err)}
			}
			defer file.Close()
			info, err := file.Stat()
			if err != nil {
				return usageError{fmt.Errorf("FILE: %w", err)}
			}
			key, from, err := trustedKey(cmd.Context(), pubkey, getenv)
			if err != nil {
				return err
			}
			rep := exporters.Verify(file, info.Size(), manifest, key)
			if out.json() {
				err = printJSON(stdout, verdictOf(path, rep, key, from))
			} else {
				printVerdict(stdout, path, rep, key, from)
			}
			if err != nil {
				return err
			}
			if !rep.OK() {
				return &exitError{code: exitFailed}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&manifestPath, "manifest", "", "the signed manifest (default FILE.manifest.json)")
	cmd.Flags().StringVar(&pubkey, "pubkey", "", "the ledger's public key (ed25519:BASE64, as `ledger audit pubkey` prints), or a file holding it; default: ask the ledger at LEDGER_URL")
	out.register(cmd)
	return cmd
}

// verifyVerdict is `audit verify -o json`: the verdict, what the export
// covers, and every finding.
type verifyVerdict struct {
	File           string           `json:"file"`
	Valid          bool             `json:"valid"`
	Format         exporters.Format `json:"format,omitempty"`
	OrganizationID string           `json:"organization_id,omitempty"`
	Rows           int64            `json:"rows"`
	FirstSequence  uint64           `json:"first_sequence"`
	LastSequence   uint64           `json:"last_sequence"`
	StreamSequence uint64           `json:"stream_sequence"`
	// Filters are the manifest's (as it claims them when its signature
	// fails); Filtered is false for every event of the organization.
	Filters  exporters.Filters `json:"filters"`
	Filtered bool              `json:"filtered"`
	// ChainsLinked: each token's rows were checked to follow one another.
	ChainsLinked bool                `json:"chains_linked"`
	Tokens       int                 `json:"tokens"`
	KeyID        string              `json:"key_id"`
	KeyFrom      string              `json:"key_from"`
	Findings     []exporters.Finding `json:"findings"`
}

func verdictOf(path string, rep exporters.Report, key ed25519.PublicKey, from string) verifyVerdict {
	m := rep.Manifest
	findings := rep.Findings
	if findings == nil {
		findings = []exporters.Finding{}
	}
	return verifyVerdict{
		File: path, Valid: rep.OK(), Format: m.Format, OrganizationID: m.OrganizationID, Rows: rep.Rows,
		FirstSequence: m.FirstSequence, LastSequence: m.LastSequence, StreamSequence: m.StreamSequence,
		Filters: m.Filters, Filtered: !m.Filters.IsZero(), ChainsLinked: rep.ChainsLinked, Tokens: len(m.Chains),
		KeyID: exporters.KeyID(key), KeyFrom: from, Findings: findings,
	}
}

// printVerdict writes the verdict as text: the verdict line, the filters,
// what was checked and what a filtered export leaves unchecked, or every
// finding.
func printVerdict(w io.Writer, path string, rep exporters.Report, key ed25519.PublicKey, from string) {
	m := rep.Manifest
	var filters string
	switch {
	case rep.Manifest.OrganizationID == "" && rep.Manifest.Format == "":
		filters = "unknown (the manifest cannot be read)"
	case m.Filters.IsZero():
		filters = fmt.Sprintf("none: every event of organization %s up to stream sequence %d", m.OrganizationID, m.StreamSequence)
	default:
		filters = filterArgs(m.Filters) + " (a selection: events these leave out are not in the file)"
	}
	if !rep.OK() {
		fmt.Fprintf(w, "INVALID: %s\n", path)
		fmt.Fprintf(w, "  filters (as the manifest claims): %s\n", filters)
		for _, f := range rep.Findings {
			fmt.Fprintf(w, "  - %s\n", f.Message)
		}
		return
	}
	fmt.Fprintf(w, "valid: %s: %s, %d rows, stream sequences %d-%d (cut at %d); manifest signed by key %s (%s)\n",
		path, m.Format, rep.Rows, m.FirstSequence, m.LastSequence, m.StreamSequence, exporters.KeyID(key), from)
	fmt.Fprintf(w, "  filters: %s\n", filters)
	checked := "the signature, the file's SHA-256, every row's hash, sequence order"
	if !m.Filters.IsZero() {
		checked += ", every row against the filters"
	}
	if rep.ChainsLinked {
		fmt.Fprintf(w, "  checked: %s, %d token chains intact (no event missing between a token's first and last row)\n", checked, len(m.Chains))
		return
	}
	fmt.Fprintf(w, "  checked: %s, each token's first and last row and row count against the manifest (%d tokens)\n", checked, len(m.Chains))
	names := gapFilters(m.Filters)
	verb := "leave"
	if len(names) == 1 {
		verb = "leaves"
	}
	fmt.Fprintf(w, "  not checked: that a token's rows follow one another: %s %s out some of a token's events, so the file alone cannot show an event missing between two of its rows; only the signature vouches for that\n",
		strings.Join(names, " and "), verb)
}

// filterArgs spells the filters as `ledger audit export` takes them.
func filterArgs(f exporters.Filters) string {
	var args []string
	add := func(flag, v string) {
		if v != "" {
			args = append(args, flag+" "+v)
		}
	}
	add("--since", f.Since)
	add("--until", f.Until)
	for _, t := range f.Types {
		add("--type", t)
	}
	add("--token", f.TokenID)
	add("--workspace", f.WorkspaceID)
	add("--deployment", f.DeploymentID)
	add("--actor", f.ActorTokenID)
	if f.AfterSequence > 0 {
		add("--after-sequence", strconv.FormatUint(f.AfterSequence, 10))
	}
	return strings.Join(args, " ")
}

// gapFilters names the filters that leave out events between a token's rows.
func gapFilters(f exporters.Filters) []string {
	var names []string
	if len(f.Types) > 0 {
		names = append(names, "--type")
	}
	if f.WorkspaceID != "" {
		names = append(names, "--workspace")
	}
	if f.ActorTokenID != "" {
		names = append(names, "--actor")
	}
	return names
}

// trustedKey is the key a manifest must be signed with: the one given, or
// the one the ledger serves.
func trustedKey(ctx context.Context, flag string, getenv func(string) string) (ed25519.PublicKey, string, error) {
	if flag != "" {
		text := flag
		if b, err := os.ReadFile(flag); err == nil {
			text = strings.TrimSpace(string(b))
		}
		key, err := exporters.ParsePublicKey(text)
		if err != nil {
			return nil, "", usageError{fmt.Errorf("--pubkey: %w", err)}
		}
		return key, "the key given", nil
	}
	k, err := ledgerClient(getenv).AuditPublicKey(ctx)
	if err != nil {
		return nil, "", usageError{fmt.Errorf("--pubkey not given and the ledger's key could not be fetched: %w", err)}
	}
	key, err := exporters.ParsePublicKey(k.PublicKey)
	if err != nil {
		return nil, "", fmt.Errorf("the ledger served a key that is not one: %w", err)
	}
	return key, "the key the ledger serves", nil
}

// ledgerClient is a client for the ledger's public endpoints: no token needed.
func ledgerClient(getenv func(string) string) *httpapi.Client {
	u := getenv("LEDGER_URL")
	if u == "" {
		u = "http://127.0.0.1:8080"
	}
	return httpapi.NewClient(u, strings.TrimSpace(getenv("LEDGER_API_TOKEN")))
}

func newAuditPubkeyCmd(stdout io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   "pubkey",
		Short: "Print the public key the ledger signs export manifests with",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			*started = true
			if err := out.check(); err != nil {
				return err
			}
			k, err := ledgerClient(getenv).AuditPublicKey(cmd.Context())
			if err != nil {
				return err
			}
			if out.json() {
				return printJSON(stdout, k)
			}
			fmt.Fprintln(stdout, k.PublicKey)
			return nil
		},
	}
	out.register(cmd)
	return cmd
}
