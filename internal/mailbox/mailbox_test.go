package mailbox

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in       string
		ok       bool
		envelope string // when ok
		utf8     bool
		key      string
	}{
		{in: "admin@example.org", ok: true, envelope: "admin@example.org", key: "admin@example.org"},
		// The local part is kept as typed; only the quota key folds case.
		{in: "John.Smith@Example.ORG", ok: true, envelope: "John.Smith@example.org", key: "john.smith@example.org"},
		{in: "a+tag@mail.example.co.uk", ok: true, envelope: "a+tag@mail.example.co.uk", key: "a+tag@mail.example.co.uk"},
		{in: `"john smith"@example.org`, ok: true, envelope: `"john smith"@example.org`, key: `"john smith"@example.org`},
		{in: `"a\"b"@example.org`, ok: true, envelope: `"a\"b"@example.org`, key: `"a\"b"@example.org`},
		{in: "!#$%&'*+-/=?^_`{|}~@example.org", ok: true, envelope: "!#$%&'*+-/=?^_`{|}~@example.org", key: "!#$%&'*+-/=?^_`{|}~@example.org"},
		// A U-label domain goes out in A-labels without SMTPUTF8.
		{in: "info@bücher.example", ok: true, envelope: "info@xn--bcher-kva.example", key: "info@xn--bcher-kva.example"},
		// A non-ASCII local part needs SMTPUTF8 and goes out as typed.
		{in: "Jöran@bücher.example", ok: true, envelope: "Jöran@bücher.example", utf8: true, key: "jöran@xn--bcher-kva.example"},
		{in: "用户@例子.广告", ok: true, envelope: "用户@例子.广告", utf8: true, key: "用户@xn--fsqu00a.xn--4rr70v"},

		{in: ""},
		{in: "no-at.example.org"},
		{in: "@example.org"},
		{in: "a@"},
		{in: "a@[127.0.0.1]"},
		{in: "a@[IPv6:::1]"},
		{in: "a@-"},
		{in: "a@-.example.org"},
		{in: "a@example-.org"},
		{in: "a@localhost"},
		{in: "a@intranet"},
		{in: "a@127.0.0.1"},
		{in: "a@10.1.2.3"},
		{in: "a@example.org."},
		{in: "a@.example.org"},
		{in: "a@example..org"},
		{in: "a@exa_mple.org"},
		{in: "a@exa mple.org"},
		{in: ".a@example.org"},
		{in: "a.@example.org"},
		{in: "a..b@example.org"},
		{in: "a b@example.org"},
		{in: "a\r\nRCPT TO:<x@y.org>@example.org"},
		{in: "a(comment)@example.org"},
		{in: "<a@example.org>"},
		{in: "Name <a@example.org>"},
		{in: `"unclosed@example.org`},
		{in: `"a"b"@example.org`},
		{in: "a\x00@example.org"},
		{in: "\xff@example.org"},
		{in: strings.Repeat("a", 65) + "@example.org"},
		{in: "a@" + strings.Repeat("b", 64) + ".org"},
		{in: "a@" + strings.Repeat("abcdefghi.", 25) + "org"},
		{in: "a\u200b@example.org"}, // zero-width space
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			m, err := Parse(tt.in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("Parse(%q) = %+v, want an error", tt.in, m)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if m.String() != tt.in {
				t.Errorf("String() = %q, want the address as typed", m.String())
			}
			if got := m.Envelope(); got != tt.envelope {
				t.Errorf("Envelope() = %q, want %q", got, tt.envelope)
			}
			if m.NeedsSMTPUTF8() != tt.utf8 {
				t.Errorf("NeedsSMTPUTF8() = %v, want %v", m.NeedsSMTPUTF8(), tt.utf8)
			}
			if m.Key() != tt.key {
				t.Errorf("Key() = %q, want %q", m.Key(), tt.key)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"a@example.org", `"q s"@example.org`, "用户@例子.广告", "a@[127.0.0.1]", "a@-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := Parse(s)
		if err != nil {
			return
		}
		// What Parse accepts is safe in an SMTP command and a header line,
		// and reads back the same.
		if strings.ContainsAny(m.Envelope(), "\r\n\x00<>[] \t") && !strings.HasPrefix(m.Local, `"`) {
			t.Fatalf("accepted %q, whose envelope %q holds a separator", s, m.Envelope())
		}
		if strings.ContainsAny(m.Envelope(), "\r\n\x00") {
			t.Fatalf("accepted %q with a line break", s)
		}
		again, err := Parse(m.String())
		if err != nil || again != m {
			t.Fatalf("Parse(%q) = %+v, but its String %q reads back as %+v, %v", s, m, m.String(), again, err)
		}
	})
}
