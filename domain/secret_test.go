package domain_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	mrand "math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/domain"
)

var secretRe = regexp.MustCompile(`^tl[owd]_[0-9A-Za-z]{49}$`)

const base62Alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

var allScopes = []struct {
	scope  domain.Scope
	prefix string
}{
	{domain.ScopeOrganization, "tlo_"},
	{domain.ScopeWorkspace, "tlw_"},
	{domain.ScopeDeployment, "tld_"},
}

func mustSecret(t testing.TB, s domain.Scope) string {
	t.Helper()
	sec, err := domain.NewSecret(s, rand.Reader)
	if err != nil {
		t.Fatalf("NewSecret(%s): %v", s, err)
	}
	return sec.Reveal()
}

func TestNewSecretFormat(t *testing.T) {
	for _, sc := range allScopes {
		t.Run(string(sc.scope), func(t *testing.T) {
			seen := make(map[string]bool)
			for i := 0; i < 200; i++ {
				s := mustSecret(t, sc.scope)
				if len(s) != domain.SecretLen || domain.SecretLen != 53 {
					t.Fatalf("len(secret) = %d, SecretLen = %d, want 53", len(s), domain.SecretLen)
				}
				if !secretRe.MatchString(s) {
					t.Fatalf("secret %q does not match %s", s, secretRe)
				}
				if !strings.HasPrefix(s, sc.prefix) {
					t.Fatalf("secret %q, want prefix %q", s, sc.prefix)
				}
				got, err := domain.CheckSecretFormat(s)
				if err != nil || got != sc.scope {
					t.Fatalf("CheckSecretFormat(%q) = %q, %v; want %q, nil", s, got, err, sc.scope)
				}
				if seen[s] {
					t.Fatalf("secret %q issued twice", s)
				}
				seen[s] = true
			}
		})
	}
}

func TestNewSecretExtremes(t *testing.T) {
	// All-zero and all-one randomness are the edges of the 43-digit body: both
	// must still give a well-formed, checkable secret.
	tests := []struct {
		name string
		fill byte
	}{
		{"all zero bits", 0x00},
		{"all one bits", 0xff},
		{"alternating bits", 0xaa},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sec, err := domain.NewSecret(domain.ScopeWorkspace, bytes.NewReader(bytes.Repeat([]byte{tc.fill}, 32)))
			if err != nil {
				t.Fatal(err)
			}
			s := sec.Reveal()
			if !secretRe.MatchString(s) {
				t.Fatalf("secret %q does not match %s", s, secretRe)
			}
			if sc, err := domain.CheckSecretFormat(s); err != nil || sc != domain.ScopeWorkspace {
				t.Errorf("CheckSecretFormat(%q) = %q, %v", s, sc, err)
			}
		})
	}
	t.Run("different randomness gives different bodies", func(t *testing.T) {
		a, _ := domain.NewSecret(domain.ScopeWorkspace, bytes.NewReader(bytes.Repeat([]byte{0}, 32)))
		b, _ := domain.NewSecret(domain.ScopeWorkspace, bytes.NewReader(append(bytes.Repeat([]byte{0}, 31), 1)))
		if a.Reveal() == b.Reveal() {
			t.Errorf("secrets from different randomness are equal: %q", a.Reveal())
		}
	})
}

func TestNewSecretErrors(t *testing.T) {
	tests := []struct {
		name  string
		scope domain.Scope
		rand  []byte
	}{
		{"unknown scope", domain.Scope("PROJECT"), make([]byte, 32)},
		{"lower-case scope", domain.Scope("workspace"), make([]byte, 32)},
		{"short randomness", domain.ScopeOrganization, make([]byte, 31)},
		{"no randomness", domain.ScopeOrganization, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sec, err := domain.NewSecret(tc.scope, bytes.NewReader(tc.rand))
			if err == nil {
				t.Fatalf("NewSecret succeeded: %q", sec.Reveal())
			}
			if !sec.IsZero() {
				t.Error("failed NewSecret returned a non-zero secret")
			}
		})
	}
}

