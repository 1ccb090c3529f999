package domain

import "unicode/utf8"

// AppendJSONString appends s as a JSON string, escaped exactly as
// encoding/json escapes it: quote, backslash and control characters escaped,
// U+2028 and U+2029 escaped for JavaScript, each byte of invalid UTF-8
// replaced by U+FFFD, and with escapeHTML also <, > and & (json.Marshal's
// default, so the stored events' form; exports leave HTML alone, which only
// matters inside a web page). The result is valid JSON for any input; only
// invalid UTF-8 does not survive the trip.
//
// The ledger writes a string with it wherever it writes JSON by hand (the
// stored events, the audit rows, the manifest) instead of through
// encoding/json's reflection, which is the cost of every command and every
// exported row. Ids, hashes and most names need no escaping, so it skips 8
// plain bytes at a time and copies runs of them at once.
func AppendJSONString(b []byte, s string, escapeHTML bool) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if i+8 <= len(s) {
			w := s[i : i+8]
			x := uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
				uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56
			if plain8(x) && (!escapeHTML || !html8(x)) {
				i += 8
				continue
			}
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && (!escapeHTML || (c != '<' && c != '>' && c != '&')) {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// SWAR constants: one bit per byte of a 64-bit word.
const (
	lsbs = 0x0101010101010101
	msbs = 0x8080808080808080
)

// plain8 reports whether none of the 8 bytes in x needs attention: no control
// character, quote, backslash or non-ASCII byte. The zero-byte tests may flag
// a byte wrongly, but only next to one that is truly flagged, so a true
// result is exact.
func plain8(x uint64) bool {
	return (ctl8(x)|has8(x, '"')|has8(x, '\\')|x)&msbs == 0
}

// html8 reports whether one of the 8 ASCII bytes in x (plain8 holds) may be
// <, > or &; as with plain8, a false answer is exact.
func html8(x uint64) bool {
	return (has8(x, '<')|has8(x, '>')|has8(x, '&'))&msbs != 0
}

func ctl8(x uint64) uint64 { return (x - lsbs*0x20) &^ x }

// has8 sets the high bit of each byte of x equal to c (and maybe of a byte
// after one that is).
func has8(x uint64, c byte) uint64 {
	y := x ^ (lsbs * uint64(c))
	return (y - lsbs) &^ y
}
