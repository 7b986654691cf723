package iplist

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

func mustList(t testing.TB, lines ...string) *List {
	t.Helper()
	var entries []Entry
	for _, s := range lines {
		e, ok, err := parseLine(s)
		if err != nil || !ok {
			t.Fatalf("line %q: ok=%v %v", s, ok, err)
		}
		entries = append(entries, e)
	}
	return Build(entries)
}

func TestLookupLongestPrefix(t *testing.T) {
	l := mustList(t,
		"10.0.0.0/8 a",
		"10.1.0.0/16 b",
		"10.1.2.0/24 c",
		"10.1.2.3 d",
		"10.2.0.0/16 e",
		"192.0.2.0/24 f",
		"255.255.255.255 g",
		"2001:db8::/32 h",
		"2001:db8:1::/48 i",
		"2001:db8:1::1 j",
		"::ffff:198.51.100.0/120 k",
		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff l",
		"0.0.0.0/32 m",
	)
	tests := []struct {
		ip   string
		want string // category, "" for no match
	}{
		{"10.0.0.0", "a"},
		{"10.0.0.1", "a"},
		{"10.1.0.1", "b"},
		{"10.1.2.2", "c"},
		{"10.1.2.3", "d"},
		{"10.1.2.4", "c"},
		{"10.1.2.255", "c"},
		{"10.1.3.0", "b"},
		{"10.1.255.255", "b"},
		{"10.2.255.255", "e"},
		{"10.3.0.0", "a"},
		{"10.255.255.255", "a"},
		{"11.0.0.0", ""},
		{"9.255.255.255", ""},
		{"192.0.2.255", "f"},
		{"192.0.3.0", ""},
		{"255.255.255.255", "g"},
		{"255.255.255.254", ""},
		{"0.0.0.0", "m"},
		{"0.0.0.1", ""},
		{"::ffff:10.1.2.3", "d"},       // mapped input is looked up as IPv4
		{"198.51.100.7", "k"},          // mapped entry was stored as IPv4
		{"::ffff:198.51.100.7", "k"},   // both
		{"::a01:203", ""},              // 10.1.2.3's bits, but a different IPv6 address
		{"2001:db8::1", "h"},           //
		{"2001:db8:1::1", "j"},         //
		{"2001:db8:1::2", "i"},         //
		{"2001:db8:1:ffff::", "i"},     //
		{"2001:db8:2::", "h"},          //
		{"2001:db8:ffff:ffff::1", "h"}, //
		{"2001:db9::", ""},             //
		{"2001:db7:ffff::", ""},        //
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "l"},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", ""},
		{"fe80::1%eth0", ""},
		{"2001:db8:1::1%eth0", "j"}, // the zone does not change the address
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			e, ok := l.Lookup(netip.MustParseAddr(tt.ip))
			if got := map[bool]string{true: e.Category}[ok]; got != tt.want || ok != (tt.want != "") {
				t.Errorf("Lookup(%s) = %q, %v; want %q", tt.ip, e.Category, ok, tt.want)
			}
			if ok && !e.Prefix.Contains(netip.MustParseAddr(tt.ip).Unmap().WithZone("")) {
				t.Errorf("Lookup(%s) returned %v, which does not contain it", tt.ip, e.Prefix)
			}
		})
	}
	if _, ok := l.Lookup(netip.Addr{}); ok {
		t.Error("the invalid address matched")
	}
}

