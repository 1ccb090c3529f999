package exporters

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// Problem classifies a Finding, for programs; people read its Message.
type Problem string

const (
	ProblemManifest    Problem = "manifest"     // the manifest file cannot be read
	ProblemSignature   Problem = "signature"    // the signature does not verify
	ProblemUntrusted   Problem = "untrusted"    // signed by another key
	ProblemSHA256      Problem = "sha256"       // the file's bytes are not the ones signed
	ProblemAnotherFile Problem = "another_file" // the manifest describes another file
	ProblemUnreadable  Problem = "unreadable"   // the file does not parse in its format
	ProblemHash        Problem = "hash"         // a row's content does not match its hash
	ProblemReordered   Problem = "reordered"    // a row's sequence is below the one before
	ProblemDuplicate   Problem = "duplicate"    // a row repeats the sequence before it
	ProblemChain       Problem = "chain"        // a row does not follow its token's previous row
	ProblemManifestRow Problem = "mismatch"     // the file's rows disagree with the manifest
	ProblemFilters     Problem = "filters"      // a row is not one the manifest's filters keep
)

// Finding is one thing wrong with an export, as a sentence naming exactly
// what. Row (1-based, in file order), Sequence and TokenID are set where the
// finding is about a row or a token.
type Finding struct {
	Problem  Problem `json:"problem"`
	Row      int64   `json:"row,omitempty"`
	Sequence int64   `json:"sequence,omitempty"`
	TokenID  string  `json:"token_id,omitempty"`
	Message  string  `json:"message"`
}

func (f Finding) String() string { return f.Message }

// Report is the result of Verify.
type Report struct {
	// Manifest is the manifest as read, even when its signature failed (then
	// it is only what the file claims); zero if it could not be read.
	Manifest Manifest `json:"manifest"`
	// Rows is the number of rows read from the file.
	Rows int64 `json:"rows"`
	// ChainsLinked says whether each token's rows were checked to follow
	// one another: true unless the manifest's filters keep only some of a
	// token's events (see Filters.KeepWholeChains).
	ChainsLinked bool      `json:"chains_linked"`
	Findings     []Finding `json:"findings"`
}

// OK reports whether the export passed every check.
func (r Report) OK() bool { return len(r.Findings) == 0 }

// Err returns nil for an export that passed, else an error listing every
// finding.
func (r Report) Err() error {
	if r.OK() {
		return nil
	}
	msgs := make([]string, len(r.Findings))
	for i, f := range r.Findings {
		msgs[i] = f.Message
	}
	return errors.New("audit export does not verify: " + strings.Join(msgs, "; "))
}

