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
// per token, never the rows. The zero Summary is ready to use.
type Summary struct {
	rows        int64
	first, last uint64
	chains      map[string]*Chain
}

// Add counts r, the next row of the file.
func (s *Summary) Add(r Row) {
	if s.chains == nil {
		s.chains = make(map[string]*Chain)
	}
	seq := uint64(r.Sequence)
	if s.rows == 0 {
		s.first = seq
	}
	s.last = seq
	s.rows++
	c := s.chains[r.TokenID]
	if c == nil {
		c = &Chain{TokenID: r.TokenID, PrevHash: r.PrevHash}
		s.chains[r.TokenID] = c
	}
	c.Head = r.Hash
	c.Rows++
}

// Rows is the number of rows added.
func (s *Summary) Rows() int64 { return s.rows }

// Chains returns each token's chain, sorted by token id.
func (s *Summary) Chains() []Chain {
	out := make([]Chain, 0, len(s.chains))
	for _, c := range s.chains {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b Chain) int { return strings.Compare(a.TokenID, b.TokenID) })
	return out
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
	if err := e.w.Write(r); err != nil {
		return err
	}
	e.summary.Add(r)
	return nil
}

// Close finishes the file.
func (e *Export) Close() error {
	if err := e.w.Close(); err != nil {
		return err
	}
	e.closed = true
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
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("sign manifest: not an Ed25519 private key")
	}
	if m.Chains == nil {
		m.Chains = []Chain{} // "[]", not null: the file has no chains
	}
	signed, err := json.MarshalIndent(m, "  ", "  ")
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	pub := key.Public().(ed25519.PublicKey)
	var b bytes.Buffer
	b.WriteString("{\n  \"signed\": ")
	b.Write(signed)
	b.WriteString(",\n  \"signature\": ")
	b.Write(mustJSON(base64.StdEncoding.EncodeToString(ed25519.Sign(key, signed))))
	b.WriteString(",\n  \"public_key\": ")
	b.Write(mustJSON(FormatPublicKey(pub)))
	b.WriteString("\n}\n")
	return b.Bytes(), nil
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
