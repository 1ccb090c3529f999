package exporters

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// Manifest describes one export file. It is signed (SignManifest) and kept
// beside the file, so the file can be checked long after, without the ledger.
type Manifest struct {
	Format         Format  `json:"format"`
	OrganizationID string  `json:"organization_id"`
	Filters        Filters `json:"filters"`
	Rows           int64   `json:"rows"`
	// FirstSequence and LastSequence are the stream sequences of the file's
	// first and last rows; both 0 when it has none.
	FirstSequence uint64 `json:"first_sequence"`
	LastSequence  uint64 `json:"last_sequence"`
	// StreamSequence is the stream's last sequence when the export started:
	// the cut the export covers. Every matching event at or below it is in
	// the file, none above it is, even if events were stored while the file
	// was written. The next incremental export asks for after_sequence =
	// stream_sequence and so misses and repeats nothing (LastSequence is not
	// the cut: the last events before it may not have matched the filters).
	StreamSequence uint64 `json:"stream_sequence"`
	// SHA256 is the hex SHA-256 of the whole file.
	SHA256 string `json:"sha256"`
	// Chains has one entry per token in the file, sorted by token id.
	Chains    []Chain   `json:"chains"`
	CreatedAt time.Time `json:"created_at"`
	// KeyID names the key that signs the manifest (KeyID of its public key).
	KeyID string `json:"key_id"`
}

// Filters are the export's query, carried so a reader knows what the file is
// a selection of. Verify checks each row against them and judges the links
// between a token's rows by what they keep (Filters.KeepWholeChains).
type Filters struct {
	Since         string   `json:"since,omitempty"` // RFC 3339
	Until         string   `json:"until,omitempty"` // RFC 3339
	Types         []string `json:"types,omitempty"`
	TokenID       string   `json:"token_id,omitempty"`
	WorkspaceID   string   `json:"workspace_id,omitempty"`
	DeploymentID  string   `json:"deployment_id,omitempty"`
	ActorTokenID  string   `json:"actor_token_id,omitempty"`
	AfterSequence uint64   `json:"after_sequence,omitempty"`
}

// Chain is the part of one token's hash chain an export holds: its first
// row follows PrevHash ("" when it starts at TokenCreated), its last row's
// hash is Head. Knowing both ends, a reader sees a row cut from either end
// of the file, which the links between rows alone cannot show.
type Chain struct {
	TokenID  string `json:"token_id"`
	PrevHash string `json:"prev_hash"`
	Head     string `json:"head"`
	Rows     int64  `json:"rows"`
}

// Summary gathers what a manifest says about the rows, as they are written,
// so a streaming export can fill its manifest at the end. It holds one entry
// per token, never the rows: the chain's head as a 32-byte hash and its row
// count, and its start only where the chain does not start in the file (a
// full export's chains all start at TokenCreated). About 120 bytes a token.
// The zero Summary is ready to use.
type Summary struct {
	rows        int64
	first, last uint64
	chains      map[string]chainEnds
	// prevs holds the starts of chains that begin mid-history, by
	// chainEnds.prev-1.
	prevs [][32]byte
	// text holds, as given, the chains of tokens whose rows carry hashes
	// that are not 64 hex characters (the ledger writes none such).
	text map[string]*Chain
}

type chainEnds struct {
	head [32]byte
	rows int64
	prev int32 // 0: the chain starts at TokenCreated (prev_hash ""); else prevs[prev-1]
}

func (s *Summary) chainOf(token string, c chainEnds) Chain {
	ch := Chain{TokenID: token, Head: hex.EncodeToString(c.head[:]), Rows: c.rows}
	if c.prev > 0 {
		ch.PrevHash = hex.EncodeToString(s.prevs[c.prev-1][:])
	}
	return ch
}

func parseHash(s string) ([32]byte, bool) {
	var h [32]byte
	if len(s) != 2*len(h) || strings.ToLower(s) != s {
		return h, false
	}
	_, err := hex.Decode(h[:], []byte(s))
	return h, err == nil
}