// Verify checks an export file against its signed manifest and the trusted
// public key, and reports every problem it finds, in this order: the
// signature; the file's SHA-256; that the file parses in the manifest's
// format; each row's hash; the order of sequences; each token's hash chain,
// within the file and against the manifest's chains; the row count and
// first and last sequence; and that every row is one the manifest's filters
// keep, at or below its stream_sequence. Only a file that cannot be read
// stops the row checks early.
//
// A filtered export is judged by what its filters promise. Where they may
// leave out events in the middle of a token's history (a type, workspace
// or actor filter), a token's rows need not follow one another, so that
// link is not checked (Report.ChainsLinked is false); everything else is.
//
// Memory grows with the number of tokens, not rows (and the findings listed
// are capped). The file is read a few times: to hash it, to check a Parquet
// file's pages before decoding them, to read the rows, and once more only to
// explain broken chains. A damaged or hostile file gets findings, never a
// crash: see checkParquetPages and walkThrift.
func Verify(file io.ReaderAt, size int64, manifest []byte, trusted ed25519.PublicKey) Report {
	var rep Report
	m, sf, err := parseManifest(manifest)
	haveManifest := err == nil
	switch {
	case err != nil:
		rep.add(Finding{Problem: ProblemManifest, Message: "the manifest cannot be read (" + err.Error() + "); the file's rows are checked on their own"})
	default:
		rep.Manifest = m
		if err := checkSignature(sf, m, trusted); err != nil {
			switch {
			case errors.Is(err, ErrUntrustedKey):
				pub, _ := ParsePublicKey(sf.PublicKey)
				rep.add(Finding{Problem: ProblemUntrusted, Message: fmt.Sprintf("manifest is signed by key %s, not the trusted key %s", KeyID(pub), KeyID(trusted))})
			case errors.Is(err, ErrBadSignature):
				rep.add(Finding{Problem: ProblemSignature, Message: "manifest signature does not verify: the signed manifest was changed after signing, or the signature is damaged"})
			default:
				rep.add(Finding{Problem: ProblemSignature, Message: err.Error()})
			}
		}
	}

	sum, err := fileSHA256(file, size)
	if err != nil {
		rep.add(Finding{Problem: ProblemUnreadable, Message: "the file cannot be read: " + err.Error()})
		return rep
	}

	format := m.Format
	if !haveManifest {
		format = sniffFormat(file, size)
	}
	if _, err := ParseFormat(string(format)); err != nil {
		rep.add(Finding{Problem: ProblemManifest, Message: fmt.Sprintf("the manifest's format %q is not one of parquet, jsonl, json: the file cannot be read", m.Format)})
		return rep
	}

	c := newChecker()
	if haveManifest {
		c.filters = &m.Filters
		c.cut = m.StreamSequence
		c.linked = m.Filters.KeepWholeChains()
		var err error
		if c.since, c.until, err = m.Filters.times(); err != nil {
			rep.add(Finding{Problem: ProblemManifest, Message: "the manifest's filters cannot be read: " + err.Error()})
			c.filters = nil
		}
	}
	rep.ChainsLinked = c.linked
	readErr := ReadRows(format, file, size, c.row)
	rep.Rows = c.rows
	if len(c.breaks) > 0 {
		// Explain each break by finding the row that has the hash it
		// follows; a file that failed to parse fails at the same place.
		_ = ReadRows(format, file, size, c.locate)
	}

	var head, tail []Finding // before and after the row findings
	if haveManifest && sum != m.SHA256 {
		if readErr == nil && c.describesAnother(m) {
			head = append(head, Finding{Problem: ProblemAnotherFile, Message: fmt.Sprintf(
				"the manifest describes another file (it says %s; this file has %s)",
				describe(m.Rows, m.FirstSequence, m.LastSequence, m.SHA256),
				describe(c.rows, c.first, c.last, sum))})
			haveManifest = false // no point listing each difference
		} else {
			head = append(head, Finding{Problem: ProblemSHA256, Message: fmt.Sprintf(
				"the file's SHA-256 is %s, the manifest says %s: the file was changed, or the manifest belongs to another file", sum, m.SHA256)})
		}
	}
	if readErr != nil {
		hint := ""
		if looks := sniffFormat(file, size); looks != format && looks != FormatJSONL {
			hint = fmt.Sprintf(" (it looks like %s)", looks)
		}
		head = append(head, Finding{Problem: ProblemUnreadable, Message: fmt.Sprintf(
			"the file cannot be read as %s%s after %d rows: %v", format, hint, c.rows, readErr)})
	}
	if haveManifest && readErr == nil {
		tail = c.compare(m)
		tail = append(tail, c.outside.listed...)
		if c.outside.dropped > 0 {
			tail = append(tail, Finding{Problem: ProblemFilters, Message: fmt.Sprintf("and %d more rows the manifest's filters do not keep, not listed", c.outside.dropped)})
		}
	}
	rep.Findings = append(append(append(rep.Findings, head...), c.findings()...), tail...)
	return rep
}

