package domain_test

import (
	"bytes"
	"hash/crc32"
	"math/big"
	mrand "math/rand/v2"
	"testing"

	"github.com/tokenledger/tokenledger/domain"
)

// referenceSecret is the secret format spelled out with math/big, as the
// ledger first made it: secrets issued since must keep exactly this form.
func referenceSecret(prefix string, raw []byte) string {
	digits := func(n *big.Int, width int) string {
		out := make([]byte, width)
		base, mod := big.NewInt(62), new(big.Int)
		for i := width - 1; i >= 0; i-- {
			n.DivMod(n, base, mod)
			out[i] = base62Alphabet[mod.Int64()]
		}
		return string(out)
	}
	s := prefix + digits(new(big.Int).SetBytes(raw), 43)
	return s + digits(big.NewInt(int64(crc32.ChecksumIEEE([]byte(s)))), 6)
}

func TestNewSecretEncodesItsRandomnessAsTheReferenceDoes(t *testing.T) {
	rnd := mrand.New(mrand.NewPCG(1, 2))
	inputs := [][]byte{bytes.Repeat([]byte{0}, 32), bytes.Repeat([]byte{0xff}, 32), append(bytes.Repeat([]byte{0}, 31), 61), append(bytes.Repeat([]byte{0}, 31), 62)}
	for range 2000 {
		raw := make([]byte, 32)
		for i := range raw {
			raw[i] = byte(rnd.Uint32())
		}
		inputs = append(inputs, raw)
	}
	for _, raw := range inputs {
		for _, sc := range allScopes {
			sec, err := domain.NewSecret(sc.scope, bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := sec.Reveal(), referenceSecret(sc.prefix, raw); got != want {
				t.Fatalf("randomness %x: NewSecret made %q, the format says %q", raw, got, want)
			}
		}
	}
}

// BenchmarkNewSecret: go test -run '^$' -bench NewSecret ./domain
func BenchmarkNewSecret(b *testing.B) {
	raw := bytes.Repeat([]byte{0xa5}, 32)
	b.Run("math-big-reference", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = referenceSecret("tlw_", raw)
		}
	})
	b.Run("NewSecret", func(b *testing.B) {
		b.ReportAllocs()
		r := bytes.NewReader(raw)
		for b.Loop() {
			r.Reset(raw)
			if _, err := domain.NewSecret(domain.ScopeWorkspace, r); err != nil {
				b.Fatal(err)
			}
		}
	})
}
