package projections_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/projections"
)

// viewWith returns a view of n tokens and their secrets.
func viewWith(tb testing.TB, n int) (*projections.Tokens, []string) {
	tb.Helper()
	v := projections.NewTokens()
	secrets := make([]string, n)
	for i := range n {
		_, e, s, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "workspace", WorkspaceID: fmt.Sprintf("w%d", i%100), Name: "t"}, domain.Env{Now: t0, Rand: rand.Reader})
		if err != nil {
			tb.Fatal(err)
		}
		if err := v.Apply(uint64(i+1), e); err != nil {
			tb.Fatal(err)
		}
		secrets[i] = s.Reveal()
	}
	return v, secrets
}

func TestVerifyDoesNotAllocate(t *testing.T) {
	v, secrets := viewWith(t, 1000)
	for _, s := range []string{secrets[0], "tlw_garbage", secrets[1][:52] + "x"} {
		if n := testing.AllocsPerRun(1000, func() { v.Verify(s, t0) }); n != 0 {
			t.Errorf("Verify allocates %.0f times per call", n)
		}
	}
}

// BenchmarkVerify measures in-process verification over 200,000 tokens, on
// one goroutine and on all cores. The target: 1,000,000 lookups/s.
func BenchmarkVerify(b *testing.B) {
	v, secrets := viewWith(b, 200_000)
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if v.Verify(secrets[i%len(secrets)], t0).Outcome != projections.OutcomeActive {
				b.Fatal("not active")
			}
			i++
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if v.Verify(secrets[i%len(secrets)], t0).Outcome != projections.OutcomeActive {
					b.Error("not active")
					return
				}
				i += 7
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
	})
}

// BenchmarkReadSnapshot loads a snapshot of 200,000 tokens, each assigned to
// a workspace and rotated once (so the retired-secret index is as large).
func BenchmarkReadSnapshot(b *testing.B) {
	v := projections.NewTokens()
	seq := uint64(0)
	for i := range 200_000 {
		tok, e, _, err := domain.Create(domain.CreateToken{OrganizationID: fmt.Sprintf("org%d", i%50), Scope: "organization", Name: fmt.Sprintf("token %d", i)}, domain.Env{Now: t0, Rand: rand.Reader})
		if err != nil {
			b.Fatal(err)
		}
		seq++
		must(b, v.Apply(seq, e))
		a, _, err := tok.Assign(fmt.Sprintf("w%d", i%1000), "WORKSPACE_MEMBER", domain.Env{Now: t0, Rand: rand.Reader})
		must(b, err)
		seq++
		must(b, v.Apply(seq, a))
		r, _, err := tok.Rotate(domain.Env{Now: t0, Rand: rand.Reader})
		must(b, err)
		seq++
		must(b, v.Apply(seq, r))
	}
	var buf bytes.Buffer
	if _, err := v.WriteSnapshot(&buf, "TOKENS", t0); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(buf.Len())/(1<<20), "MiB")
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := projections.ReadSnapshot(bytes.NewReader(buf.Bytes())); err != nil {
			b.Fatal(err)
		}
	}
}
