package domain

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// The checksum the format check computes is CRC-32 (IEEE), at every length
// and content, not only at the secret's.
func TestCRC32BytesIsChecksumIEEE(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for n := range 200 {
		b := make([]byte, n)
		for range 20 {
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			if got, want := crc32Bytes(b), crc32.ChecksumIEEE(b); got != want {
				t.Fatalf("crc32Bytes(%x) = %08x, want %08x", b, got, want)
			}
		}
	}
}

// CheckSecretFormat does not allocate, whatever the string's length.
func TestCheckSecretFormatDoesNotAllocate(t *testing.T) {
	for _, s := range []string{"", "tlw_", "tlw_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm", string(make([]byte, 4096))} {
		if n := testing.AllocsPerRun(100, func() { _, _ = CheckSecretFormat(s) }); n != 0 {
			t.Errorf("CheckSecretFormat of %d bytes allocates %.0f times", len(s), n)
		}
	}
}
