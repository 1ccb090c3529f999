package domain_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tokenledger/tokenledger/domain"
)

// TestJSONStringMatchesEncodingJSON compares the hand-written escaping with
// encoding/json's on strings chosen to break it.
func TestJSONStringMatchesEncodingJSON(t *testing.T) {
	cases := []string{
		"", "plain", `"`, `\`, "\x00\x01\x1f\x7f", "\b\f\n\r\t", "<>&", "\u2028\u2029", "é😀名",
		"\xff", "a\xc3", "\xc3\x28", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x80", "ok\xffok\u2028\"",
	}
	for i := range 256 {
		cases = append(cases, string([]byte{byte(i)}), "x"+string([]byte{byte(i), 'y'}), "12345678"+string([]byte{byte(i)})+"abcdefgh")
	}
	// Every position in and around the 8-byte words the fast path skips.
	for pos := range 20 {
		for _, special := range []string{`"`, `\`, "<", ">", "&", "\x00", "\x1f", "\x7f", " ", "é", "\xff", "\u2028", "😀"} {
			cases = append(cases, strings.Repeat("a", pos)+special+strings.Repeat("b", 20-pos))
		}
	}
	for _, s := range cases {
		checkJSONString(t, s, false)
		checkJSONString(t, s, true)
	}
}

func FuzzJSONString(f *testing.F) {
	f.Add("a\"b\\c\n\x00\xff\u2028")
	f.Add("<a href='x'>&amp;</a> \u2028")
	f.Fuzz(func(t *testing.T, s string) {
		checkJSONString(t, s, false)
		checkJSONString(t, s, true)
	})
}

func checkJSONString(t *testing.T, s string, escapeHTML bool) {
	t.Helper()
	got := domain.AppendJSONString(nil, s, escapeHTML)
	var want bytes.Buffer
	enc := json.NewEncoder(&want)
	enc.SetEscapeHTML(escapeHTML)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	if string(got) != strings.TrimSuffix(want.String(), "\n") {
		t.Fatalf("AppendJSONString(%q) = %s, encoding/json gives %s", s, got, want.String())
	}
	var back string
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("AppendJSONString(%q) = %s: not valid JSON: %v", s, got, err)
	}
	if back != strings.ToValidUTF8(s, "\ufffd") && !strings.Contains(s, "\ufffd") {
		// Valid UTF-8 must survive exactly; invalid bytes become U+FFFD.
		if s == strings.ToValidUTF8(s, "") {
			t.Fatalf("AppendJSONString(%q) reads back as %q", s, back)
		}
	}
}
