package exporters

import (
	"bytes"
	"crypto/ed25519"
	"sync"
	"testing"
)

// FuzzVerify feeds Verify damaged exports of every format: it must report
// them, never accept one, and never crash. Run it with
//
//	go test -race -run '^$' -fuzz FuzzVerify ./exporters/
//
// (-race also turns on checkptr, which catches unsafe reads parquet-go makes
// on malformed input when its pages are not checked first.)
func FuzzVerify(f *testing.F) {
	ex := fuzzExports(f)
	for i, e := range ex {
		f.Add(uint8(i), e.file)
	}
	f.Fuzz(func(t *testing.T, which uint8, file []byte) {
		e := ex[int(which)%len(ex)]
		rep := verifyBytes(file, e.manifest, pub(e.key))
		if rep.OK() && !bytes.Equal(file, e.file) {
			t.Fatalf("Verify accepts a %s file that is not the exported one", e.format)
		}
	})
}

type fuzzExport struct {
	format         Format
	file, manifest []byte
	key            ed25519.PrivateKey
}

var (
	fuzzOnce sync.Once
	fuzzEx   []fuzzExport
)

func fuzzExports(tb testing.TB) []fuzzExport {
	fuzzOnce.Do(func() {
		key := newKey(tb)
		rows := makeHistory(tb, 2, 4, 31).rows()[:4]
		for _, f := range Formats {
			path, manifest := exportSigned(tb, tb.TempDir(), f, rows, key)
			fuzzEx = append(fuzzEx, fuzzExport{format: f, file: mustRead(tb, path), manifest: manifest, key: key})
		}
	})
	return fuzzEx
}