func TestSecretsDiffer(t *testing.T) {
	a, b := mustSecret(t, domain.ScopeOrganization), mustSecret(t, domain.ScopeOrganization)
	if a == b {
		t.Fatalf("two secrets are equal: %q", a)
	}
	if domain.Hash(a) == domain.Hash(b) || domain.Fingerprint(a) == domain.Fingerprint(b) {
		t.Error("two different secrets share a hash or fingerprint")
	}
}

func TestCheckSecretFormatRejects(t *testing.T) {
	good := mustSecret(t, domain.ScopeOrganization)
	body := good[4:]
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"prefix only", "tlo_"},
		{"one character short", good[:len(good)-1]},
		{"one character long", good + "0"},
		{"truncated body", good[:30]},
		{"doubled", good + good},
		{"unknown prefix", "tlx_" + body},
		{"upper-case prefix", "TLO_" + body},
		{"prefix without underscore", "tlo-" + body},
		{"other product prefix", "ghp_" + body},
		{"other scope prefix, same body", "tlw_" + body},
		{"deployment prefix, same body", "tld_" + body},
		{"dash in body", good[:10] + "-" + good[11:]},
		{"underscore in body", good[:20] + "_" + good[21:]},
		{"space in body", good[:30] + " " + good[31:]},
		{"plus in checksum", good[:50] + "+" + good[51:]},
		{"NUL in body", good[:12] + "\x00" + good[13:]},
		{"non-ASCII byte in body", good[:12] + "\xc3" + good[13:]},
		{"leading space", " " + good[:len(good)-1]},
		{"trailing newline", good[:len(good)-1] + "\n"},
		{"body and checksum swapped", "tlo_" + good[47:] + good[4:47]},
		{"checksum zeroed", good[:47] + "000000"},
		{"checksum maxed", good[:47] + "zzzzzz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.in == good {
				t.Fatal("test case equals the valid secret")
			}
			sc, err := domain.CheckSecretFormat(tc.in)
			if !errors.Is(err, domain.ErrMalformedSecret) {
				t.Errorf("CheckSecretFormat(%q) = %q, %v; want ErrMalformedSecret", tc.in, sc, err)
			}
			if sc != "" {
				t.Errorf("rejected secret still named scope %q", sc)
			}
		})
	}
}

// withChecksum appends a correct checksum (CRC-32 of everything so far, as six
// base62 digits) to s, so a test can build strings whose only fault is
// something other than the checksum.
func withChecksum(s string) string {
	sum := uint64(crc32.ChecksumIEEE([]byte(s)))
	var digits [6]byte
	for i := 5; i >= 0; i-- {
		digits[i] = base62Alphabet[sum%62]
		sum /= 62
	}
	return s + string(digits[:])
}

func TestCheckSecretFormatRejectsWithValidChecksum(t *testing.T) {
	good := mustSecret(t, domain.ScopeWorkspace)
	if withChecksum(good[:47]) != good {
		t.Fatalf("test helper withChecksum does not reproduce %q", good)
	}
	body := good[4:47]
	tests := []struct {
		name string
		in   string
	}{
		{"unknown prefix", withChecksum("tlx_" + body)},
		{"upper-case prefix", withChecksum("TLW_" + body)},
		{"prefix with dash", withChecksum("tlw-" + body)},
		{"other product prefix", withChecksum("ghp_" + body)},
		{"dash in body", withChecksum("tlw_" + body[:10] + "-" + body[11:])},
		{"underscore in body", withChecksum("tlw_" + body[:42] + "_")},
		{"space in body", withChecksum("tlw_ " + body[1:])},
		{"non-ASCII byte in body", withChecksum("tlw_" + body[:20] + "\xff" + body[21:])},
		{"body one short, checksum one long", withChecksum("tlw_"+body[:42]) + "0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.in) != domain.SecretLen {
				t.Fatalf("test input has length %d, want %d", len(tc.in), domain.SecretLen)
			}
			if sc, err := domain.CheckSecretFormat(tc.in); !errors.Is(err, domain.ErrMalformedSecret) {
				t.Errorf("CheckSecretFormat(%q) = %q, %v; want ErrMalformedSecret", tc.in, sc, err)
			}
		})
	}
}

