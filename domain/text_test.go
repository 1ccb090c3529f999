package domain_test

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// secretShapedTexts returns strings shaped like a TokenLedger secret: a real
// one, one with its checksum broken, and each scope's prefix on 49 base62
// characters.
func secretShapedTexts(t *testing.T) map[string]string {
	t.Helper()
	s, err := domain.NewSecret(domain.ScopeWorkspace, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	real := s.Reveal()
	last := "0"
	if real[len(real)-1] == '0' {
		last = "1"
	}
	broken := real[:len(real)-1] + last
	if _, err := domain.CheckSecretFormat(broken); err == nil {
		t.Fatal("the broken checksum still checks")
	}
	body := strings.Repeat("aZ9", 16) + "x" // 49 base62 characters
	return map[string]string{
		"real":            real,
		"wrong checksum":  broken,
		"organization":    "tlo_" + body,
		"deployment":      "tld_" + body,
		"longer run":      "tlw_" + body + "ABC",
		"glued to a word": "key=" + real + ";",
	}
}

// TestNamesAndDescriptionsRefuseSecretsAndInvisibles: a secret pasted into
// a name or description, and characters that show as nothing, are refused
// on create and update with the field and the rule, and the error does not
// quote the text.
func TestNamesAndDescriptionsRefuseSecretsAndInvisibles(t *testing.T) {
	type bad struct {
		text, rule string
	}
	var cases []bad
	for _, s := range secretShapedTexts(t) {
		cases = append(cases, bad{"deploy " + s + " bot", "must not contain a TokenLedger secret"})
	}
	for _, r := range []string{
		"\u200b", "\u200c", "\u00ad", "\ufeff", "\u2060", "\u180e", "\u2061", "\U000E0041", // format characters (Cf)
		"\u034f", "\u115f", "\u1160", "\u17b4", "\u3164", "\uffa0", "\u2800", // fillers
		"\ufe0f", "\ufe00", "\U000E0100", // variation selectors after ASCII
		"\u200d", // zero width joiner between letters
	} {
		cases = append(cases, bad{"boot" + r + "strap", "must not contain invisible characters (found U+"})
	}
	cases = append(cases,
		bad{"\u3164", "must not contain invisible characters (found U+3164)"}, // a name of a filler alone
		bad{"bootstrap\u200b", "found U+200B"},                                // at the end, past trimming
		bad{"a \ufe0f b", "found U+FE0F"},                                     // a selector after a space
		bad{"\U0001F469\u200d", "found U+200D"},                               // a joiner after an emoji, before nothing
		bad{"x\u200d\U0001F469", "found U+200D"},                              // a joiner after a letter
		bad{"\u2764\ufe0f\ufe0f", "found U+FE0F"},                             // a second selector
		// A secret cut by invisible characters, so that the shape check
		// would miss it, is refused for those.
		bad{"tlo_" + strings.Repeat("a", 20) + "\u200b" + strings.Repeat("b", 29), "found U+200B"},
	)
	check := func(t *testing.T, err error, field, text, rule string) {
		t.Helper()
		var ve *domain.ValidationError
		if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].Field != field || !strings.Contains(ve.Problems[0].Rule, rule) {
			t.Fatalf("error %v, want one problem on %s saying %q", err, field, rule)
		}
		if strings.Contains(err.Error(), strings.TrimSpace(text)) {
			t.Fatalf("the error quotes the text: %v", err)
		}
	}
	for _, c := range cases {
		t.Run("create name "+c.text, func(t *testing.T) {
			cmd := orgCmd()
			cmd.Name = c.text
			_, _, _, err := domain.Create(cmd, envAt(t0))
			check(t, err, "name", c.text, c.rule)
		})
		t.Run("create description "+c.text, func(t *testing.T) {
			cmd := orgCmd()
			cmd.Description = "about: " + c.text
			_, _, _, err := domain.Create(cmd, envAt(t0))
			check(t, err, "description", c.text, c.rule)
		})
		t.Run("update "+c.text, func(t *testing.T) {
			tok, _, _ := mustCreate(t, orgCmd())
			before := tok.Clone()
			for _, cmd := range []struct {
				field string
				cmd   domain.UpdateToken
			}{
				{"name", domain.UpdateToken{Name: strPtr(c.text)}},
				{"description", domain.UpdateToken{Description: strPtr(c.text + "\nsecond line")}},
			} {
				e, changed, err := tok.Update(cmd.cmd, envAt(t0.Add(time.Hour)))
				check(t, err, cmd.field, c.text, c.rule)
				if changed || e.Type != "" {
					t.Fatalf("a refused update made an event: %+v", e)
				}
				assertSameToken(t, before, tok)
			}
		})
	}
}

// TestNamesKeepVisibleUnicode: what the rules above let through, so that
// they do not refuse what people write.
func TestNamesKeepVisibleUnicode(t *testing.T) {
	for _, name := range []string{
		"Ünïcødé 🚀 名前",
		"emoji 👩\u200d👩\u200d👧\u200d👦",           // a family: zero width joiners between emoji
		"love \u2764\ufe0f ops",                  // a heart with its emoji presentation selector
		"ok \U0001F44D\U0001F3FD\u200d\u2642",    // a skin tone, then a joiner
		"\u2764\ufe0f\u200d\U0001F525",           // a selector, then a joiner
		"tlo_" + strings.Repeat("a", 48),         // one character short of a secret
		"TLO_" + strings.Repeat("a", 49),         // not the secrets' prefix
		"tlo-" + strings.Repeat("a", 49),         // nor this
		"tlx_" + strings.Repeat("a", 49),         // no such scope
		"tlo_" + strings.Repeat("a", 48) + "-b",  // cut by a dash
		"naïve café, the ideographic\u3000space", // a visible wide space
	} {
		cmd := orgCmd()
		cmd.Name, cmd.Description = name, "about "+name
		tok, _, _, err := domain.Create(cmd, envAt(t0))
		if err != nil {
			t.Errorf("Create with name %q: %v", name, err)
			continue
		}
		if tok.Name() != name || tok.Description() != "about "+name {
			t.Errorf("name %q kept as %q", name, tok.Name())
		}
	}
}
