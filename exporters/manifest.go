package exporters

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
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
// a selection of. This package does not interpret them.
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
// per token, never the rows: the chain's two ends as 32-byte hashes, about
// 150 bytes a token. The zero Summary is ready to use.
type Summary struct {
	rows        int64
	first, last uint64
	chains      map[string]chainEnds
	// text holds, as given, the chains of tokens whose rows carry hashes
	// that are not 64 hex characters (the ledger writes none such).
	text map[string]*Chain
}

type chainEnds struct {
	prev, head [32]byte
	hasPrev    bool // false: the chain starts at TokenCreated (prev_hash "")
	rows       int64
}

func (c chainEnds) chain(token string) Chain {
	ch := Chain{TokenID: token, Head: hex.EncodeToString(c.head[:]), Rows: c.rows}
	if c.hasPrev {
		ch.PrevHash = hex.EncodeToString(c.prev[:])
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
	if !seen && r.PrevHash != "" {
		var okPrev bool
		c.prev, okPrev = parseHash(r.PrevHash)
		c.hasPrev, ok = true, ok && okPrev
	}
	if !ok {
		t := &Chain{TokenID: r.TokenID, PrevHash: r.PrevHash, Head: r.Hash, Rows: 1}
		if seen {
			t.PrevHash, t.Rows = c.chain(r.TokenID).PrevHash, c.rows+1
			delete(s.chains, r.TokenID)
		}
		if s.text == nil {
			s.text = make(map[string]*Chain)
		}
		s.text[r.TokenID] = t
		return
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
	return s.chains[token].chain(token)
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

// appendChains appends each token's chain as Chain's JSON, sorted by token
// id, one per line: the manifest's chains without a []Chain in between.
func (s *Summary) appendChains(b []byte) []byte {
	for i, t := range s.tokens() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, "\n      "...)
		c := s.chain(t)
		b = append(b, `{"token_id":`...)
		b = appendJSONString(b, c.TokenID)
		b = append(b, `,"prev_hash":`...)
		b = appendJSONString(b, c.PrevHash)
		b = append(b, `,"head":`...)
		b = appendJSONString(b, c.Head)
		b = append(b, `,"rows":`...)
		b = strconv.AppendInt(b, c.Rows, 10)
		b = append(b, '}')
	}
	return b
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

// SignedManifest is Manifest then SignManifest, with the chains written
// straight from the export's summary: an export over hundreds of thousands
// of tokens never holds them as a []Chain.
func (e *Export) SignedManifest(m Manifest, key ed25519.PrivateKey) ([]byte, error) {
	if !e.closed {
		return nil, errors.New("export manifest: the file is not finished (call Close first)")
	}
	m.Format = e.format
	m.Rows, m.FirstSequence, m.LastSequence = e.summary.rows, e.summary.first, e.summary.last
	m.SHA256 = hex.EncodeToString(e.sha.Sum(nil))
	return signManifest(m, key, len(e.summary.chains)+len(e.summary.text), e.summary.appendChains)
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

// SignManifest returns the manifest file: m and its Ed25519 signature by key.
// The file is indented for people to read; the signature covers the bytes of
// the "signed" value exactly as they appear in it.
func SignManifest(m Manifest, key ed25519.PrivateKey) ([]byte, error) {
	var sum Summary
	for _, c := range m.Chains {
		sum.text = mapWith(sum.text, c)
	}
	m.Chains = nil
	return signManifest(m, key, len(sum.text), sum.appendChains)
}

func mapWith(m map[string]*Chain, c Chain) map[string]*Chain {
	if m == nil {
		m = make(map[string]*Chain)
	}
	m[c.TokenID] = &c
	return m
}

// signManifest writes the manifest file in one buffer, sized up front, with
// one chain per line (an export of a million events may hold two hundred
// thousand), and signs the "signed" value in place.
func signManifest(m Manifest, key ed25519.PrivateKey, chains int, appendChains func([]byte) []byte) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("sign manifest: not an Ed25519 private key")
	}
	m.Chains = nil
	head, err := json.MarshalIndent(m, "  ", "  ")
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	const chainsKey = `"chains": null`
	at := bytes.Index(head, []byte(chainsKey))
	if at < 0 {
		return nil, errors.New("sign manifest: no chains field") // the struct has one: cannot happen
	}
	b := make([]byte, 0, len(head)+chains*200+256)
	b = append(b, "{\n  \"signed\": "...)
	start := len(b)
	b = append(b, head[:at]...)
	b = append(b, `"chains": [`...)
	b = appendChains(b)
	if chains > 0 {
		b = append(b, "\n    "...)
	}
	b = append(b, ']')
	b = append(b, head[at+len(chainsKey):]...)
	sig := ed25519.Sign(key, b[start:])
	b = append(b, ",\n  \"signature\": "...)
	b = append(b, mustJSON(base64.StdEncoding.EncodeToString(sig))...)
	b = append(b, ",\n  \"public_key\": "...)
	b = append(b, mustJSON(FormatPublicKey(key.Public().(ed25519.PublicKey)))...)
	b = append(b, "\n}\n"...)
	return b, nil
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
	if err != nil || !ed25519.Verify(trusted, sf.Signed, sig) {
		return fmt.Errorf("%w: the signed manifest was changed after signing, or the signature is damaged", ErrBadSignature)
	}
	if m.KeyID != "" && m.KeyID != KeyID(trusted) {
		// Signed, so the signer's own mistake, not tampering; still wrong.
		return fmt.Errorf("manifest names key_id %s but is signed by key %s", m.KeyID, KeyID(trusted))
	}
	return nil
}