// TestCheckSecretFormatSingleCharacterChanges changes every character after the
// prefix to every other base62 character: the checksum must catch each one.
func TestCheckSecretFormatSingleCharacterChanges(t *testing.T) {
	for _, sc := range allScopes {
		t.Run(string(sc.scope), func(t *testing.T) {
			for n := 0; n < 3; n++ {
				good := mustSecret(t, sc.scope)
				tried, accepted := 0, 0
				for i := 4; i < len(good); i++ {
					for j := 0; j < len(base62Alphabet); j++ {
						c := base62Alphabet[j]
						if c == good[i] {
							continue
						}
						bad := good[:i] + string(c) + good[i+1:]
						tried++
						if _, err := domain.CheckSecretFormat(bad); !errors.Is(err, domain.ErrMalformedSecret) {
							accepted++
							if accepted <= 5 {
								t.Errorf("position %d %q->%q: CheckSecretFormat(%q) = %v, want ErrMalformedSecret", i, good[i], c, bad, err)
							}
						}
					}
				}
				if tried != 49*61 {
					t.Fatalf("tried %d mutations, want %d", tried, 49*61)
				}
				if accepted > 0 {
					t.Errorf("%d of %d single-character changes passed the checksum", accepted, tried)
				}
			}
		})
	}
}

func TestCheckSecretFormatTranspositions(t *testing.T) {
	good := mustSecret(t, domain.ScopeDeployment)
	for i := 4; i < len(good)-1; i++ {
		if good[i] == good[i+1] {
			continue
		}
		b := []byte(good)
		b[i], b[i+1] = b[i+1], b[i]
		if _, err := domain.CheckSecretFormat(string(b)); !errors.Is(err, domain.ErrMalformedSecret) {
			t.Errorf("swapping positions %d and %d was accepted: %q", i, i+1, b)
		}
	}
}

