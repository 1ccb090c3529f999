package projections

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// A snapshot is the whole token view at one stream sequence, so a restart
// loads it and replays only the events after it. It lives in a file under the
// ledger's --data directory (one per stream), written to a temporary name,
// synced and renamed, so a crash never leaves half a snapshot in its place.
//
// Layout: the magic "TLSNAP\x00\x01", then varint-encoded fields (header,
// tokens, retired secrets, idempotency keys), then SHA-256 of everything
// before it. A snapshot is refused, and the caller rebuilds from the stream,
// when the magic, format, checksum or any field is wrong, or (see Check) when
// it was made from another stream or from beyond the stream's end.
const snapshotMagic = "TLSNAP\x00\x01"

// SnapshotFormat is bumped whenever the layout changes; older files are then
// refused as incompatible, except format 3, which lacks only what format 4
// added and is read as format 4 with it unknown.
const SnapshotFormat = 4 // 2: tokens carry their hash chain's head; 3: and when they were last used; 4: and the version of their last change

// formatWithoutChange is the format before tokens carried the version of
// their last change; its tokens restore with it unknown (see
// domain.TokenState.ChangedVersion).
const formatWithoutChange = 3

// ErrBadSnapshot marks a snapshot that cannot be used.
var ErrBadSnapshot = errors.New("snapshot unusable")

// SnapshotHeader says what a snapshot covers.
type SnapshotHeader struct {
	Stream        string
	StreamCreated time.Time // tells a stream from a later one of the same name
	Sequence      uint64
}

// Check refuses a snapshot that was not made from this stream or claims more
// than the stream holds.
func (h SnapshotHeader) Check(stream string, created time.Time, last uint64) error {
	switch {
	case h.Stream != stream:
		return fmt.Errorf("%w: made from stream %q, not %q", ErrBadSnapshot, h.Stream, stream)
	case !h.StreamCreated.Equal(created):
		return fmt.Errorf("%w: made from an earlier stream %q (created %s, this one %s)", ErrBadSnapshot, stream, h.StreamCreated.Format(time.RFC3339Nano), created.Format(time.RFC3339Nano))
	case h.Sequence > last:
		return fmt.Errorf("%w: covers sequence %d but the stream ends at %d", ErrBadSnapshot, h.Sequence, last)
	}
	return nil
}

type savedEntry struct {
	token       *domain.Token // frozen while the capture holds (see capture)
	lastSeq     uint64
	quarantined bool
	lastUsed    int64
}

type savedRetired struct {
	hash   domain.SecretHash
	org    string
	id     string
	reason Outcome
}

type savedKeyed struct {
	eventID string
	Applied
}

// captured is the view at one moment, sorted, ready to encode.
type captured struct {
	seq      uint64
	rejected int
	// uses is the view's count of last-use stamps at the capture.
	uses    uint64
	entries []savedEntry
	retired []savedRetired
	keyed   []savedKeyed
	indexes []string // derived indexes, for Digest only
}

// capture takes the view at one moment. It holds the lock only to collect
// pointers, not to copy tokens (which change in place): until release is
// called, Apply changes a copy of a token instead of the token itself, so the
// ones collected stay as they were. Verification is not held up while a
// large view is encoded.
func (v *Tokens) capture(withIndexes bool) (c captured, release func()) {
	v.mu.Lock()
	v.capturing++
	c.seq, c.rejected, c.uses = v.seq, v.rejected, v.uses.Load()
	c.entries = make([]savedEntry, 0, len(v.byKey))
	for _, e := range v.byKey {
		c.entries = append(c.entries, savedEntry{e.token, e.lastSeq, e.quarantined, e.lastUsed.Load()})
	}
	c.retired = make([]savedRetired, 0, len(v.retired))
	for h, r := range v.retired {
		c.retired = append(c.retired, savedRetired{h, r.ent.token.OrganizationID(), r.ent.token.ID(), r.reason})
	}
	c.keyed = make([]savedKeyed, 0, len(v.keyed))
	for id, a := range v.keyed {
		c.keyed = append(c.keyed, savedKeyed{id, a})
	}
	if withIndexes {
		for hash, e := range v.byHash {
			c.indexes = append(c.indexes, fmt.Sprintf("hash %x %s/%s", hash, e.token.OrganizationID(), e.token.ID()))
		}
		for p, set := range v.byPlace {
			for e := range set {
				c.indexes = append(c.indexes, fmt.Sprintf("place %s %d %s %s/%s", p.org, p.kind, p.id, e.token.OrganizationID(), e.token.ID()))
			}
		}
	}
	v.mu.Unlock()
	release = func() {
		v.mu.Lock()
		v.capturing--
		v.mu.Unlock()
	}
	// Sorted, so equal views give equal bytes (Digest relies on it).
	slices.SortFunc(c.entries, func(a, b savedEntry) int {
		return cmp.Or(strings.Compare(a.token.OrganizationID(), b.token.OrganizationID()), strings.Compare(a.token.ID(), b.token.ID()))
	})
	slices.SortFunc(c.retired, func(a, b savedRetired) int { return bytes.Compare(a.hash[:], b.hash[:]) })
	slices.SortFunc(c.keyed, func(a, b savedKeyed) int { return strings.Compare(a.eventID, b.eventID) })
	slices.Sort(c.indexes)
	return c, release
}

