package dnsbl

import (
	"net/netip"
	"strings"
	"testing"
)

// A list publishes as listing codes only what clients, this package's
// Lookup among them, take for a listing.
func TestCheckListingCode(t *testing.T) {
	for _, tc := range []struct {
		code string
		want string // in the error; "" for a code that may be published
	}{
		{"127.0.0.2", ""},
		{"127.0.0.4", ""},
		{"127.1.0.1", ""},
		{"127.255.254.9", ""},
		{"::ffff:127.0.0.10", ""},
		{"127.0.0.1", "test point"},
		{"127.0.0.0", "not a listing code"},
		{"127.255.255.254", "refusal of their resolver"},
		{"10.0.0.2", "not in 127.0.0.0/8"},
		{"2001:db8::2", "not in 127.0.0.0/8"},
	} {
		t.Run(tc.code, func(t *testing.T) {
			err := CheckListingCode(netip.MustParseAddr(tc.code))
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("CheckListingCode(%s) = %v, want %q", tc.code, err, tc.want)
			}
		})
	}
}
