package exporters

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestVerifyAcceptsExport(t *testing.T) {
	key := newKey(t)
	for _, n := range []int{0, 1, 300} {
		rows := makeHistory(t, 10, n, 11).rows()[:n]
		for _, f := range Formats {
			t.Run(fmt.Sprintf("%s/%d", f, n), func(t *testing.T) {
				path, manifest := exportSigned(t, t.TempDir(), f, rows, key)
				rep := verifyBytes(mustRead(t, path), manifest, pub(key))
				if !rep.OK() {
					t.Fatalf("untouched export fails: %v", rep.Err())
				}
				if rep.Rows != int64(n) || rep.Manifest.Rows != int64(n) {
					t.Errorf("report counts %d rows, manifest %d, want %d", rep.Rows, rep.Manifest.Rows, n)
				}
			})
		}
	}
}

// TestVerifyRejectsEveryByteChange changes each byte of a small export in
// turn: every change must be reported, and none may crash the verifier (a
// damaged Parquet file is where parquet-go would, see checkParquetPages).
func TestVerifyRejectsEveryByteChange(t *testing.T) {
	key := newKey(t)
	rows := makeHistory(t, 3, 6, 12).rows()[:6]
	for _, f := range []Format{FormatJSONL, FormatParquet} {
		t.Run(string(f), func(t *testing.T) {
			path, manifest := exportSigned(t, t.TempDir(), f, rows, key)
			orig := mustRead(t, path)
			var parsed, hashChanged, failures atomic.Int64
			// Each byte is checked on its own; spread them over the CPUs.
			var wg sync.WaitGroup
			workers := runtime.GOMAXPROCS(0)
			for w := range workers {
				wg.Go(func() {
					for i := w; i < len(orig) && failures.Load() < 5; i += workers {
						b := bytes.Clone(orig)
						b[i] ^= 0x20 // flips the case of letters: most JSON still parses
						rep := verifyBytes(b, manifest, pub(key))
						switch {
						case rep.OK():
							t.Errorf("byte %d changed (%q to %q): Verify accepts the file", i, orig[i], b[i])
							failures.Add(1)
						case !hasProblem(rep, ProblemSHA256) && !hasProblem(rep, ProblemAnotherFile):
							t.Errorf("byte %d changed: no SHA-256 finding in %v", i, rep.Err())
							failures.Add(1)
						}
						if !hasProblem(rep, ProblemUnreadable) {
							parsed.Add(1)
						}
						if hasProblem(rep, ProblemHash) {
							hashChanged.Add(1)
						}
					}
				})
			}
			wg.Wait()
			t.Logf("%s: %d bytes; %d changed files still parsed, %d with a row whose hash no longer matches", f, len(orig), parsed.Load(), hashChanged.Load())
			// In JSONL many changes leave a parseable row whose hash then
			// fails; in Parquet the page checksums catch them first.
			if f == FormatJSONL && hashChanged.Load() == 0 {
				t.Error("no byte change was caught by a row hash: the row check is not running")
			}
			if f == FormatParquet && parsed.Load() == int64(len(orig)) {
				t.Error("every changed Parquet file parsed: the page checks are not running")
			}
		})
	}
}

func hasProblem(rep Report, p Problem) bool {
	for _, f := range rep.Findings {
		if f.Problem == p {
			return true
		}
	}
	return false
}

// findingWith returns the first finding containing every part.
func findingWith(rep Report, parts ...string) (Finding, bool) {
next:
	for _, f := range rep.Findings {
		for _, p := range parts {
			if !strings.Contains(f.Message, p) {
				continue next
			}
		}
		return f, true
	}
	return Finding{}, false
}