// WriteSnapshot writes the view to w and returns the sequence it covers.
// Events keep being applied while the bytes are written (see capture).
func (v *Tokens) WriteSnapshot(w io.Writer, stream string, streamCreated time.Time) (uint64, error) {
	seq, _, err := v.writeSnapshot(w, stream, streamCreated)
	return seq, err
}

// writeSnapshot is WriteSnapshot, also returning the count of last-use
// stamps the snapshot holds.
func (v *Tokens) writeSnapshot(w io.Writer, stream string, streamCreated time.Time) (seq, uses uint64, err error) {
	c, release := v.capture(false)
	defer release()
	return c.seq, c.uses, c.write(w, stream, streamCreated, true)
}

// write encodes the capture. withUse false writes every last use as
// unknown: Digest compares what the stream decides, and no event records a
// use.
func (c captured) write(w io.Writer, stream string, streamCreated time.Time, withUse bool) error {
	sum := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, sum), 1<<20)
	enc := &encoder{w: bw}
	enc.raw([]byte(snapshotMagic))
	enc.uint(SnapshotFormat)
	enc.str(stream)
	enc.time(streamCreated)
	enc.uint(c.seq)
	enc.uint(uint64(c.rejected))
	enc.uint(uint64(len(c.entries)))
	for _, e := range c.entries {
		enc.token(e.token.State())
		enc.uint(e.lastSeq)
		enc.bool(e.quarantined)
		if withUse {
			enc.uint(uint64(max(e.lastUsed, 0)))
		} else {
			enc.uint(0)
		}
	}
	enc.uint(uint64(len(c.retired)))
	for _, r := range c.retired {
		enc.raw(r.hash[:])
		enc.str(r.org)
		enc.str(r.id)
		enc.str(string(r.reason))
	}
	enc.uint(uint64(len(c.keyed)))
	for _, k := range c.keyed {
		enc.str(k.eventID)
		enc.uint(k.Sequence)
		enc.str(k.TokenID)
		enc.str(string(k.Type))
		enc.str(k.RequestHash)
	}
	if enc.err == nil {
		enc.err = bw.Flush()
	}
	if enc.err != nil {
		return fmt.Errorf("write snapshot: %w", enc.err)
	}
	if _, err := w.Write(sum.Sum(nil)); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// Digest is a SHA-256 over everything the view holds at one moment, in a
// canonical order: what a snapshot saves, and the indexes derived from it (by
// secret hash, by workspace and deployment), so that two views are equal
// exactly when their digests are, indexes included. When tokens were last
// used is left out: it is not in the stream, so a view rebuilt from the
// stream equals the live one without it.
func (v *Tokens) Digest() [sha256.Size]byte {
	c, release := v.capture(true)
	defer release()
	h := sha256.New()
	_ = c.write(h, "", time.Time{}, false) // a hash.Hash never fails to write
	for _, l := range c.indexes {
		_, _ = io.WriteString(h, l+"\n")
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}

// ReadSnapshot decodes a snapshot into a new view. Any fault gives an error
// wrapping ErrBadSnapshot, never a partial view.
func ReadSnapshot(r io.Reader) (*Tokens, SnapshotHeader, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, SnapshotHeader{}, fmt.Errorf("read snapshot: %w", err)
	}
	return decodeSnapshot(b)
}