// Add counts r, the next row of the file.
func (s *Summary) Add(r Row) {
	if s.chains == nil {
		s.chains = make(map[string]chainEnds)
	}
	seq := uint64(r.Sequence)
	if s.rows == 0 {
		s.first = seq
	}
	s.last = seq
	s.rows++
	if t := s.text[r.TokenID]; t != nil {
		t.Head = r.Hash
		t.Rows++
		return
	}
	c, seen := s.chains[r.TokenID]
	head, ok := parseHash(r.Hash)
	var prev [32]byte
	if !seen && r.PrevHash != "" {
		var okPrev bool
		prev, okPrev = parseHash(r.PrevHash)
		ok = ok && okPrev
	}
	if !ok {
		t := &Chain{TokenID: r.TokenID, PrevHash: r.PrevHash, Head: r.Hash, Rows: 1}
		if seen {
			t.PrevHash, t.Rows = s.chainOf(r.TokenID, c).PrevHash, c.rows+1
			delete(s.chains, r.TokenID)
		}
		if s.text == nil {
			s.text = make(map[string]*Chain)
		}
		s.text[r.TokenID] = t
		return
	}
	if !seen && r.PrevHash != "" {
		s.prevs = append(s.prevs, prev)
		c.prev = int32(len(s.prevs))
	}
	c.head = head
	c.rows++
	s.chains[r.TokenID] = c
}

// Rows is the number of rows added.
func (s *Summary) Rows() int64 { return s.rows }