func TestLookupWholeSpace(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		ip    string
		want  string
	}{
		{"v4 /0", []string{"0.0.0.0/0 all", "10.0.0.0/8 ten"}, "203.0.113.9", "all"},
		{"v4 /0 inner", []string{"0.0.0.0/0 all", "10.0.0.0/8 ten"}, "10.9.9.9", "ten"},
		{"v4 /0 top", []string{"0.0.0.0/0 all", "255.255.255.255 top"}, "255.255.255.254", "all"},
		{"v4 /0 not v6", []string{"0.0.0.0/0 all"}, "2001:db8::1", ""},
		{"v6 /0", []string{"::/0 all", "2001:db8::/32 doc"}, "2001:db9::1", "all"},
		{"v6 /0 not v4", []string{"::/0 all"}, "192.0.2.1", ""},
		{"v6 /0 not mapped", []string{"::/0 all"}, "::ffff:192.0.2.1", ""},
		{"mapped /96 is v4 /0", []string{"::ffff:0:0/96 all4"}, "192.0.2.1", "all4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, ok := mustList(t, tt.lines...).Lookup(netip.MustParseAddr(tt.ip))
			if ok != (tt.want != "") || e.Category != tt.want {
				t.Errorf("Lookup(%s) = %q, %v; want %q", tt.ip, e.Category, ok, tt.want)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	tests := []struct {
		name    string
		entries []Entry
		want    []Entry // Entries() afterwards
	}{
		{
			name: "duplicate prefix: last wins",
			entries: []Entry{
				{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Category: "spam-source", Comment: "old"},
				{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Category: "zombie", Comment: "new"},
			},
			want: []Entry{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Category: "zombie", Comment: "new"}},
		},
		{
			name: "masked, unmapped, invalid skipped",
			entries: []Entry{
				{Prefix: netip.MustParsePrefix("192.0.2.77/24"), Category: "a"},
				{Prefix: netip.MustParsePrefix("::ffff:198.51.100.1/128"), Category: "b"},
				{Prefix: netip.Prefix{}, Category: "c"},
			},
			want: []Entry{
				{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Category: "a"},
				{Prefix: netip.MustParsePrefix("198.51.100.1/32"), Category: "b"},
			},
		},
		{
			name: "ordered by address then length, v4 first",
			entries: []Entry{
				{Prefix: netip.MustParsePrefix("2001:db8::/32")},
				{Prefix: netip.MustParsePrefix("10.1.0.0/16")},
				{Prefix: netip.MustParsePrefix("10.0.0.0/8")},
			},
			want: []Entry{
				{Prefix: netip.MustParsePrefix("10.0.0.0/8")},
				{Prefix: netip.MustParsePrefix("10.1.0.0/16")},
				{Prefix: netip.MustParsePrefix("2001:db8::/32")},
			},
		},
		{name: "empty", entries: nil, want: []Entry{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := Build(tt.entries)
			got := l.Entries()
			if len(got) != len(tt.want) || l.Len() != len(tt.want) {
				t.Fatalf("Entries() = %v (Len %d), want %v", got, l.Len(), tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("entry %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestEmptyAndNilList(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	for name, l := range map[string]*List{"nil": nil, "zero": {}, "built empty": Build(nil)} {
		t.Run(name, func(t *testing.T) {
			if _, ok := l.Lookup(ip); ok || l.Len() != 0 {
				t.Errorf("empty list matched or has Len %d", l.Len())
			}
		})
	}
}

// naiveLookup is the definition Lookup must agree with: the longest of
// ip's enclosing prefixes that is in the list.
func naiveLookup(byPrefix map[netip.Prefix]Entry, ip netip.Addr) (Entry, bool) {
	ip = ip.Unmap()
	for bits := ip.BitLen(); bits >= 0; bits-- {
		p, _ := ip.Prefix(bits)
		if e, ok := byPrefix[p]; ok {
			return e, true
		}
	}
	return Entry{}, false
}

// randomEntries makes nested and overlapping prefixes clustered in a few
// networks, so that many addresses have several candidate matches.
func randomEntries(r *rand.Rand, n int, v6 bool) []Entry {
	entries := make([]Entry, n)
	for i := range entries {
		var a netip.Addr
		var bits int
		if v6 {
			var b [16]byte
			b[0], b[1], b[2] = 0x20, 0x01, byte(r.IntN(4))
			for j := 3; j < 16; j++ {
				b[j] = byte(r.UintN(256))
			}
			a, bits = netip.AddrFrom16(b), 16+r.IntN(113)
		} else {
			a = netip.AddrFrom4([4]byte{byte(10 + r.IntN(3)), byte(r.IntN(8)), byte(r.UintN(256)), byte(r.UintN(256))})
			bits = 8 + r.IntN(25)
		}
		p, _ := a.Prefix(bits)
		entries[i] = Entry{Prefix: p, Category: p.String()}
	}
	return entries
}

func randomQuery(r *rand.Rand, entries []Entry) netip.Addr {
	e := entries[r.IntN(len(entries))]
	a := e.Prefix.Addr().AsSlice()
	// Flip some low bits: sometimes inside the prefix, sometimes out.
	for k := r.IntN(3 * len(a)); k > 0; k-- {
		a[len(a)-1-r.IntN(len(a))] ^= byte(1 << r.IntN(8))
	}
	ip, _ := netip.AddrFromSlice(a)
	return ip
}

func TestLookupAgreesWithNaive(t *testing.T) {
	tests := []struct {
		name string
		n    int
		v6   bool
	}{
		{"v4 small", 50, false},
		{"v4 indexed", 5000, false}, // enough ranges for the /16 index
		{"v6 small", 50, true},
		{"v6 large", 5000, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, uint64(tt.n)))
			entries := randomEntries(r, tt.n, tt.v6)
			l := Build(entries)
			if indexed := l.v4.first16 != nil || l.v6.first16 != nil; indexed != (tt.n >= 5000) {
				t.Fatalf("/16 index built: %v; the test means to cover both searches", indexed)
			}
			byPrefix := make(map[netip.Prefix]Entry)
			for _, e := range l.Entries() {
				byPrefix[e.Prefix] = e
			}
			for range 5000 {
				ip := randomQuery(r, entries)
				got, gok := l.Lookup(ip)
				want, wok := naiveLookup(byPrefix, ip)
				if gok != wok || got != want {
					t.Fatalf("Lookup(%s) = %v %v, want %v %v", ip, got.Prefix, gok, want.Prefix, wok)
				}
			}
		})
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	l := Build(append(randomEntries(r, 3000, false), randomEntries(r, 3000, true)...))
	ips := []netip.Addr{
		netip.MustParseAddr("10.1.2.3"),
		netip.MustParseAddr("::ffff:10.1.2.3"),
		netip.MustParseAddr("2001:db8::1"),
	}
	for _, ip := range ips {
		if n := testing.AllocsPerRun(100, func() { l.Lookup(ip) }); n != 0 {
			t.Errorf("Lookup(%s) allocates %.1f times, want 0", ip, n)
		}
	}
}
