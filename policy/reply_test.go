package policy

import "testing"

func TestExpandAndSanitize(t *testing.T) {
	for _, tc := range []struct{ tmpl, want string }{
		{"{ip} {list} {category} {url} {ref}", "192.0.2.7 ZEN zombie https://x/ip/192.0.2.7 REF"},
		{"no placeholders", "no placeholders"},
		{"{ip}{ip}", "192.0.2.7192.0.2.7"},
		{"{unknown} {ip", "{unknown} {ip"},
		{"{", "{"},
	} {
		if got := expand(tc.tmpl, "192.0.2.7", "ZEN", "zombie", "https://x/ip/192.0.2.7", "REF"); got != tc.want {
			t.Errorf("expand(%q) = %q, want %q", tc.tmpl, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"plain text", 100, "plain text"},
		{"a\r\nb\x00c\td", 100, "a  b c d"},
		{"caf\u00e9", 100, "caf?"},
		{"abcdef", 3, "abc"},
	} {
		if got := sanitize(tc.in, tc.max); got != tc.want {
			t.Errorf("sanitize(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}
