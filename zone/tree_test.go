package zone

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/iplist"
)

const testApex = "bl.example.org."

func testZone() Zone {
	z := Zone{
		Name:      "BL.example.org",
		TTL:       5 * time.Minute,
		NS:        []string{"ns1.example.org", "ns2.example.net."},
		SOA:       SOA{Refresh: time.Hour, Retry: 10 * time.Minute, Expire: 7 * 24 * time.Hour, Minimum: 5 * time.Minute},
		Codes:     map[string]netip.Addr{"zombie": netip.MustParseAddr("127.0.0.4"), "dynamic": netip.MustParseAddr("127.0.0.10")},
		TXT:       "{category} {ip}: {reason} see {url}",
		PublicURL: "https://lookup.example.org/",
	}
	if err := z.normalize(); err != nil {
		panic(err)
	}
	return z
}

func compileTest(t testing.TB, z Zone, ls []Listing) *built {
	t.Helper()
	return z.compile(parseTemplate(z.TXT), ls, time.Now())
}

func lst(p, category string) Listing {
	pp := netip.MustParsePrefix(p)
	return Listing{Prefix: pp, Category: category, Reason: "r " + p}
}

// records is the zone as a secondary holds it: every owner name with its
// A and TXT, and every name that exists (owners and the names above them).
type records struct {
	data   map[string]rdata
	exists map[string]bool
}

func materialize(b *built, apexName string) records {
	r := records{data: map[string]rdata{}, exists: map[string]bool{apexName: true}}
	addName := func(name string, rd rdata) {
		r.data[name] = rd
		for n := name; n != apexName; {
			r.exists[n] = true
			_, rest, _ := strings.Cut(n, ".")
			n = rest
		}
	}
	t := b.tree
	t.walk(func(path []sym, n *tnode) bool {
		if n.own >= 0 {
			addName(string(appendName(nil, path, false, apexName)), t.data[n.own])
		}
		if n.wild >= 0 {
			addName(string(appendName(nil, path, true, apexName)), t.data[n.wild])
		}
		if len(path) > 0 {
			r.exists[string(appendName(nil, path, false, apexName))] = true
		}
		return true
	})
	return r
}

// resolve is RFC 4592 over the records, written independently of the tree.
func (r records) resolve(apexName, qname string) (int, *rdata) {
	qname = strings.ToLower(qname)
	if !dns.IsSubDomain(apexName, qname) {
		return dns.RcodeRefused, nil
	}
	if r.exists[qname] {
		if rd, ok := r.data[qname]; ok {
			return dns.RcodeSuccess, &rd
		}
		return dns.RcodeSuccess, nil
	}
	ce := qname
	for !r.exists[ce] {
		_, ce, _ = strings.Cut(ce, ".")
	}
	if rd, ok := r.data["*."+ce]; ok {
		return dns.RcodeSuccess, &rd
	}
	return dns.RcodeNameError, nil
}

// target is what an address must answer: the longest listing containing
// it, with the RFC 5782 test points on top. A nil rdata: not listed.
func target(z Zone, ls []Listing, a netip.Addr) *rdata {
	type cand struct {
		p  netip.Prefix
		rd *rdata
	}
	var cands []cand
	tpl := parseTemplate(z.TXT)
	for _, l := range ls {
		p, _ := iplist.Canonical(l.Prefix)
		if p.Contains(a) {
			rd := rdata{a: z.code(l.Category), txt: string(cleanTXT(z.render(nil, tpl, p, l.Category, l.Reason)))}
			cands = append(cands, cand{p, &rd})
		}
	}
	for _, tp := range []netip.Prefix{testListed4, testListed6} {
		if tp.Contains(a) {
			rd := rdata{a: [4]byte{127, 0, 0, 2}, txt: string(cleanTXT(z.render(nil, tpl, testListed4, testCategory, testReason)))}
			return &rd
		}
	}
	if testUnlisted4.Contains(a) || testUnlisted6.Contains(a) {
		return nil
	}
	var best *cand
	for i := range cands {
		// The last listing of a prefix given twice wins, as in compile.
		if best == nil || cands[i].p.Bits() >= best.p.Bits() {
			best = &cands[i]
		}
	}
	if best == nil {
		return nil
	}
	return best.rd
}

// boundaries are the first and last address of each listing and the
// addresses just outside, plus the test points.
func boundaries(ls []Listing) []netip.Addr {
	var ps []netip.Prefix
	for _, l := range ls {
		p, _ := iplist.Canonical(l.Prefix)
		ps = append(ps, p)
	}
	return testkit.Boundaries(ps,
		netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"),
		netip.MustParseAddr("::ffff:7f00:1"), netip.MustParseAddr("::ffff:7f00:2"), netip.MustParseAddr("::ffff:7f00:3"))
}

func wireName(t testing.TB, name string) []byte {
	t.Helper()
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(dns.Fqdn(name), buf, 0, nil, false)
	if err != nil {
		t.Fatalf("pack %q: %v", name, err)
	}
	return buf[:n]
}

