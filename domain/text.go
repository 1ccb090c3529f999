package domain

import (
	"fmt"
	"regexp"
	"unicode"
)

// Rules a name or description must also keep, beyond length and control
// characters: everyone who may read a token sees them, in the stream, every
// export, the console and every subscriber, for as long as the stream is
// kept, so they must neither hide text nor carry a secret.

// secretShaped is what a secret scanner looks for (see secret.go), anywhere
// in the text. The checksum is not consulted: a string of this shape is
// refused whatever its checksum, because scanners flag it all the same and a
// real secret with a character mistyped is still most of a secret.
var secretShaped = regexp.MustCompile(`tl[owd]_[0-9A-Za-z]{49}`)

// Rules as the errors state them. Neither quotes the text: it may be a secret.
const (
	secretRule = "must not contain a TokenLedger secret (text shaped like tlo_, tlw_ or tld_ and 49 letters or digits, whatever its checksum): " +
		"names and descriptions are shown to every reader and kept in the history for good; if it is a real secret, rotate its token"
	invisibleRule = "must not contain invisible characters (found %s): Unicode format characters (category Cf, such as U+200B, U+00AD, U+FEFF, U+2060, U+180E), " +
		"fillers (U+034F, U+115F, U+1160, U+17B4, U+17B5, U+3164, U+FFA0, U+2800 and the other default-ignorable code points), " +
		"and variation selectors or U+200D other than inside an emoji"
)

// checkText returns the rule s breaks, or "".
func checkText(s string) string {
	if r, ok := invisibleIn(s); ok {
		return fmt.Sprintf(invisibleRule, fmt.Sprintf("U+%04X", r))
	}
	if secretShaped.MatchString(s) {
		return secretRule
	}
	return ""
}

// invisibleIn returns the first character of s that displays as nothing, or
// as nothing of its own, so that text holding it looks like text without it
// ("bootstrap\u200b" like "bootstrap"):
//
//   - every format character (category Cf), the bidirectional controls
//     (reported earlier by their own rule) and U+200B, U+200C, U+00AD,
//     U+FEFF, U+2060, U+180E and the tag characters among them;
//   - the fillers: Unicode's other default-ignorable code points (U+034F
//     combining grapheme joiner, U+115F and U+1160 Hangul fillers, U+17B4
//     and U+17B5, U+3164 Hangul filler, U+FFA0 halfwidth Hangul filler, and
//     unassigned ranges kept for such characters) and U+2800 braille pattern
//     blank, which is not default-ignorable but draws as a blank;
//   - variation selectors, except right after a non-ASCII symbol or
//     punctuation mark, where they choose an emoji's presentation (❤️);
//   - U+200D zero width joiner, except between two emoji, where it makes
//     one (👩‍👩‍👧).
//
// Emoji tag sequences (subdivision flags), keycaps (1️⃣), ideographic and
// Mongolian variation selectors and U+200C in Persian are refused with them.
func invisibleIn(s string) (rune, bool) {
	var prev, prev2 rune // the two characters before r; 0 at the start
	runes := []rune(s)
	for i, r := range runes {
		var next rune
		if i+1 < len(runes) {
			next = runes[i+1]
		}
		switch {
		case r == '\u200d':
			if !emojiEnd(prev, prev2) || !emoji(next) {
				return r, true
			}
		case unicode.Is(unicode.Variation_Selector, r):
			if prev < 0x80 || !unicode.In(prev, unicode.S, unicode.P) {
				return r, true
			}
		case unicode.Is(unicode.Cf, r), unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r), r == '\u2800':
			return r, true
		}
		prev2, prev = prev, r
	}
	return 0, false
}

// emoji reports whether r can be one element of an emoji ZWJ sequence: a
// symbol outside ASCII (👩, ❤, ♀, 🦰 are all So).
func emoji(r rune) bool { return r >= 0x80 && unicode.Is(unicode.So, r) }

// emojiEnd reports whether the text before a U+200D ends an emoji element:
// an emoji, possibly with its presentation selector or a skin tone after it.
func emojiEnd(prev, prev2 rune) bool {
	if prev == '\ufe0f' || (prev >= 0x1f3fb && prev <= 0x1f3ff) {
		return emoji(prev2)
	}
	return emoji(prev)
}

// HoldsSecret reports whether s holds text shaped like a secret: a form
// that refused it must not show it again.
func HoldsSecret(s string) bool { return secretShaped.MatchString(s) }