// TestVerifyNamesTampering rewrites an export from altered rows with the
// writer (so the file parses) and keeps the original manifest: each
// alteration must be reported with its own finding.
func TestVerifyNamesTampering(t *testing.T) {
	key := newKey(t)
	rows := makeHistory(t, 4, 40, 13).rows()[:40]
	// Pick a token with at least three rows and its second and third rows.
	byToken := map[string][]int{}
	for i, r := range rows {
		byToken[r.TokenID] = append(byToken[r.TokenID], i)
	}
	var tok string
	for id, idx := range byToken {
		if len(idx) >= 3 && idx[1]+1 < idx[2] && (tok == "" || id < tok) {
			tok = id
		}
	}
	if tok == "" {
		t.Fatal("fixture has no token with three rows")
	}
	a, b := byToken[tok][1], byToken[tok][2] // b follows a in the chain
	ra, rb := rows[a], rows[b]

	type expect struct {
		problem Problem
		parts   []string
	}
	cases := []struct {
		name  string
		alter func([]Row) []Row
		want  []expect
	}{
		{"dropped row", func(rs []Row) []Row { return append(rs[:a:a], rs[a+1:]...) }, []expect{
			{ProblemChain, []string{"token " + tok, fmt.Sprintf("row %d (sequence %d) follows a hash no row in the file has: a row between sequence %d and %d is missing", b, rb.Sequence, rows[byToken[tok][0]].Sequence, rb.Sequence)}},
			{ProblemManifestRow, []string{fmt.Sprintf("the manifest says %d rows, the file has %d", len(rows), len(rows)-1)}},
			{ProblemManifestRow, []string{"token " + tok, fmt.Sprintf("the manifest says %d rows, the file has %d", len(byToken[tok]), len(byToken[tok])-1)}},
		}},
		{"duplicated row", func(rs []Row) []Row { return append(rs[:a+1:a+1], rs[a:]...) }, []expect{
			{ProblemDuplicate, []string{fmt.Sprintf("row %d repeats sequence %d: duplicated row", a+2, ra.Sequence)}},
			{ProblemChain, []string{fmt.Sprintf("token %s: row %d (sequence %d) is a copy of row %d: duplicated row", tok, a+2, ra.Sequence, a+1)}},
			{ProblemManifestRow, []string{fmt.Sprintf("the manifest says %d rows, the file has %d", len(rows), len(rows)+1)}},
		}},
		{"swapped rows", func(rs []Row) []Row { rs[a], rs[b] = rs[b], rs[a]; return rs }, []expect{
			{ProblemReordered, []string{"rows reordered", fmt.Sprintf("has sequence %d after", ra.Sequence)}},
			{ProblemChain, []string{fmt.Sprintf("token %s: row %d (sequence %d) follows row %d (sequence %d), which comes after it in the file: rows reordered", tok, a+1, rb.Sequence, b+1, ra.Sequence)}},
		}},
		{"swapped neighbours of two tokens", func(rs []Row) []Row { rs[0], rs[1] = rs[1], rs[0]; return rs }, []expect{
			{ProblemReordered, []string{fmt.Sprintf("row 2 has sequence %d after %d: rows reordered", rows[0].Sequence, rows[1].Sequence)}},
		}},
		{"changed row", func(rs []Row) []Row { rs[a].TokenName += " (renamed)"; return rs }, []expect{
			{ProblemHash, []string{fmt.Sprintf("row %d (sequence %d, token %s): content does not match its hash: changed", a+1, ra.Sequence, tok)}},
		}},
		{"changed row and rehashed", func(rs []Row) []Row {
			rs[a].SourceIP = "203.0.113.9"
			rs[a].Hash = rs[a].Record().ChainHash()
			return rs
		}, []expect{
			{ProblemChain, []string{fmt.Sprintf("token %s: row %d (sequence %d) follows a hash no row in the file has", tok, b+1, rb.Sequence)}},
		}},
		{"prev_hash cleared and rehashed", func(rs []Row) []Row {
			rs[b].PrevHash = ""
			rs[b].Hash = rs[b].Record().ChainHash()
			return rs
		}, []expect{
			{ProblemChain, []string{fmt.Sprintf("token %s: row %d (sequence %d) is a %s with an empty prev_hash: only a TokenCreated row starts a chain", tok, b+1, rb.Sequence, rb.EventType)}},
		}},
		{"dropped first row of the file", func(rs []Row) []Row { return rs[1:] }, []expect{
			{ProblemManifestRow, []string{"token " + rows[0].TokenID, "the manifest says its chain starts after nothing (TokenCreated)",
				fmt.Sprintf("(row %d, sequence %d) follows hash %s: a row before it is missing", byToken[rows[0].TokenID][1], rows[byToken[rows[0].TokenID][1]].Sequence, rows[0].Hash)}},
			{ProblemManifestRow, []string{fmt.Sprintf("the manifest says the first sequence is %d, the file's is %d", rows[0].Sequence, rows[1].Sequence)}},
		}},
		{"dropped last row of the file", func(rs []Row) []Row { return rs[:len(rs)-1] }, []expect{
			{ProblemManifestRow, []string{fmt.Sprintf("the manifest says the last sequence is %d", rows[len(rows)-1].Sequence)}},
			{ProblemManifestRow, []string{"token " + rows[len(rows)-1].TokenID, "the manifest says its chain ends at hash " + rows[len(rows)-1].Hash}},
		}},
	}
	for _, f := range Formats {
		for _, c := range cases {
			t.Run(string(f)+"/"+c.name, func(t *testing.T) {
				dir := t.TempDir()
				_, manifest := exportSigned(t, dir, f, rows, key)
				altered := c.alter(append([]Row(nil), rows...))
				path, _ := writeFile(t, dir, f, altered) // overwrites the file
				rep := verifyBytes(mustRead(t, path), manifest, pub(key))
				if rep.OK() {
					t.Fatal("Verify accepts the altered file")
				}
				if !hasProblem(rep, ProblemSHA256) {
					t.Errorf("no SHA-256 finding")
				}
				if hasProblem(rep, ProblemAnotherFile) {
					t.Errorf("an altered file is taken for another file")
				}
				for _, w := range c.want {
					if got, ok := findingWith(rep, w.parts...); !ok || got.Problem != w.problem {
						t.Errorf("no %s finding saying %q", w.problem, w.parts)
					}
				}
				if t.Failed() {
					t.Logf("findings:\n%s", strings.Join(messages(rep), "\n"))
				}
			})
		}
	}
}