// checkZone asserts that every boundary address answers its target through
// the tree, and that the tree answers every name as the materialized
// records do under RFC 4592.
func checkZone(t *testing.T, z Zone, ls []Listing, extraNames []string) {
	t.Helper()
	b := compileTest(t, z, ls)
	ap := newApex(z.Name)
	recs := materialize(b, z.Name)
	check := func(name string, want *rdata, wantKnown bool) {
		t.Helper()
		m := b.tree.resolve(&ap, wireName(t, name))
		got := b.tree.rdataAt(m.data)
		rc, rrd := recs.resolve(z.Name, name)
		if m.rcode != rc || (got == nil) != (rrd == nil) || got != nil && *got != *rrd {
			t.Errorf("%s: tree says rcode %s data %v, the records say rcode %s data %v",
				name, dns.RcodeToString[m.rcode], got, dns.RcodeToString[rc], rrd)
		}
		if !wantKnown {
			return
		}
		if (got == nil) != (want == nil) || got != nil && *got != *want {
			t.Errorf("%s: answers %v (rcode %s), want %v", name, got, dns.RcodeToString[m.rcode], want)
		}
		if want == nil && m.rcode != dns.RcodeNameError && m.rcode != dns.RcodeSuccess {
			t.Errorf("%s: rcode %s for an unlisted address", name, dns.RcodeToString[m.rcode])
		}
	}
	for _, a := range boundaries(ls) {
		check(addrName(a, z.Name), target(z, ls, a), true)
	}
	for _, n := range extraNames {
		check(n, nil, false)
	}
}

func TestTreeAnswersLikeTheListings(t *testing.T) {
	z := testZone()
	tests := []struct {
		name  string
		ls    []Listing
		names []string // more names whose answer must equal the records'
	}{
		{"empty", nil, []string{"0.0.127." + testApex, "7.f.0.0." + testApex, testApex}},
		{"one address", []Listing{lst("192.0.2.7/32", "zombie")}, []string{"2.0.192." + testApex, "x.7.2.0.192." + testApex}},
		{"a /24", []Listing{lst("192.0.2.0/24", "dynamic")}, []string{"foo.2.0.192." + testApex, "*.2.0.192." + testApex, "x.*.2.0.192." + testApex}},
		{"a /20", []Listing{lst("10.2.0.0/20", "dynamic")}, []string{"15.2.10." + testApex, "16.2.10." + testApex}},
		{"nested", []Listing{lst("10.0.0.0/8", "spam-source"), lst("10.1.0.0/16", "dynamic"), lst("10.1.2.0/23", "zombie"), lst("10.1.2.3/32", "local"), lst("10.1.3.255/32", "zombie")},
			[]string{"2.1.10." + testApex, "x.3.2.1.10." + testApex, "x.y.4.1.10." + testApex}},
		{"digits: IPv4 /24 that IPv6 names share", []Listing{lst("1.2.3.0/24", "zombie")},
			[]string{"a.3.2.1." + testApex, "0.a.3.2.1." + testApex, "0.5.3.2.1." + testApex}},
		{"digits: IPv4 /8 and /16", []Listing{lst("1.0.0.0/8", "zombie"), lst("2.3.0.0/16", "dynamic")}, nil},
		{"IPv6 /12 over IPv4 names", []Listing{lst("1230::/12", "zombie")}, []string{"100.3.2.1." + testApex, "5.3.2.1." + testApex}},
		{"IPv6 /3", []Listing{lst("2000::/3", "spam-source")}, nil},
		{"IPv4 and IPv6 on the same labels", []Listing{lst("1.2.3.0/24", "zombie"), lst("1235::/16", "dynamic"), lst("1.2.3.5/32", "local"), lst("1234:5600::/24", "zombie")}, nil},
		{"IPv6 nested", []Listing{lst("2001:db8::/32", "dynamic"), lst("2001:db8:bad::/48", "zombie"), lst("2001:db8:bad::1/128", "local"), lst("2001:db8:bad:1::/63", "spam-source")}, nil},
		{"test points under listings", []Listing{lst("127.0.0.0/8", "zombie"), lst("::/0", "spam-source")},
			[]string{"1.0.0.127." + testApex, "3.0.0.127." + testApex}},
		{"everything", []Listing{lst("0.0.0.0/0", "zombie")}, []string{"www." + testApex, "a.b.c.d.e." + testApex}},
		{"a listed test point", []Listing{lst("127.0.0.2/32", "zombie"), lst("::ffff:127.0.0.2/128", "dynamic")}, nil},
		{"mapped prefixes count as IPv4", []Listing{lst("::ffff:198.51.100.0/120", "zombie")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkZone(t, z, tt.ls, tt.names) })
	}
}

