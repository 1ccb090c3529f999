package domain_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/domain"
)

// FuzzCheckSecretFormat holds CheckSecretFormat, the branch-free parser every
// presented secret goes through first, to the format as the documentation
// states it, written the obvious way: tl[owd]_, 49 base62 characters, the last
// six a CRC-32 of the rest. The two must agree on every string, and an
// accepted string's scope is the one its prefix names. Run it with
//
//	go test -run '^$' -fuzz '^FuzzCheckSecretFormat$' ./domain
func FuzzCheckSecretFormat(f *testing.F) {
	for _, sc := range allScopes {
		for _, fill := range []byte{0x00, 0xff, 0x5a} {
			good := fixedSecret(f, sc.scope, fill)
			f.Add(good)
			f.Add(good + "\n")
			f.Add(" " + good)
			f.Add(good[:domain.SecretLen-1])
			f.Add(good[:47] + "000000")
			f.Add(strings.ToUpper(good[:3]) + good[3:])
		}
		f.Add(withChecksum(sc.prefix + strings.Repeat("0", 43)))
		f.Add(withChecksum(sc.prefix + strings.Repeat("é", 21) + "z"))
	}
	f.Add("")
	f.Add("tlx_" + strings.Repeat("0", 49))
	f.Add("Bearer " + strings.Repeat("z", 53))
	f.Add(strings.Repeat("\x00", domain.SecretLen))
	f.Fuzz(func(t *testing.T, s string) {
		scope, err := domain.CheckSecretFormat(s)
		want, ok := referenceSecretScope(s)
		switch {
		case ok && err != nil:
			t.Fatalf("CheckSecretFormat(%q) refuses a well-formed %s secret: %v", s, want, err)
		case !ok && err == nil:
			t.Fatalf("CheckSecretFormat(%q) accepts a malformed secret as %s", s, scope)
		case ok && scope != want:
			t.Fatalf("CheckSecretFormat(%q) = %s, its prefix names %s", s, scope, want)
		case err != nil && (!errors.Is(err, domain.ErrMalformedSecret) || scope != ""):
			t.Fatalf("CheckSecretFormat(%q) = %q, %v; a refusal is \"\", ErrMalformedSecret", s, scope, err)
		}
	})
}

// FuzzSecretOneCharacterChange: every secret NewSecret makes, from whatever
// randomness, is accepted with its scope; changing any one of its characters
// to any other byte, dropping one, or adding one makes it refused (a CRC-32
// catches every error confined to 32 bits, and the prefix is under it).
//
//	go test -run '^$' -fuzz '^FuzzSecretOneCharacterChange$' ./domain
func FuzzSecretOneCharacterChange(f *testing.F) {
	for i := range allScopes {
		f.Add(bytes.Repeat([]byte{0}, 32), uint8(i), uint8(0), byte('x'))
		f.Add(bytes.Repeat([]byte{0xff}, 32), uint8(i), uint8(3), byte('-'))
		f.Add(bytes.Repeat([]byte{0x5a}, 32), uint8(i), uint8(47), byte('0'))
		f.Add(bytes.Repeat([]byte{0x01}, 32), uint8(i), uint8(52), byte(0))
	}
	f.Fuzz(func(t *testing.T, raw []byte, which, pos uint8, c byte) {
		sc := allScopes[int(which)%len(allScopes)]
		// NewSecret reads exactly 32 bytes; pad short inputs so that every
		// input is a secret.
		raw = append(raw, make([]byte, 32)...)[:32]
		sec, err := domain.NewSecret(sc.scope, bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		s := sec.Reveal()
		if scope, err := domain.CheckSecretFormat(s); err != nil || scope != sc.scope {
			t.Fatalf("NewSecret(%s) made %q, which CheckSecretFormat reads as %q, %v", sc.scope, s, scope, err)
		}
		if !strings.HasPrefix(s, sc.prefix) {
			t.Fatalf("NewSecret(%s) made %q, without the prefix %s", sc.scope, s, sc.prefix)
		}
		i := int(pos) % len(s)
		for _, bad := range []string{
			s[:i] + string([]byte{c}) + s[i+1:],
			s[:i] + s[i+1:],
			s[:i] + string([]byte{c}) + s[i:],
		} {
			if bad == s {
				continue
			}
			if scope, err := domain.CheckSecretFormat(bad); err == nil {
				t.Fatalf("%q, one character away from the secret %q, is accepted as %s", bad, s, scope)
			}
		}
	})
}

// fixedSecret is a secret drawn from 32 bytes of fill: the same on every run,
// so a seed is worth committing.
func fixedSecret(tb testing.TB, s domain.Scope, fill byte) string {
	tb.Helper()
	sec, err := domain.NewSecret(s, bytes.NewReader(bytes.Repeat([]byte{fill}, 32)))
	if err != nil {
		tb.Fatal(err)
	}
	return sec.Reveal()
}

// referenceSecretScope is the secret format as documented, for comparison.
func referenceSecretScope(s string) (domain.Scope, bool) {
	if !secretRe.MatchString(s) || withChecksum(s[:domain.SecretLen-6]) != s {
		return "", false
	}
	for _, sc := range allScopes {
		if strings.HasPrefix(s, sc.prefix) {
			return sc.scope, true
		}
	}
	return "", false
}