func messages(rep Report) []string {
	var out []string
	for _, f := range rep.Findings {
		out = append(out, fmt.Sprintf("[%s] %s", f.Problem, f.Message))
	}
	return out
}

// TestVerifyFindingsInOrder checks findings come in the documented order
// and carry row, sequence and token.
func TestVerifyFindingsInOrder(t *testing.T) {
	key := newKey(t)
	rows := makeHistory(t, 4, 30, 14).rows()[:30]
	dir := t.TempDir()
	_, manifest := exportSigned(t, dir, FormatJSONL, rows, key)
	altered := append([]Row(nil), rows...)
	altered[20].UserAgent = "changed"
	altered = append(altered[:10], altered[11:]...)
	path, _ := writeFile(t, dir, FormatJSONL, altered)
	rep := verifyBytes(mustRead(t, path), manifest, pub(key))
	order := map[Problem]int{ProblemSHA256: 1, ProblemHash: 2, ProblemChain: 3, ProblemManifestRow: 4}
	last := 0
	for _, f := range rep.Findings {
		if order[f.Problem] < last {
			t.Errorf("finding %q out of order:\n%s", f.Message, strings.Join(messages(rep), "\n"))
		}
		last = order[f.Problem]
	}
	f, ok := findingWith(rep, "content does not match its hash")
	if !ok || f.Row != 20 || f.Sequence != rows[20].Sequence || f.TokenID != rows[20].TokenID {
		t.Errorf("hash finding %+v: want row 20, sequence %d, token %s", f, rows[20].Sequence, rows[20].TokenID)
	}
}

