package domain

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
)

// A secret looks like  tlo_<43 base62 chars><6 base62 chars>
//
//   - the prefix names the scope (tlo_ organization, tlw_ workspace, tld_
//     deployment), so a secret scanner can match it with a tight regular
//     expression: tl[owd]_[0-9A-Za-z]{49};
//   - the 43 characters carry 256 bits from crypto/rand;
//   - the last 6 characters are a CRC-32 of everything before them, so a
//     mistyped or truncated string is rejected on its checksum alone, the
//     way GitHub's token format does: no lookup's answer is consulted (the
//     lookups still run, so that a malformed string takes as long as any
//     other bad one).
//
// Only SHA-256 of the whole string is ever stored. The secret has 256 bits of
// entropy, so a fast hash is enough: there is nothing to brute-force.
const (
	secretPrefixLen = 4
	secretBodyLen   = 43
	secretSumLen    = 6
	SecretLen       = secretPrefixLen + secretBodyLen + secretSumLen
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

var secretPrefixes = map[Scope]string{
	ScopeOrganization: "tlo_",
	ScopeWorkspace:    "tlw_",
	ScopeDeployment:   "tld_",
}

// ErrMalformedSecret: the string cannot be a TokenLedger secret (wrong prefix,
// length, alphabet or checksum). Callers answer it exactly like an unknown token.
var ErrMalformedSecret = errors.New("malformed token: wrong prefix, length or checksum")

// Secret is a token's plaintext. Every fmt verb prints it redacted, so it cannot
// leak through a log line, a %v or a panic; Reveal is the one way out, used once,
// to answer the create or rotate call. The value sits behind a pointer so that
// even a Secret inside another struct's unexported field, which fmt prints by
// reflection without calling Format, shows only an address.
type Secret struct{ value *string }

func newSecret(v string) Secret { return Secret{value: &v} }

// Reveal returns the plaintext.
func (s Secret) Reveal() string {
	if s.value == nil {
		return ""
	}
	return *s.value
}

func (s Secret) String() string   { return "[REDACTED]" }
func (s Secret) GoString() string { return "domain.Secret{[REDACTED]}" }

// Format redacts the secret under every verb (%d, %x, %q ... included).
func (s Secret) Format(f fmt.State, verb rune) { _, _ = io.WriteString(f, "[REDACTED]") }

// MarshalJSON keeps a Secret out of JSON by accident; answers put Reveal() in
// their own field on purpose.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"[REDACTED]"`), nil }

// IsZero reports whether no secret was issued.
func (s Secret) IsZero() bool { return s.value == nil || *s.value == "" }

// SecretHash is SHA-256 of a secret, the only form of it the ledger keeps.
type SecretHash [sha256.Size]byte

func (h SecretHash) String() string { return hex.EncodeToString(h[:]) }

func (h SecretHash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

func (h *SecretHash) UnmarshalText(b []byte) error {
	var tmp SecretHash
	if len(b) != 2*len(tmp) {
		return fmt.Errorf("secret hash: want %d hex characters", 2*len(tmp))
	}
	if _, err := hex.Decode(tmp[:], b); err != nil {
		return fmt.Errorf("secret hash: %w", err)
	}
	*h = tmp
	return nil
}

// Hash returns the stored form of a secret string. A secret of the usual
// length is hashed from a stack copy, so verification does not allocate.
func Hash(secret string) SecretHash {
	if len(secret) <= SecretLen {
		var buf [SecretLen]byte
		n := copy(buf[:], secret)
		return sha256.Sum256(buf[:n])
	}
	return sha256.Sum256([]byte(secret))
}

// Fingerprint is a short, non-secret name for a secret: anyone holding the
// secret can compute it (`ledger token verify` prints it), nobody can go back
// from it to the secret or to the stored hash.
func Fingerprint(secret string) string {
	sum := sha256.Sum256([]byte("tokenledger fingerprint v1\x00" + secret))
	return hex.EncodeToString(sum[:8])
}

// NewSecret draws 256 bits from r and formats them as a secret for scope s.
func NewSecret(s Scope, r io.Reader) (Secret, error) {
	prefix, ok := secretPrefixes[s]
	if !ok {
		return Secret{}, fmt.Errorf("new secret: unknown scope %q", s)
	}
	var raw [32]byte
	if _, err := io.ReadFull(r, raw[:]); err != nil {
		return Secret{}, fmt.Errorf("new secret: read randomness: %w", err)
	}
	buf := make([]byte, 0, SecretLen)
	buf = append(buf, prefix...)
	body := []uint64{
		binary.BigEndian.Uint64(raw[0:]), binary.BigEndian.Uint64(raw[8:]),
		binary.BigEndian.Uint64(raw[16:]), binary.BigEndian.Uint64(raw[24:]),
	}
	buf = appendBase62(buf, body, secretBodyLen)
	sum := crc32.ChecksumIEEE(buf)
	buf = appendBase62(buf, []uint64{uint64(sum)}, secretSumLen)
	return newSecret(string(buf)), nil
}

// appendBase62 writes the number whose 64-bit limbs, most significant first,
// are n as exactly width base62 digits, most significant first, and leaves n
// at the quotient. Schoolbook division by 62, a limb at a time: every create
// and rotate makes a secret, and math/big's general division (allocating
// for each digit) was a visible part of a command's CPU.
func appendBase62(dst []byte, n []uint64, width int) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, width)...)
	for i := width - 1; i >= 0; i-- {
		var rem uint64
		for j := range n {
			n[j], rem = bits.Div64(rem, n[j], 62)
		}
		dst[start+i] = base62[rem]
	}
	return dst
}

