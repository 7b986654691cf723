package dnsbl

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestQueryName(t *testing.T) {
	tests := []struct {
		name string
		ip   string
		zone string
		want string
	}{
		{"ipv4 test point", "127.0.0.2", "zen.example", "2.0.0.127.zen.example."},
		{"ipv4 all digit widths", "192.0.2.99", "bl.example", "99.2.0.192.bl.example."},
		{"ipv4 255 and 0", "255.10.0.1", "bl.example", "1.0.10.255.bl.example."},
		{"zone with trailing dot", "127.0.0.2", "zen.example.", "2.0.0.127.zen.example."},
		{"ipv4-mapped ipv6 is unmapped", "::ffff:192.0.2.1", "bl.example", "1.2.0.192.bl.example."},
		// RFC 5782 section 2.4 example, 2001:db8:1:2:3:4:567:89ab.
		{"ipv6 rfc 5782 example", "2001:db8:1:2:3:4:567:89ab", "ugly.example.com",
			"b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."},
		{"ipv6 test point ::2", "::2", "bl.example",
			"2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.bl.example."},
		{"ipv6 zone index ignored", "fe80::1%eth0", "bl.example",
			"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.bl.example."},
		{"empty zone", "127.0.0.2", "", "2.0.0.127."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ip := netip.MustParseAddr(tt.ip)
			if got := QueryName(ip, tt.zone); got != tt.want {
				t.Errorf("QueryName(%s, %q) = %q, want %q", tt.ip, tt.zone, got, tt.want)
			}
			prefix := []byte("x:")
			if got := string(AppendQueryName(prefix, ip, tt.zone)); got != "x:"+tt.want {
				t.Errorf("AppendQueryName(%q, %s, %q) = %q, want %q", prefix, tt.ip, tt.zone, got, "x:"+tt.want)
			}
		})
	}
}

func TestQueryNameInvalidIP(t *testing.T) {
	if got := QueryName(netip.Addr{}, "bl.example"); got != "" {
		t.Errorf("QueryName(invalid) = %q, want empty", got)
	}
	dst := []byte("keep")
	if got := string(AppendQueryName(dst, netip.Addr{}, "bl.example")); got != "keep" {
		t.Errorf("AppendQueryName(invalid) = %q, want dst unchanged", got)
	}
}

// A caller that reuses its buffer must not pay an allocation per name.
func TestAppendQueryNameNoAlloc(t *testing.T) {
	buf := make([]byte, 0, 128)
	for _, s := range []string{"192.0.2.1", "2001:db8::1"} {
		ip := netip.MustParseAddr(s)
		allocs := testing.AllocsPerRun(100, func() {
			buf = AppendQueryName(buf[:0], ip, "zen.example.org")
		})
		if allocs != 0 {
			t.Errorf("AppendQueryName(%s) allocates %v times per call with a large enough dst", s, allocs)
		}
	}
}

var sinkName string

func BenchmarkQueryNameV4(b *testing.B) {
	ip := netip.MustParseAddr("192.0.2.123")
	b.ReportAllocs()
	for b.Loop() {
		sinkName = QueryName(ip, "zen.spamhaus.org")
	}
}

func BenchmarkQueryNameV6(b *testing.B) {
	ip := netip.MustParseAddr("2001:db8:1:2:3:4:567:89ab")
	b.ReportAllocs()
	for b.Loop() {
		sinkName = QueryName(ip, "zen.spamhaus.org")
	}
}

func BenchmarkAppendQueryNameV4(b *testing.B) {
	ip := netip.MustParseAddr("192.0.2.123")
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendQueryName(buf[:0], ip, "zen.spamhaus.org")
	}
}

func BenchmarkAppendQueryNameV6(b *testing.B) {
	ip := netip.MustParseAddr("2001:db8:1:2:3:4:567:89ab")
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendQueryName(buf[:0], ip, "zen.spamhaus.org")
	}
}

// The query name is the reverse-DNS name with the list's zone in place of
// in-addr.arpa or ip6.arpa; miekg/dns's ReverseAddr is an independent
// implementation to compare with.
func FuzzQueryName(f *testing.F) {
	f.Add([]byte{127, 0, 0, 2})
	f.Add([]byte{255, 255, 255, 255})
	f.Add(netip.MustParseAddr("2001:db8:1:2:3:4:567:89ab").AsSlice())
	f.Add(netip.MustParseAddr("::ffff:192.0.2.1").AsSlice())
	f.Fuzz(func(t *testing.T, b []byte) {
		ip, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		rev, err := dns.ReverseAddr(ip.Unmap().String())
		if err != nil {
			t.Fatalf("ReverseAddr(%s): %v", ip, err)
		}
		rev = strings.TrimSuffix(strings.TrimSuffix(rev, "in-addr.arpa."), "ip6.arpa.")
		if got, want := QueryName(ip, "bl.example"), rev+"bl.example."; got != want {
			t.Errorf("QueryName(%s) = %q, want %q", ip, got, want)
		}
	})
}