func TestVerifyRejectsAnotherManifest(t *testing.T) {
	key := newKey(t)
	h := makeHistory(t, 6, 80, 15).rows()
	dir1, dir2 := t.TempDir(), t.TempDir()
	for _, f := range Formats {
		path, _ := exportSigned(t, dir1, f, h[:40], key)
		_, other := exportSigned(t, dir2, f, h[40:80], key) // the next export
		rep := verifyBytes(mustRead(t, path), other, pub(key))
		if rep.OK() {
			t.Fatalf("%s: Verify accepts a file with another export's manifest", f)
		}
		got, ok := findingWith(rep, "the manifest describes another file")
		if !ok || got.Problem != ProblemAnotherFile || len(rep.Findings) != 1 {
			t.Errorf("%s: want one finding that the manifest describes another file, got:\n%s", f, strings.Join(messages(rep), "\n"))
		}
		// Another format of the same rows: same rows, other bytes.
		_, sameRows := exportSigned(t, t.TempDir(), otherFormat(f), h[:40], key)
		rep = verifyBytes(mustRead(t, path), sameRows, pub(key))
		if rep.OK() || !hasProblem(rep, ProblemSHA256) || !hasProblem(rep, ProblemUnreadable) {
			t.Errorf("%s: a manifest of the same rows in %s: %v", f, otherFormat(f), rep.Err())
		}
		if _, ok := findingWith(rep, fmt.Sprintf("cannot be read as %s (it looks like parquet)", otherFormat(f))); f == FormatParquet && !ok {
			t.Errorf("parquet file, jsonl manifest: no hint the file is parquet:\n%s", strings.Join(messages(rep), "\n"))
		}
	}
}

func otherFormat(f Format) Format {
	if f == FormatParquet {
		return FormatJSONL
	}
	return FormatParquet
}