func decodeSnapshot(b []byte) (*Tokens, SnapshotHeader, error) {
	if len(b) < len(snapshotMagic)+sha256.Size || string(b[:len(snapshotMagic)]) != snapshotMagic {
		return nil, SnapshotHeader{}, fmt.Errorf("%w: not a TokenLedger snapshot", ErrBadSnapshot)
	}
	body, want := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], want) {
		return nil, SnapshotHeader{}, fmt.Errorf("%w: checksum does not match (corrupt or truncated)", ErrBadSnapshot)
	}
	d := &decoder{b: body[len(snapshotMagic):]}
	f := d.uint()
	if f != SnapshotFormat && f != formatWithoutChange {
		return nil, SnapshotHeader{}, fmt.Errorf("%w: format %d, this ledger reads %d and %d", ErrBadSnapshot, f, formatWithoutChange, SnapshotFormat)
	}
	d.changed = f >= 4
	h := SnapshotHeader{Stream: d.str(), StreamCreated: d.time(), Sequence: d.uint()}
	v := NewTokens()
	v.seq = h.Sequence
	v.rejected = int(d.uint())
	n := d.count()
	v.byKey = make(map[tokenKey]*entry, n)
	v.byHash = make(map[domain.SecretHash]*entry, n)
	for range n {
		t := domain.RestoreToken(d.token())
		ent := &entry{token: t, lastSeq: d.uint(), quarantined: d.bool()}
		ent.lastUsed.Store(int64(d.uint()))
		key := tokenKey{t.OrganizationID(), t.ID()}
		v.byKey[key] = ent
		// A snapshot holds each token's last sequence, so an organization's
		// is the greatest of its tokens' (a message refused for a token the
		// view never knew is not kept: a conflict on it ends at the
		// organization's next event).
		v.orgLast[key.org] = max(v.orgLast[key.org], ent.lastSeq)
		v.reindex(ent, indexed{}, "")
	}
	// A deployment belongs to the workspace of its first token; the
	// snapshot keeps tokens, not their order, so take the earliest.
	first := make(map[tokenKey]*domain.Token)
	for _, ent := range v.byKey {
		t := ent.token
		if t.Scope() != domain.ScopeDeployment {
			continue
		}
		key := tokenKey{t.OrganizationID(), t.DeploymentID()}
		if f := first[key]; f == nil || t.CreatedAt().Before(f.CreatedAt()) {
			first[key] = t
		}
	}
	for _, t := range first {
		v.bindDeployment(t)
	}
	nr := d.count()
	v.retired = make(map[domain.SecretHash]retiredSecret, nr)
	for range nr {
		var hash domain.SecretHash
		copy(hash[:], d.raw(len(hash)))
		key := tokenKey{d.common(), d.str()}
		r := retiredSecret{ent: v.byKey[key], hash: hash, reason: Outcome(d.common())}
		if r.ent == nil && d.err == nil {
			d.err = fmt.Errorf("retired secret of unknown token %s", key.id)
		}
		v.retired[hash] = r
	}
	for range d.count() {
		id := d.str()
		v.keyed[id] = Applied{Sequence: d.uint(), TokenID: d.str(), Type: domain.EventType(d.str()), RequestHash: d.str()}
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = errors.New("trailing bytes")
	}
	if d.err != nil {
		return nil, SnapshotHeader{}, fmt.Errorf("%w: %v", ErrBadSnapshot, d.err)
	}
	return v, h, nil
}

// SaveSnapshot writes the view to path atomically and returns the sequence it
// covers.
func (v *Tokens) SaveSnapshot(path, stream string, streamCreated time.Time) (uint64, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	seq, uses, err := v.writeSnapshot(tmp, stream, streamCreated)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		return 0, fmt.Errorf("save snapshot %s: %w", path, err)
	}
	v.usesSaved.Store(uses)
	return seq, nil
}

// UsesUnsaved reports whether tokens were used since the last snapshot file
// was saved (or the view was loaded), so that a snapshot is worth saving
// even though no event came: a restart then keeps when tokens were last
// used, to within the snapshot interval.
func (v *Tokens) UsesUnsaved() bool { return v.uses.Load() != v.usesSaved.Load() }

// LoadSnapshot reads a snapshot file; os.ErrNotExist if there is none.
func LoadSnapshot(path string) (*Tokens, SnapshotHeader, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, SnapshotHeader{}, err
	}
	return decodeSnapshot(b)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// encoder writes varints and length-prefixed bytes, keeping the first error.
type encoder struct {
	w   *bufio.Writer
	buf [binary.MaxVarintLen64]byte
	err error
}