// CheckSecretFormat validates prefix, length, alphabet and checksum without
// allocating, and returns the scope the prefix names. It runs before any
// lookup's answer is used. It does the same work whatever s is (it reads
// SecretLen bytes, padded or cut, and decides only at the end), so how long
// it takes says nothing about how a string is malformed; verification of a
// malformed string then costs what verification of any other bad one does.
func CheckSecretFormat(s string) (Scope, error) {
	var b [SecretLen]byte
	copy(b[:], s)
	var scope Scope
	switch [secretPrefixLen]byte(b[:secretPrefixLen]) {
	case [secretPrefixLen]byte{'t', 'l', 'o', '_'}:
		scope = ScopeOrganization
	case [secretPrefixLen]byte{'t', 'l', 'w', '_'}:
		scope = ScopeWorkspace
	case [secretPrefixLen]byte{'t', 'l', 'd', '_'}:
		scope = ScopeDeployment
	}
	var bad byte
	for _, c := range b[secretPrefixLen : secretPrefixLen+secretBodyLen] {
		bad |= base62Values[c]
	}
	var want uint64
	for _, c := range b[secretPrefixLen+secretBodyLen:] {
		d := base62Values[c]
		bad |= d
		want = want*62 + uint64(d)
	}
	sum := crc32Bytes(b[:secretPrefixLen+secretBodyLen])
	if len(s) != SecretLen || scope == "" || bad&0x80 != 0 || uint64(sum) != want {
		return "", ErrMalformedSecret
	}
	return scope, nil
}

// crc32Bytes is crc32.ChecksumIEEE, without the call through a function
// value that would make its argument escape (and a stack buffer allocate).
// It reads eight bytes a step (slicing-by-8, as package crc32 does for
// short inputs): every verification runs it, on every kind of secret.
func crc32Bytes(p []byte) uint32 {
	t := &crc32Slicing
	crc := ^uint32(0)
	for len(p) >= 8 {
		crc ^= uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24
		crc = t[0][p[7]] ^ t[1][p[6]] ^ t[2][p[5]] ^ t[3][p[4]] ^
			t[4][crc>>24] ^ t[5][(crc>>16)&0xff] ^ t[6][(crc>>8)&0xff] ^ t[7][crc&0xff]
		p = p[8:]
	}
	for _, c := range p {
		crc = t[0][byte(crc)^c] ^ (crc >> 8)
	}
	return ^crc
}

// crc32Slicing holds the slicing-by-8 tables of the IEEE polynomial: t[0]
// is crc32.IEEETable, t[k] a byte's contribution k bytes further back.
var crc32Slicing = func() (t [8][256]uint32) {
	t[0] = *crc32.IEEETable
	for i := range 256 {
		crc := t[0][i]
		for k := 1; k < 8; k++ {
			crc = t[0][crc&0xff] ^ (crc >> 8)
			t[k][i] = crc
		}
	}
	return t
}()

// base62Values maps a byte to its base62 digit, or 0xff if it is not one.
var base62Values = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := range len(base62) {
		t[base62[i]] = byte(i)
	}
	return t
}()