// tokens returns the tokens seen, sorted.
func (s *Summary) tokens() []string {
	out := make([]string, 0, len(s.chains)+len(s.text))
	for t := range s.chains {
		out = append(out, t)
	}
	for t := range s.text {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

func (s *Summary) chain(token string) Chain {
	if t := s.text[token]; t != nil {
		return *t
	}
	return s.chainOf(token, s.chains[token])
}

// Chains returns each token's chain, sorted by token id.
func (s *Summary) Chains() []Chain {
	tokens := s.tokens()
	out := make([]Chain, len(tokens))
	for i, t := range tokens {
		out[i] = s.chain(t)
	}
	return out
}

// writeChains writes each token's chain as Chain's JSON, sorted by token id,
// one per line: the manifest's chains without a []Chain or the whole list in
// memory.
func (s *Summary) writeChains(w io.Writer) error {
	var line []byte
	for i, t := range s.tokens() {
		line = line[:0]
		if i > 0 {
			line = append(line, ',')
		}
		line = append(line, "\n      "...)
		c := s.chain(t)
		line = append(line, `{"token_id":`...)
		line = domain.AppendJSONString(line, c.TokenID, false)
		line = append(line, `,"prev_hash":`...)
		line = domain.AppendJSONString(line, c.PrevHash, false)
		line = append(line, `,"head":`...)
		line = domain.AppendJSONString(line, c.Head, false)
		line = append(line, `,"rows":`...)
		line = strconv.AppendInt(line, c.Rows, 10)
		line = append(line, '}')
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
	return nil
}

// Fill sets m's row count, first and last sequence and chains.
func (s *Summary) Fill(m *Manifest) {
	m.Rows, m.FirstSequence, m.LastSequence, m.Chains = s.rows, s.first, s.last, s.Chains()
}

// Export writes an export file and keeps what its manifest needs: the
// Summary of its rows and the SHA-256 of its bytes.
type Export struct {
	format  Format
	w       Writer
	sha     hash.Hash
	summary Summary
	closed  bool
}

// NewExport starts an export file of format f on w.
func NewExport(f Format, w io.Writer) (*Export, error) {
	sha := sha256.New()
	fw, err := NewWriter(f, io.MultiWriter(w, sha))
	if err != nil {
		return nil, err
	}
	return &Export{format: f, w: fw, sha: sha}, nil
}

// Write writes the next row.
func (e *Export) Write(r Row) error {
	if e.closed {
		return errClosed
	}
	if err := e.w.Write(r); err != nil {
		return err
	}
	e.summary.Add(r)
	return nil
}

// Close finishes the file.
func (e *Export) Close() error {
	if e.closed {
		return errClosed
	}
	if err := e.w.Close(); err != nil {
		return err
	}
	e.closed = true
	e.w = nil // its buffers (a Parquet row group, a compressor) are not needed for the manifest
	return nil
}

// Manifest returns m with what the export knows filled in: format, rows,
// sequences, chains and SHA-256. The caller sets the rest (organization,
// filters, stream sequence, created_at, key_id). Call it after Close.
func (e *Export) Manifest(m Manifest) (Manifest, error) {
	if !e.closed {
		return Manifest{}, errors.New("export manifest: the file is not finished (call Close first)")
	}
	m.Format = e.format
	e.summary.Fill(&m)
	m.SHA256 = hex.EncodeToString(e.sha.Sum(nil))
	return m, nil
}

// WriteSignedManifest writes the manifest file of the finished export to w
// as it makes it, with the chains straight from the export's summary: an
// export over hundreds of thousands of tokens holds neither a []Chain nor
// the file's tens of megabytes. It returns m as filled in and signed, without
// the chains. Call it after Close.
func (e *Export) WriteSignedManifest(w io.Writer, m Manifest, key ed25519.PrivateKey) (Manifest, error) {
	if !e.closed {
		return Manifest{}, errors.New("export manifest: the file is not finished (call Close first)")
	}
	m.Format = e.format
	m.Rows, m.FirstSequence, m.LastSequence = e.summary.rows, e.summary.first, e.summary.last
	m.SHA256 = hex.EncodeToString(e.sha.Sum(nil))
	m.Chains = nil
	return m, writeSignedManifest(w, m, key, &e.summary)
}

// Errors of OpenManifest, for errors.Is.
var (
	ErrBadSignature = errors.New("manifest signature does not verify")
	ErrUntrustedKey = errors.New("manifest is not signed by the trusted key")
)

// signedFile is the manifest file: the manifest, its signature and the key
// that made it. Signed is kept as raw bytes: the signature covers them
// exactly as they stand in the file, so nothing re-encodes them.
type signedFile struct {
	Signed    json.RawMessage `json:"signed"`
	Signature string          `json:"signature"`
	PublicKey string          `json:"public_key"`
}

// SignManifest returns the manifest file: m and its signature by key (see
// writeSignedManifest).
func SignManifest(m Manifest, key ed25519.PrivateKey) ([]byte, error) {
	var sum Summary
	for _, c := range m.Chains {
		sum.text = mapWith(sum.text, c)
	}
	m.Chains = nil
	var b bytes.Buffer
	err := writeSignedManifest(&b, m, key, &sum)
	return b.Bytes(), err
}

func mapWith(m map[string]*Chain, c Chain) map[string]*Chain {
	if m == nil {
		m = make(map[string]*Chain)
	}
	m[c.TokenID] = &c
	return m
}

// signatureOptions: manifests are signed with Ed25519ph (RFC 8032's
// pre-hashed Ed25519, over the SHA-512 of the signed bytes) rather than pure
// Ed25519, which reads its message twice and so would need the whole
// manifest (one line per token, tens of megabytes for a large export) in
// memory. Prehashing lets it be signed as it is written.
var signatureOptions = &ed25519.Options{Hash: crypto.SHA512}

// writeSignedManifest writes the manifest file, m with chains' chains, to w:
// indented for people to read, one chain per line, and the "signed" value
// signed as it passes, over its exact bytes in the file.
func writeSignedManifest(w io.Writer, m Manifest, key ed25519.PrivateKey, chains *Summary) error {
	if len(key) != ed25519.PrivateKeySize {
		return errors.New("sign manifest: not an Ed25519 private key")
	}
	m.Chains = nil
	head, err := json.MarshalIndent(m, "  ", "  ")
	if err != nil {
		return fmt.Errorf("sign manifest: %w", err)
	}
	const chainsKey = `"chains": null`
	at := bytes.Index(head, []byte(chainsKey))
	if at < 0 {
		return errors.New("sign manifest: no chains field") // the struct has one: cannot happen
	}
	out := bufio.NewWriterSize(w, 64<<10)
	digest := sha512.New()
	signed := io.MultiWriter(out, digest)
	out.WriteString("{\n  \"signed\": ")
	signed.Write(head[:at])
	io.WriteString(signed, `"chains": [`)
	if err := chains.writeChains(signed); err != nil {
		return err
	}
	if len(chains.chains)+len(chains.text) > 0 {
		io.WriteString(signed, "\n    ")
	}
	io.WriteString(signed, "]")
	signed.Write(head[at+len(chainsKey):])
	sig, err := key.Sign(nil, digest.Sum(nil), signatureOptions)
	if err != nil {
		return fmt.Errorf("sign manifest: %w", err)
	}
	out.WriteString(",\n  \"signature\": ")
	out.Write(mustJSON(base64.StdEncoding.EncodeToString(sig)))
	out.WriteString(",\n  \"public_key\": ")
	out.Write(mustJSON(FormatPublicKey(key.Public().(ed25519.PublicKey))))
	out.WriteString("\n}\n")
	return out.Flush() // bufio keeps the first write error and returns it here
}

func mustJSON(s string) []byte {
	b, _ := json.Marshal(s) // a string: cannot fail
	return b
}

// OpenManifest checks a manifest file's signature against the trusted key
// and returns the manifest. It refuses a manifest signed by any other key
// (ErrUntrustedKey), a signature that does not verify (ErrBadSignature), and
// a file that is not a signed manifest.
func OpenManifest(b []byte, trusted ed25519.PublicKey) (Manifest, error) {
	m, sf, err := parseManifest(b)
	if err != nil {
		return Manifest{}, err
	}
	return m, checkSignature(sf, m, trusted)
}

// parseManifest reads a manifest file without checking its signature.
func parseManifest(b []byte) (Manifest, signedFile, error) {
	var sf signedFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sf); err != nil {
		return Manifest{}, sf, fmt.Errorf("not a signed manifest file: %w", err)
	}
	if len(sf.Signed) == 0 || sf.Signature == "" || sf.PublicKey == "" {
		return Manifest{}, sf, errors.New(`not a signed manifest file: it needs "signed", "signature" and "public_key"`)
	}
	var m Manifest
	if err := json.Unmarshal(sf.Signed, &m); err != nil {
		return Manifest{}, sf, fmt.Errorf("the signed manifest cannot be read: %w", err)
	}
	return m, sf, nil
}

func checkSignature(sf signedFile, m Manifest, trusted ed25519.PublicKey) error {
	if len(trusted) != ed25519.PublicKeySize {
		return errors.New("verify manifest: no trusted Ed25519 public key given")
	}
	pub, err := ParsePublicKey(sf.PublicKey)
	if err != nil {
		return fmt.Errorf("manifest's public_key: %w", err)
	}
	if !pub.Equal(trusted) {
		return fmt.Errorf("%w: manifest is signed by key %s, not the trusted key %s", ErrUntrustedKey, KeyID(pub), KeyID(trusted))
	}
	sig, err := base64.StdEncoding.DecodeString(sf.Signature)
	digest := sha512.Sum512(sf.Signed)
	if err != nil || ed25519.VerifyWithOptions(trusted, digest[:], sig, signatureOptions) != nil {
		return fmt.Errorf("%w: the signed manifest was changed after signing, or the signature is damaged", ErrBadSignature)
	}
	if m.KeyID != "" && m.KeyID != KeyID(trusted) {
		// Signed, so the signer's own mistake, not tampering; still wrong.
		return fmt.Errorf("manifest names key_id %s but is signed by key %s", m.KeyID, KeyID(trusted))
	}
	return nil
}