func (e *encoder) raw(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

func (e *encoder) uint(n uint64) { e.raw(e.buf[:binary.PutUvarint(e.buf[:], n)]) }

func (e *encoder) str(s string) {
	e.uint(uint64(len(s)))
	if e.err == nil {
		_, e.err = e.w.WriteString(s)
	}
}

func (e *encoder) bool(b bool) {
	if b {
		e.uint(1)
	} else {
		e.uint(0)
	}
}

// time writes 0 for the zero time, else 1 and Unix nanoseconds.
func (e *encoder) time(t time.Time) {
	if t.IsZero() {
		e.uint(0)
		return
	}
	e.uint(1)
	e.raw(e.buf[:binary.PutVarint(e.buf[:], t.UnixNano())])
}

func (e *encoder) token(s domain.TokenState) {
	e.str(s.ID)
	e.str(s.OrganizationID)
	e.str(string(s.Scope))
	e.str(s.WorkspaceID)
	e.str(s.DeploymentID)
	e.str(s.Name)
	e.str(s.Description)
	e.str(string(s.Role))
	ws := make([]string, 0, len(s.WorkspaceRoles))
	for w := range s.WorkspaceRoles {
		ws = append(ws, w)
	}
	slices.Sort(ws)
	e.uint(uint64(len(ws)))
	for _, w := range ws {
		e.str(w)
		e.str(string(s.WorkspaceRoles[w]))
	}
	e.uint(uint64(s.ExpirationDays))
	e.time(s.ExpiresAt)
	e.time(s.CreatedAt)
	e.time(s.UpdatedAt)
	e.time(s.RotatedAt)
	e.time(s.DeletedAt)
	e.uint(s.Version)
	e.raw(s.SecretHash[:])
	e.str(s.Fingerprint)
	e.raw(s.ChainHead[:])
	e.uint(s.ChangedVersion)
}

// decoder reads what encoder wrote; after the first fault every read returns
// zero values and err says what went wrong.
type decoder struct {
	b   []byte
	err error
	// values holds strings shared by many tokens (organizations, scopes,
	// roles, workspaces), so a load allocates each once.
	values map[string]string
	// changed: tokens carry their ChangedVersion (format 4 on).
	changed bool
}

// common reads a string that many tokens share.
func (d *decoder) common() string {
	b := d.raw(d.count())
	if s, ok := d.values[string(b)]; ok {
		return s
	}
	if d.values == nil {
		d.values = make(map[string]string)
	}
	s := string(b)
	d.values[s] = s
	return s
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("malformed %s", what)
	}
	d.b = nil
}

func (d *decoder) uint() uint64 {
	n, k := binary.Uvarint(d.b)
	if k <= 0 {
		d.fail("number")
		return 0
	}
	d.b = d.b[k:]
	return n
}

// count reads a length and refuses one larger than the bytes left could hold.
func (d *decoder) count() int {
	n := d.uint()
	if n > uint64(len(d.b)) {
		d.fail("count")
		return 0
	}
	return int(n)
}

func (d *decoder) raw(n int) []byte {
	if n > len(d.b) {
		d.fail("field")
		return make([]byte, n)
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) str() string { return string(d.raw(d.count())) }

func (d *decoder) bool() bool { return d.uint() == 1 }

func (d *decoder) time() time.Time {
	if d.uint() == 0 {
		return time.Time{}
	}
	n, k := binary.Varint(d.b)
	if k <= 0 {
		d.fail("time")
		return time.Time{}
	}
	d.b = d.b[k:]
	return time.Unix(0, n).UTC()
}

func (d *decoder) token() domain.TokenState {
	s := domain.TokenState{
		ID: d.str(), OrganizationID: d.common(), Scope: domain.Scope(d.common()),
		WorkspaceID: d.common(), DeploymentID: d.common(), Name: d.str(), Description: d.str(),
		Role: domain.Role(d.common()),
	}
	if n := d.count(); n > 0 {
		s.WorkspaceRoles = make(map[string]domain.Role, n)
		for range n {
			w := d.common()
			s.WorkspaceRoles[w] = domain.Role(d.common())
		}
	}
	s.ExpirationDays = int(d.uint())
	s.ExpiresAt, s.CreatedAt, s.UpdatedAt, s.RotatedAt, s.DeletedAt = d.time(), d.time(), d.time(), d.time(), d.time()
	s.Version = d.uint()
	copy(s.SecretHash[:], d.raw(len(s.SecretHash)))
	s.Fingerprint = d.str()
	copy(s.ChainHead[:], d.raw(len(s.ChainHead)))
	if d.changed {
		s.ChangedVersion = d.uint()
	}
	return s
}