// TestTreeRandom builds random nested lists in the places where IPv4 and
// IPv6 names collide and checks every boundary address and many other
// names.
func TestTreeRandom(t *testing.T) {
	z := testZone()
	rng := rand.New(rand.NewPCG(1, 2))
	cats := []string{"zombie", "dynamic", "spam-source"}
	for round := range 60 {
		var ls []Listing
		for range 1 + rng.IntN(25) {
			var p netip.Prefix
			switch rng.IntN(4) {
			case 0: // IPv4 with digit labels
				a := netip.AddrFrom4([4]byte{byte(rng.IntN(3)), byte(rng.IntN(10)), byte(rng.IntN(12)), byte(rng.IntN(256))})
				p, _ = a.Prefix(4 + rng.IntN(29))
			case 1: // IPv4 anywhere near
				a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))})
				p, _ = a.Prefix(8 + rng.IntN(25))
			case 2: // IPv6 over the same labels
				var b [16]byte
				b[0] = byte(rng.IntN(3))<<4 | byte(rng.IntN(16))
				b[1] = byte(rng.IntN(16))<<4 | byte(rng.IntN(16))
				b[15] = byte(rng.IntN(256))
				p, _ = netip.AddrFrom16(b).Prefix(4 + rng.IntN(125))
			default: // IPv6 near the test points
				b := netip.MustParseAddr("::ffff:7f00:0").As16()
				b[15] = byte(rng.IntN(4))
				b[rng.IntN(12)] ^= byte(rng.IntN(2))
				p, _ = netip.AddrFrom16(b).Prefix(80 + rng.IntN(49))
			}
			l := Listing{Prefix: p, Category: cats[rng.IntN(len(cats))]}
			if rng.IntN(3) == 0 {
				l.Reason = "same" // same data for nested listings, to be pruned
			} else {
				l.Reason = fmt.Sprint(rng.IntN(1000))
			}
			ls = append(ls, l)
		}
		var names []string
		for range 40 {
			var labels []string
			for range 1 + rng.IntN(6) {
				labels = append(labels, []string{"0", "1", "2", "3", "a", "f", "10", "255", "*", "x", "01"}[rng.IntN(11)])
			}
			names = append(names, strings.Join(labels, ".")+"."+testApex)
		}
		t.Run(fmt.Sprint(round), func(t *testing.T) { checkZone(t, z, ls, names) })
	}
}

// TestTreeShape pins the names a secondary gets for the usual listings.
func TestTreeShape(t *testing.T) {
	z := testZone()
	tests := []struct {
		name      string
		ls        []Listing
		wantNames int // owner names besides the test points'
	}{
		{"a /32 is one name", []Listing{lst("192.0.2.7/32", "zombie")}, 1},
		{"a /24 is one wildcard", []Listing{lst("192.0.2.0/24", "zombie")}, 1},
		{"a /20 is sixteen wildcards", []Listing{lst("10.2.0.0/20", "zombie")}, 16},
		{"a /24 with a /32 inside", []Listing{lst("192.0.2.0/24", "zombie"), lst("192.0.2.7/32", "local")}, 2},
		// *.2.0.192 stops at 2.0.192's child 5.2.0.192: it gets a wildcard
		// of its own, like its sibling /24s need none.
		{"a /16 with a /32 inside", []Listing{lst("192.0.0.0/16", "zombie"), lst("192.0.5.7/32", "local")}, 3},
		// 1.2.3.0/24 is *.3.2.1, which IPv6 names under 123x:: would match
		// without the sixteen names 0..9, a..f under it.
		{"a /24 on digit labels", []Listing{lst("1.2.3.0/24", "zombie")}, 17},
		// An IPv6 /12 never becomes a wildcard above the fourth label.
		{"an IPv6 /12", []Listing{lst("1230::/12", "zombie")}, 16},
	}
	testNames := len(materialize(compileTest(t, z, nil), z.Name).data)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs := materialize(compileTest(t, z, tt.ls), z.Name)
			if got := len(recs.data) - testNames; got != tt.wantNames {
				var names []string
				for n := range recs.data {
					names = append(names, n)
				}
				slices.Sort(names)
				t.Errorf("%d owner names besides the test points', want %d:\n%s", got, tt.wantNames, strings.Join(names, "\n"))
			}
		})
	}
}

func TestParseSym(t *testing.T) {
	for _, tt := range []struct {
		label string
		want  sym
		ok    bool
	}{
		{"0", 0, true}, {"9", 9, true}, {"10", 10, true}, {"255", 255, true}, {"256", 0, false},
		{"a", symA, true}, {"F", symA + 5, true}, {"g", 0, false}, {"01", 0, false}, {"00", 0, false},
		{"1a", 0, false}, {"", 0, false}, {"1000", 0, false}, {"*", 0, false},
	} {
		got, ok := parseSym([]byte(tt.label))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseSym(%q) = %d, %v; want %d, %v", tt.label, got, ok, tt.want, tt.ok)
		}
		if ok {
			if back := string(appendSym(nil, got)); back != strings.ToLower(tt.label) {
				t.Errorf("appendSym(%d) = %q, want %q", got, back, tt.label)
			}
		}
	}
}