func TestVerifyRejectsManifestSignatures(t *testing.T) {
	key, otherKey := newKey(t), newKey(t)
	rows := makeHistory(t, 4, 30, 16).rows()[:30]
	dir := t.TempDir()
	path, manifest := exportSigned(t, dir, FormatParquet, rows, key)
	file := mustRead(t, path)

	// Signed by another key (a forger's manifest, made honestly over the file).
	_, m := writeFile(t, t.TempDir(), FormatParquet, rows)
	forged, err := SignManifest(m, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	rep := verifyBytes(file, forged, pub(key))
	want := fmt.Sprintf("manifest is signed by key %s, not the trusted key %s", KeyID(pub(otherKey)), KeyID(pub(key)))
	if f, ok := findingWith(rep, want); !ok || f.Problem != ProblemUntrusted || len(rep.Findings) != 1 {
		t.Errorf("manifest signed by another key: want only %q, got:\n%s", want, strings.Join(messages(rep), "\n"))
	}
	// The same, claiming the trusted key.
	claimed := bytes.Replace(forged, []byte(FormatPublicKey(pub(otherKey))), []byte(FormatPublicKey(pub(key))), 1)
	if rep := verifyBytes(file, claimed, pub(key)); !hasProblem(rep, ProblemSignature) {
		t.Errorf("forged manifest claiming the trusted key: %v", rep.Err())
	}

	// Edits of the signed bytes: a count, a chain head, only whitespace.
	var sf struct{ Signed json.RawMessage }
	if err := json.Unmarshal(manifest, &sf); err != nil {
		t.Fatal(err)
	}
	edits := map[string][]byte{
		"rows":       bytes.Replace(manifest, []byte(`"rows": 30`), []byte(`"rows": 31`), 1),
		"head":       bytes.Replace(manifest, []byte(rows[29].Hash), []byte(rows[28].Hash), 1),
		"whitespace": bytes.Replace(manifest, sf.Signed, append(bytes.Clone(sf.Signed[:1]), append([]byte(" "), sf.Signed[1:]...)...), 1),
		"signature":  bytes.Replace(manifest, []byte(`"signature": "`), []byte(`"signature": "AAAA`), 1),
	}
	for name, edited := range edits {
		if bytes.Equal(edited, manifest) {
			t.Fatalf("edit %s changed nothing", name)
		}
		rep := verifyBytes(file, edited, pub(key))
		if f, ok := findingWith(rep, "manifest signature does not verify"); !ok || f.Problem != ProblemSignature {
			t.Errorf("manifest with edited %s: got:\n%s", name, strings.Join(messages(rep), "\n"))
		}
		if _, err := OpenManifest(edited, pub(key)); err == nil {
			t.Errorf("OpenManifest accepts the manifest with edited %s", name)
		}
	}
	for name, b := range map[string][]byte{"empty": nil, "not json": []byte("hello"), "unsigned": []byte(`{"format":"parquet"}`)} {
		rep := verifyBytes(file, b, pub(key))
		if !hasProblem(rep, ProblemManifest) {
			t.Errorf("%s manifest: %v", name, rep.Err())
		}
		if rep.Rows != int64(len(rows)) || hasProblem(rep, ProblemHash) || hasProblem(rep, ProblemUnreadable) {
			t.Errorf("%s manifest: the file's rows were not checked on their own: %v", name, rep.Err())
		}
	}
}

func TestOpenManifest(t *testing.T) {
	key := newKey(t)
	rows := makeHistory(t, 4, 30, 17).rows()[:30]
	_, m := writeFile(t, t.TempDir(), FormatJSON, rows)
	m.KeyID = KeyID(pub(key))
	b, err := SignManifest(m, key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := OpenManifest(b, pub(key))
	if err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(m)
	if !bytes.Equal(gb, wb) {
		t.Errorf("manifest reads back as\n%s\nwrote\n%s", gb, wb)
	}
	if !json.Valid(b) {
		t.Error("manifest file is not valid JSON")
	}
	var keys map[string]json.RawMessage
	_ = json.Unmarshal(b, &keys)
	var signed map[string]any
	_ = json.Unmarshal(keys["signed"], &signed)
	for _, k := range []string{"format", "organization_id", "filters", "rows", "first_sequence", "last_sequence", "stream_sequence", "sha256", "chains", "created_at", "key_id"} {
		if _, ok := signed[k]; !ok {
			t.Errorf("signed manifest has no %q", k)
		}
	}
	if _, err := OpenManifest(b, pub(newKey(t))); err == nil || !strings.Contains(err.Error(), "not the trusted key") {
		t.Errorf("OpenManifest with another trusted key: %v", err)
	}
	m.KeyID = "0123456789abcdef"
	b, _ = SignManifest(m, key)
	if _, err := OpenManifest(b, pub(key)); err == nil {
		t.Error("OpenManifest accepts a manifest whose key_id is not its key's")
	}
}

// TestManifestChains checks the summary against a hand count.
func TestManifestChains(t *testing.T) {
	rows := makeHistory(t, 5, 60, 18).rows()[10:60] // starts mid-chain for some tokens
	_, m := writeFile(t, t.TempDir(), FormatJSONL, rows)
	if m.Rows != 50 || m.FirstSequence != 11 || m.LastSequence != 60 {
		t.Fatalf("manifest rows %d, sequences %d-%d", m.Rows, m.FirstSequence, m.LastSequence)
	}
	want := map[string]*Chain{}
	for _, r := range rows {
		c := want[r.TokenID]
		if c == nil {
			c = &Chain{TokenID: r.TokenID, PrevHash: r.PrevHash}
			want[r.TokenID] = c
		}
		c.Head, c.Rows = r.Hash, c.Rows+1
	}
	if len(m.Chains) != len(want) {
		t.Fatalf("%d chains, want %d", len(m.Chains), len(want))
	}
	midChain := 0
	for i, c := range m.Chains {
		if i > 0 && m.Chains[i-1].TokenID >= c.TokenID {
			t.Error("chains not sorted by token id")
		}
		if *want[c.TokenID] != c {
			t.Errorf("chain %+v, want %+v", c, *want[c.TokenID])
		}
		if c.PrevHash != "" {
			midChain++
		}
	}
	if midChain == 0 {
		t.Error("fixture: no chain starts mid-history")
	}
}

func TestVerifyFiles(t *testing.T) {
	key := newKey(t)
	rows := makeHistory(t, 4, 30, 19).rows()[:30]
	path, _ := exportSigned(t, t.TempDir(), FormatParquet, rows, key)
	rep, err := VerifyFiles(path, path+".manifest.json", pub(key))
	if err != nil || !rep.OK() {
		t.Fatalf("VerifyFiles = %v, %v", rep.Err(), err)
	}
	if _, err := VerifyFiles(path+".missing", path+".manifest.json", pub(key)); err == nil {
		t.Error("VerifyFiles of a missing file: no error")
	}
}

// TestVerifyCapsFindings checks a file with every row damaged gets a
// bounded report: maxListed examples and a count of the rest.
func TestVerifyCapsFindings(t *testing.T) {
	key := newKey(t)
	rows := makeHistory(t, 10, 300, 24).rows()[:300]
	dir := t.TempDir()
	_, manifest := exportSigned(t, dir, FormatJSONL, rows, key)
	altered := append([]Row(nil), rows...)
	for i := range altered {
		altered[i].Details = `{"version":0}`
	}
	path, _ := writeFile(t, dir, FormatJSONL, altered)
	rep := verifyBytes(mustRead(t, path), manifest, pub(key))
	hashes := 0
	for _, f := range rep.Findings {
		if f.Problem == ProblemHash && f.Row > 0 {
			hashes++
		}
	}
	if hashes != maxListed {
		t.Errorf("%d row hash findings listed, want %d", hashes, maxListed)
	}
	if _, ok := findingWith(rep, fmt.Sprintf("and %d more rows whose content does not match their hash", len(rows)-maxListed)); !ok {
		t.Errorf("no count of the findings not listed:\n%s", strings.Join(messages(rep)[len(rep.Findings)-5:], "\n"))
	}
}

// TestWriteSignedManifestStreams: the manifest an export writes as it makes
// it is, byte for byte, the manifest SignManifest makes of the same facts,
// and reaches its writer in pieces no larger than its buffer: a manifest
// of many tokens is never held whole.
func TestWriteSignedManifestStreams(t *testing.T) {
	key := newKey(t)
	rows := makeHistory(t, 3000, 9000, 23).rows()
	ex, err := NewExport(FormatJSONL, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if err := ex.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := ex.Close(); err != nil {
		t.Fatal(err)
	}
	facts := Manifest{OrganizationID: "org-main", StreamSequence: 9100, CreatedAt: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC), KeyID: KeyID(pub(key))}
	var pieces piecewise
	got, err := ex.WriteSignedManifest(&pieces, facts, key)
	if err != nil {
		t.Fatal(err)
	}
	whole, err := ex.Manifest(facts)
	if err != nil {
		t.Fatal(err)
	}
	want, err := SignManifest(whole, key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pieces.Bytes(), want) {
		t.Fatalf("streamed manifest (%d bytes) differs from SignManifest's (%d bytes)", pieces.Len(), len(want))
	}
	if pieces.largest > 64<<10 || pieces.writes < 2 {
		t.Errorf("manifest of %d bytes written in %d pieces, largest %d: want pieces of at most 64 KiB", pieces.Len(), pieces.writes, pieces.largest)
	}
	if got.Rows != int64(len(rows)) || got.SHA256 != whole.SHA256 || got.Chains != nil {
		t.Errorf("returned manifest: rows %d, sha %s, %d chains", got.Rows, got.SHA256, len(got.Chains))
	}
	if _, err := OpenManifest(want, pub(key)); err != nil {
		t.Fatal(err)
	}
}

type piecewise struct {
	bytes.Buffer
	writes, largest int
}

func (p *piecewise) Write(b []byte) (int, error) {
	p.writes++
	p.largest = max(p.largest, len(b))
	return p.Buffer.Write(b)
}

// TestManifestSignatureIsEd25519ph: manifests are signed with the
// prehashed Ed25519 of RFC 8032, which any implementation of it checks:
// the options used reproduce the RFC's own test vector (section 7.3).
func TestManifestSignatureIsEd25519ph(t *testing.T) {
	seed, _ := hex.DecodeString("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42")
	want, _ := hex.DecodeString("98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae4131f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406")
	digest := sha512.Sum512([]byte("abc"))
	sig, err := ed25519.NewKeyFromSeed(seed).Sign(nil, digest[:], signatureOptions)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sig, want) {
		t.Errorf("signature %x, RFC 8032 says %x", sig, want)
	}
}
