package web

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestGenericPTR(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.7")
	v6 := netip.MustParseAddr("2001:db8::c000:207")
	tests := []struct {
		name    string
		ip      netip.Addr
		generic bool
	}{
		{"mail.example.org", v4, false},
		{"mx1.example.net", v4, false},
		{"smtp-out-2.mail.example.com", v4, false},
		{"host.example.org", v4, false}, // a weak word alone is not enough
		{"dsl-192-0-2-7.example.net", v4, true},
		{"7-2-0-192.dyn.example.net", v4, true},
		{"192.0.2.7.example.net", v4, true},
		{"c-192-0-2-7.hsd1.ca.example.net", v4, true},
		{"ip192000002007.example.net", v4, true},
		{"c0000207.example.net", v4, true},
		{"static-7.2.0.192.example.net", v4, true},
		{"pool-12-34.example.net", v4, true}, // a strong word alone
		{"adsl12.example.net", v4, true},
		{"ppp-x.example.net", v4, true},
		{"dhcp.example.net", v4, true},
		{"cable.example.net", v4, true},
		{"mail2.example.org", v4, false}, // one octet is a coincidence
		{"dynamic.example.net", v4, true},
		{"dsl.example.net", v4, true},
		{"example.net", v4, false}, // the provider's domain alone says nothing
		{"customer-c000-207.example.net", v6, true},
		{"mail.example.org", v6, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			why := genericReasons(tc.name, tc.ip)
			if (len(why) > 0) != tc.generic {
				t.Errorf("genericReasons(%q, %s) = %q, want generic %v", tc.name, tc.ip, why, tc.generic)
			}
		})
	}
}

func TestLimiter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	l := newLimiter(rate.Every(time.Second), 2, 4, clock)
	a := netip.MustParseAddr("192.0.2.1")
	// A burst of 2: the first two lookups pass, the third waits.
	if got := []bool{l.allow(a), l.allow(a), l.allow(a)}; !slices.Equal(got, []bool{true, true, false}) {
		t.Fatalf("three lookups at once: allowed %v, want [true true false]", got)
	}
	// Another host of the same IPv6 /64 shares the bucket; another /64 does not.
	b1, b2, c := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::ffff"), netip.MustParseAddr("2001:db8:1::1")
	l.allow(b1)
	l.allow(b2)
	if l.allow(b1) {
		t.Error("a /64 is one client")
	}
	if !l.allow(c) {
		t.Error("another /64 is another client")
	}
	now = now.Add(time.Second)
	if !l.allow(a) {
		t.Error("token not refilled after 1s")
	}
	// The map stays bounded however many clients come.
	for i := range 1000 {
		l.allow(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
		if n := l.len(); n > 4 {
			t.Fatalf("limiter holds %d clients, max 4", n)
		}
	}
	// A reload's new limits apply to the next lookup.
	l.setLimit(rate.Every(time.Hour), 1)
	d := netip.MustParseAddr("192.0.2.99")
	if got := []bool{l.allow(d), l.allow(d)}; !slices.Equal(got, []bool{true, false}) {
		t.Errorf("after setLimit(burst 1): allowed %v, want [true false]", got)
	}
}

func TestParseIP(t *testing.T) {
	good := map[string]string{"192.0.2.7": "192.0.2.7", "::ffff:192.0.2.7": "192.0.2.7", "2001:DB8::1": "2001:db8::1", "[::1]": "::1", " 10.0.0.1 ": "10.0.0.1"}
	for in, want := range good {
		ip, err := parseIP(in)
		if err != nil || ip.String() != want {
			t.Errorf("parseIP(%q) = %v, %v; want %s", in, ip, err, want)
		}
	}
	for _, in := range []string{"", "1.2.3", "1.2.3.4/32", "fe80::1%eth0", "example.org", "1.2.3.256", "::g"} {
		if _, err := parseIP(in); err == nil {
			t.Errorf("parseIP(%q) accepted", in)
		}
	}
}