// VerifyFiles is Verify on an export file and its manifest file on disk. Its
// error is for files that cannot be opened; what is wrong with their content
// is in the report.
func VerifyFiles(exportPath, manifestPath string, trusted ed25519.PublicKey) (Report, error) {
	manifest, err := os.ReadFile(manifestPath)
	if err != nil {
		return Report{}, fmt.Errorf("verify export: %w", err)
	}
	f, err := os.Open(exportPath)
	if err != nil {
		return Report{}, fmt.Errorf("verify export: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Report{}, fmt.Errorf("verify export: %w", err)
	}
	return Verify(f, st.Size(), manifest, trusted), nil
}

func (r *Report) add(f Finding) { r.Findings = append(r.Findings, f) }

func describe(rows int64, first, last uint64, sum string) string {
	if rows == 0 {
		return fmt.Sprintf("no rows, SHA-256 %s", sum)
	}
	return fmt.Sprintf("%d rows, sequences %d to %d, SHA-256 %s", rows, first, last, sum)
}

func fileSHA256(file io.ReaderAt, size int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(file, 0, size)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sniffFormat guesses a file's format when no manifest says it.
func sniffFormat(file io.ReaderAt, size int64) Format {
	var b [4]byte
	n, _ := file.ReadAt(b[:], 0)
	switch {
	case n == 4 && string(b[:]) == "PAR1":
		return FormatParquet
	case n > 0 && b[0] == '[':
		return FormatJSON
	}
	return FormatJSONL
}

// tokenState is what the checker remembers of a token: enough to check the
// next row's link and to compare with the manifest's chain.
type tokenState struct {
	chain            Chain
	firstRow         int64
	firstSeq         int64
	lastRow, lastSeq int64
}

// chainBreak is a row whose prev_hash is not its token's previous row's hash.
type chainBreak struct {
	row, seq          int64
	token, prevHash   string
	lastRow, lastSeq  int64
	foundRow, foundAt int64 // the row holding prevHash, if any
}

// maxListed caps the findings of each kind a report lists one by one: a file
// with every row damaged needs a hundred examples and a count, not millions
// of lines (nor the memory for them).
const maxListed = 100

// findingList is the findings of one kind, the first maxListed of them.
type findingList struct {
	listed  []Finding
	dropped int64
}

func (l *findingList) add(f Finding) bool {
	if len(l.listed) >= maxListed {
		l.dropped++
		return false
	}
	l.listed = append(l.listed, f)
	return true
}

// checker makes the row checks in one pass over the rows.
type checker struct {
	rows        int64
	first, last uint64
	prevSeq     int64
	tokens      map[string]*tokenState
	order       []string // tokens in order of first appearance
	hashes      findingList
	sequences   findingList
	chains      findingList
	breaks      []*chainBreak
	wanted      map[string][]*chainBreak // by the prev_hash they follow
	pos         int64                    // row number in the locate pass

	// linked: each token's rows must follow one another (the export's
	// filters keep a token's events whole).
	linked bool
	// filters, when the manifest was read: each row must be one they keep,
	// at or below cut; since and until are the filters' times, parsed.
	filters      *Filters
	cut          uint64
	since, until time.Time
	outside      findingList
}

func newChecker() *checker {
	return &checker{tokens: make(map[string]*tokenState), wanted: make(map[string][]*chainBreak), linked: true}
}

func (c *checker) row(r Row) error {
	c.rows++
	n, seq := c.rows, r.Sequence
	if r.Record().ChainHash() != r.Hash {
		c.hashes.add(Finding{Problem: ProblemHash, Row: n, Sequence: seq, TokenID: r.TokenID, Message: fmt.Sprintf(
			"row %d (sequence %d, token %s): content does not match its hash: changed", n, seq, r.TokenID)})
	}
	if n == 1 {
		c.first = uint64(seq)
	} else if seq < c.prevSeq {
		c.sequences.add(Finding{Problem: ProblemReordered, Row: n, Sequence: seq, TokenID: r.TokenID, Message: fmt.Sprintf(
			"row %d has sequence %d after %d: rows reordered", n, seq, c.prevSeq)})
	} else if seq == c.prevSeq {
		c.sequences.add(Finding{Problem: ProblemDuplicate, Row: n, Sequence: seq, TokenID: r.TokenID, Message: fmt.Sprintf(
			"row %d repeats sequence %d: duplicated row", n, seq)})
	}
	c.prevSeq, c.last = seq, uint64(seq)
	if c.filters != nil {
		if why := c.filters.leavesOut(r, c.since, c.until, c.cut); why != "" {
			c.outside.add(Finding{Problem: ProblemFilters, Row: n, Sequence: seq, TokenID: r.TokenID, Message: fmt.Sprintf(
				"row %d (sequence %d, token %s) is not one the manifest's filters keep: %s", n, seq, r.TokenID, why)})
		}
	}

	if r.EventType == domain.TokenCreated && r.PrevHash != "" {
		c.chains.add(Finding{Problem: ProblemChain, Row: n, Sequence: seq, TokenID: r.TokenID, Message: fmt.Sprintf(
			"token %s: row %d (sequence %d) is its TokenCreated but follows hash %s: a TokenCreated row starts the chain and follows nothing", r.TokenID, n, seq, r.PrevHash)})
	}
	if r.EventType != domain.TokenCreated && r.PrevHash == "" {
		c.chains.add(Finding{Problem: ProblemChain, Row: n, Sequence: seq, TokenID: r.TokenID, Message: fmt.Sprintf(
			"token %s: row %d (sequence %d) is a %s with an empty prev_hash: only a TokenCreated row starts a chain", r.TokenID, n, seq, r.EventType)})
	}
	t := c.tokens[r.TokenID]
	if t == nil {
		c.tokens[r.TokenID] = &tokenState{
			chain:    Chain{TokenID: r.TokenID, PrevHash: r.PrevHash, Head: r.Hash, Rows: 1},
			firstRow: n, firstSeq: seq, lastRow: n, lastSeq: seq,
		}
		c.order = append(c.order, r.TokenID)
		return nil
	}
	switch {
	case r.PrevHash == t.chain.Head:
		// the chain goes on
	case r.Hash == t.chain.Head:
		c.chains.add(Finding{Problem: ProblemChain, Row: n, Sequence: seq, TokenID: r.TokenID, Message: fmt.Sprintf(
			"token %s: row %d (sequence %d) is a copy of row %d: duplicated row", r.TokenID, n, seq, t.lastRow)})
	case r.PrevHash == "":
		if r.EventType == domain.TokenCreated { // else reported above
			c.chains.add(Finding{Problem: ProblemChain, Row: n, Sequence: seq, TokenID: r.TokenID, Message: fmt.Sprintf(
				"token %s: row %d (sequence %d) is a second TokenCreated, after row %d (sequence %d): the token's history cannot start twice", r.TokenID, n, seq, t.lastRow, t.lastSeq)})
		}
	case !c.linked:
		// The filters left out events of this token between its rows: the
		// row follows one of those, which the file does not hold.
	default:
		// Listed in this place; the message waits for the locate pass.
		if c.chains.add(Finding{}) {
			b := &chainBreak{row: n, seq: seq, token: r.TokenID, prevHash: r.PrevHash, lastRow: t.lastRow, lastSeq: t.lastSeq}
			c.breaks = append(c.breaks, b)
			c.wanted[r.PrevHash] = append(c.wanted[r.PrevHash], b)
		}
	}
	t.chain.Head = r.Hash
	t.chain.Rows++
	t.lastRow, t.lastSeq = n, seq
	return nil
}

// locate is the second pass: it notes where each hash a break follows is.
func (c *checker) locate(r Row) error {
	c.pos++
	for _, b := range c.wanted[r.Hash] {
		if b.foundRow == 0 {
			b.foundRow, b.foundAt = c.pos, r.Sequence
		}
	}
	return nil
}

// findings returns the row findings in check order: hashes, sequences, chains.
func (c *checker) findings() []Finding {
	var out []Finding
	more := func(l findingList, p Problem, what string) {
		if l.dropped > 0 {
			out = append(out, Finding{Problem: p, Message: fmt.Sprintf("and %d more %s, not listed", l.dropped, what)})
		}
	}
	out = append(out, c.hashes.listed...)
	more(c.hashes, ProblemHash, "rows whose content does not match their hash")
	out = append(out, c.sequences.listed...)
	more(c.sequences, ProblemReordered, "rows out of sequence order")
	next := 0
	for _, f := range c.chains.listed {
		if f.Problem == "" {
			f = c.breaks[next].finding()
			next++
		}
		out = append(out, f)
	}
	more(c.chains, ProblemChain, "breaks in the tokens' hash chains")
	return out
}

func (b *chainBreak) finding() Finding {
	f := Finding{Problem: ProblemChain, Row: b.row, Sequence: b.seq, TokenID: b.token}
	switch {
	case b.foundRow == 0:
		f.Message = fmt.Sprintf("token %s: row %d (sequence %d) follows a hash no row in the file has: a row between sequence %d and %d is missing",
			b.token, b.row, b.seq, b.lastSeq, b.seq)
	case b.foundRow > b.row:
		f.Message = fmt.Sprintf("token %s: row %d (sequence %d) follows row %d (sequence %d), which comes after it in the file: rows reordered",
			b.token, b.row, b.seq, b.foundRow, b.foundAt)
	default:
		f.Message = fmt.Sprintf("token %s: row %d (sequence %d) follows row %d (sequence %d), not the token's row before it, row %d (sequence %d): rows reordered, duplicated or inserted",
			b.token, b.row, b.seq, b.foundRow, b.foundAt, b.lastRow, b.lastSeq)
	}
	return f
}

// describesAnother reports whether m plainly belongs to another file: its
// sequence range does not overlap the file's, or not one of its chains is
// the same as the file's chain of that token. A file with a row dropped or
// changed still shares most chains with its manifest, so it is not taken
// for another file.
func (c *checker) describesAnother(m Manifest) bool {
	if m.Rows == c.rows && m.FirstSequence == c.first && m.LastSequence == c.last {
		return false
	}
	if c.rows == 0 || m.Rows == 0 {
		return true
	}
	if m.LastSequence < c.first || m.FirstSequence > c.last {
		return true
	}
	for _, mc := range m.Chains {
		if t := c.tokens[mc.TokenID]; t != nil && t.chain == mc {
			return false
		}
	}
	return true
}

// compare checks the file's chains, count and sequences against m.
func (c *checker) compare(m Manifest) []Finding {
	var out []Finding
	add := func(f Finding) { out = append(out, f) }
	inManifest := make(map[string]bool, len(m.Chains))
	for _, mc := range m.Chains {
		inManifest[mc.TokenID] = true
		t := c.tokens[mc.TokenID]
		if t == nil {
			add(Finding{Problem: ProblemManifestRow, TokenID: mc.TokenID, Message: fmt.Sprintf(
				"the manifest lists token %s (%d rows) but the file has no row of it", mc.TokenID, mc.Rows)})
			continue
		}
		fc := t.chain
		if fc.PrevHash != mc.PrevHash {
			add(Finding{Problem: ProblemManifestRow, Row: t.firstRow, Sequence: t.firstSeq, TokenID: mc.TokenID, Message: fmt.Sprintf(
				"token %s: the manifest says its chain starts after %s, the file's first row of it (row %d, sequence %d) follows %s: a row before it is missing or was added",
				mc.TokenID, orStart(mc.PrevHash), t.firstRow, t.firstSeq, orStart(fc.PrevHash))})
		}
		if fc.Head != mc.Head {
			add(Finding{Problem: ProblemManifestRow, Row: t.lastRow, Sequence: t.lastSeq, TokenID: mc.TokenID, Message: fmt.Sprintf(
				"token %s: the manifest says its chain ends at hash %s, the file's last row of it (row %d, sequence %d) has %s",
				mc.TokenID, mc.Head, t.lastRow, t.lastSeq, fc.Head)})
		}
		if fc.Rows != mc.Rows {
			add(Finding{Problem: ProblemManifestRow, TokenID: mc.TokenID, Message: fmt.Sprintf(
				"token %s: the manifest says %d rows, the file has %d", mc.TokenID, mc.Rows, fc.Rows)})
		}
	}
	for _, id := range c.order {
		if !inManifest[id] {
			t := c.tokens[id]
			add(Finding{Problem: ProblemManifestRow, Row: t.firstRow, Sequence: t.firstSeq, TokenID: id, Message: fmt.Sprintf(
				"token %s has %d rows in the file (the first is row %d, sequence %d) but no chain in the manifest", id, t.chain.Rows, t.firstRow, t.firstSeq)})
		}
	}
	if m.Rows != c.rows {
		add(Finding{Problem: ProblemManifestRow, Message: fmt.Sprintf("the manifest says %d rows, the file has %d", m.Rows, c.rows)})
	}
	if m.FirstSequence != c.first {
		add(Finding{Problem: ProblemManifestRow, Message: fmt.Sprintf("the manifest says the first sequence is %d, the file's is %d", m.FirstSequence, c.first)})
	}
	if m.LastSequence != c.last {
		add(Finding{Problem: ProblemManifestRow, Message: fmt.Sprintf("the manifest says the last sequence is %d, the file's is %d", m.LastSequence, c.last)})
	}
	return out
}

func orStart(h string) string {
	if h == "" {
		return "nothing (TokenCreated)"
	}
	return "hash " + h
}

// IsZero reports whether the export has no filters: every event of the
// organization up to its stream_sequence.
func (f Filters) IsZero() bool {
	return f.Since == "" && f.Until == "" && len(f.Types) == 0 && f.TokenID == "" && f.WorkspaceID == "" &&
		f.DeploymentID == "" && f.ActorTokenID == "" && f.AfterSequence == 0
}

// KeepWholeChains reports whether the filters keep every event of a token
// between the first and the last one they keep, so that in the file each
// token's rows follow one another as its events did. A time or sequence
// range cuts a token's history only at its ends; a token or deployment
// filter keeps all of each token's events (every event of a deployment
// token names its deployment, and no other token's does). A type filter
// leaves out the other types; a workspace filter, an organization token's
// events outside that workspace; an actor filter, what other tokens did.
func (f Filters) KeepWholeChains() bool {
	return len(f.Types) == 0 && f.WorkspaceID == "" && f.ActorTokenID == ""
}

// times parses the filters' since and until (zero when not given).
func (f Filters) times() (since, until time.Time, err error) {
	for _, t := range []struct {
		name, v string
		to      *time.Time
	}{{"since", f.Since, &since}, {"until", f.Until, &until}} {
		if t.v == "" {
			continue
		}
		if *t.to, err = time.Parse(time.RFC3339Nano, t.v); err != nil {
			return time.Time{}, time.Time{}, fmt.Errorf("%s %q is not an RFC 3339 time", t.name, t.v)
		}
	}
	return since, until, nil
}

// leavesOut says why the filters (since and until parsed) and the stream
// cut keep no row like r, or "" if they keep it.
func (f *Filters) leavesOut(r Row, since, until time.Time, cut uint64) string {
	switch {
	case uint64(r.Sequence) > cut:
		return fmt.Sprintf("its sequence is after the stream_sequence %d the export was cut at", cut)
	case uint64(r.Sequence) <= f.AfterSequence:
		return fmt.Sprintf("its sequence is not after after_sequence %d", f.AfterSequence)
	case !since.IsZero() && r.OccurredAt.Before(since):
		return fmt.Sprintf("it occurred at %s, before since %s", r.OccurredAt.Format(time.RFC3339Nano), f.Since)
	case !until.IsZero() && !r.OccurredAt.Before(until):
		return fmt.Sprintf("it occurred at %s, not before until %s", r.OccurredAt.Format(time.RFC3339Nano), f.Until)
	case len(f.Types) > 0 && !slices.Contains(f.Types, string(r.EventType)):
		return fmt.Sprintf("it is a %s, not one of the types %s", r.EventType, strings.Join(f.Types, ", "))
	case f.TokenID != "" && r.TokenID != f.TokenID:
		return "its token is not " + f.TokenID
	case f.WorkspaceID != "" && r.WorkspaceID != f.WorkspaceID:
		return "its workspace_id is not " + f.WorkspaceID
	case f.DeploymentID != "" && r.DeploymentID != f.DeploymentID:
		return "its deployment_id is not " + f.DeploymentID
	case f.ActorTokenID != "" && r.ActorTokenID != f.ActorTokenID:
		return "its actor is not " + f.ActorTokenID
	}
	return ""
}