func TestCheckSecretFormatRandomStrings(t *testing.T) {
	// Well-shaped strings with a random checksum almost never pass: a checksum
	// that accepted anything would let every typo through to a lookup.
	r := mrand.New(mrand.NewPCG(1, 2))
	accepted := 0
	for n := 0; n < 10000; n++ {
		b := []byte("tlo_")
		for i := 0; i < 49; i++ {
			b = append(b, base62Alphabet[r.IntN(62)])
		}
		if _, err := domain.CheckSecretFormat(string(b)); err == nil {
			accepted++
		}
	}
	if accepted > 0 {
		t.Errorf("%d of 10000 random well-shaped strings passed the checksum", accepted)
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	sec, err := domain.NewSecret(domain.ScopeOrganization, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	plain := sec.Reveal()
	type holder struct {
		Name   string
		Secret domain.Secret
	}
	tests := []struct {
		name string
		arg  any
	}{
		{"value", sec},
		{"pointer", &sec},
		{"in a struct", holder{Name: "x", Secret: sec}},
		{"pointer in a struct", struct{ S *domain.Secret }{&sec}},
		{"in a slice", []domain.Secret{sec, sec}},
		{"in a map", map[string]domain.Secret{"k": sec}},
		{"in an unexported field", struct{ s domain.Secret }{sec}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, format := range []string{"%v", "%s", "%+v", "%#v", "%q", "%x", "%d", "%v %s %+v %#v"} {
				args := make([]any, strings.Count(format, "%"))
				for i := range args {
					args[i] = tc.arg
				}
				out := fmt.Sprintf(format, args...)
				if strings.Contains(out, plain) || strings.Contains(out, plain[4:20]) {
					t.Errorf("fmt.Sprintf(%q) leaks the secret: %s", format, out)
				}
			}
			for _, out := range []string{fmt.Sprint(tc.arg), fmt.Sprintln(tc.arg)} {
				if strings.Contains(out, plain) {
					t.Errorf("fmt.Sprint leaks the secret: %s", out)
				}
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		b, err := json.Marshal(holder{Secret: sec})
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(plain)) {
			t.Errorf("json.Marshal leaks the secret: %s", b)
		}
	})
	t.Run("error wrapping", func(t *testing.T) {
		err := fmt.Errorf("issuing %v failed: %w", sec, errors.New("x"))
		if strings.Contains(err.Error(), plain) {
			t.Errorf("error text leaks the secret: %v", err)
		}
	})
	t.Run("Reveal is the way out", func(t *testing.T) {
		if sec.String() == plain || sec.GoString() == plain || plain == "" {
			t.Error("String or GoString returns the secret")
		}
		if !secretRe.MatchString(plain) {
			t.Errorf("Reveal() = %q, not a secret", plain)
		}
	})
}

func TestSecretIsZero(t *testing.T) {
	var zero domain.Secret
	if !zero.IsZero() || zero.Reveal() != "" {
		t.Error("zero Secret is not zero")
	}
	if s, _ := domain.NewSecret(domain.ScopeWorkspace, rand.Reader); s.IsZero() {
		t.Error("issued Secret reports IsZero")
	}
}

func TestHash(t *testing.T) {
	s := mustSecret(t, domain.ScopeWorkspace)
	h := domain.Hash(s)
	if h != domain.Hash(s) {
		t.Error("Hash is not stable")
	}
	if h == domain.Hash(s+" ") || h == domain.Hash(strings.ToUpper(s)) {
		t.Error("different secrets hash alike")
	}
	// Known answer: SHA-256 of "abc".
	const abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := domain.Hash("abc").String(); got != abc {
		t.Errorf("Hash(abc) = %s, want %s", got, abc)
	}
	if got := h.String(); got != hex.EncodeToString(h[:]) || len(got) != 64 {
		t.Errorf("hash string %q", got)
	}

	t.Run("text round trip", func(t *testing.T) {
		text, err := h.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back domain.SecretHash
		if err := back.UnmarshalText(text); err != nil || back != h {
			t.Errorf("UnmarshalText(MarshalText) = %v, %v; want %v", back, err, h)
		}
	})
	for _, bad := range []string{"", "abc", h.String()[:62], h.String() + "00", h.String() + "0", strings.Repeat("zz", 32), h.String()[:63] + "g"} {
		t.Run("rejects "+fmt.Sprintf("%.12q", bad), func(t *testing.T) {
			var back domain.SecretHash
			if err := back.UnmarshalText([]byte(bad)); err == nil {
				t.Errorf("UnmarshalText(%q) succeeded", bad)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	s := mustSecret(t, domain.ScopeOrganization)
	fp := domain.Fingerprint(s)
	if fp != domain.Fingerprint(s) {
		t.Error("Fingerprint is not stable")
	}
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(fp) {
		t.Errorf("Fingerprint = %q, want 16 hex characters", fp)
	}
	hash := domain.Hash(s).String()
	if strings.Contains(s, fp) || strings.Contains(hash, fp) {
		t.Errorf("Fingerprint %q reveals the secret or its hash %s", fp, hash)
	}
	if fp == domain.Fingerprint(mustSecret(t, domain.ScopeOrganization)) {
		t.Error("two secrets share a fingerprint")
	}
	// The token and its events use the same fingerprint the CLI computes.
	tok, e, sec := mustCreate(t, orgCmd())
	if tok.Fingerprint() != domain.Fingerprint(sec.Reveal()) || e.Data.(domain.CreatedData).Fingerprint != tok.Fingerprint() {
		t.Error("token fingerprint differs from Fingerprint(secret)")
	}
}

func TestCheckSecretFormatDoesNotAllocate(t *testing.T) {
	secrets := []string{
		mustSecret(t, domain.ScopeOrganization),
		mustSecret(t, domain.ScopeWorkspace),
		mustSecret(t, domain.ScopeDeployment),
	}
	bad := secrets[0][:50] + "!!!"
	badSum := secrets[1][:47] + "000000"
	for _, in := range append(secrets, bad, badSum, "short") {
		allocs := testing.AllocsPerRun(100, func() {
			_, _ = domain.CheckSecretFormat(in)
		})
		if allocs != 0 {
			t.Errorf("CheckSecretFormat(%.8q...) allocates %v times per call, want 0", in, allocs)
		}
	}
}

func BenchmarkCheckSecretFormatAndHash(b *testing.B) {
	s := mustSecret(b, domain.ScopeWorkspace)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := domain.CheckSecretFormat(s); err != nil {
			b.Fatal(err)
		}
		_ = domain.Hash(s)
	}
}

func BenchmarkCheckSecretFormat(b *testing.B) {
	s := mustSecret(b, domain.ScopeDeployment)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := domain.CheckSecretFormat(s); err != nil {
			b.Fatal(err)
		}
	}
}
