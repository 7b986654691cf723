package milter

import "testing"

func TestSendmailSafe(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"100% sure %s", "100%% sure %%s"},
		{"no percent", "no percent"},
		{"%", "%%"},
	} {
		if got := sendmailSafe(tc.in); got != tc.want {
			t.Errorf("sendmailSafe(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
