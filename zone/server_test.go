package zone

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
)

var serverListings = []Listing{
	{Prefix: netip.MustParsePrefix("198.18.2.7/32"), Category: "zombie", Reason: "trap hit"},
	{Prefix: netip.MustParsePrefix("198.19.100.0/24"), Category: "dynamic", Reason: "generic rDNS"},
	{Prefix: netip.MustParsePrefix("198.19.100.77/32"), Category: "spam-source", Reason: "spam to users"},
	{Prefix: netip.MustParsePrefix("2001:db8:bad::/48"), Category: "zombie", Reason: "botnet"},
	{Prefix: netip.MustParsePrefix("10.0.0.0/20"), Category: "local", Reason: "ours"},
}

func TestAnswers(t *testing.T) {
	ts := startServer(t, testOptions(), serverListings)
	const zone = "bl.example.org."
	type want struct {
		rcode  int
		a, txt string
		soa    bool // an SOA in the authority section
		aa     bool
	}
	tests := []struct {
		name  string
		qname string
		qtype uint16
		want  want
	}{
		{"listed address", "7.2.18.198." + zone, dns.TypeA, want{rcode: dns.RcodeSuccess, a: "127.0.0.4", aa: true}},
		{"its TXT", "7.2.18.198." + zone, dns.TypeTXT, want{rcode: dns.RcodeSuccess, txt: "zombie: trap hit; see https://lookup.example.org/ip/198.18.2.7", aa: true}},
		{"ANY gives both", "7.2.18.198." + zone, dns.TypeANY, want{rcode: dns.RcodeSuccess, a: "127.0.0.4", txt: "zombie: trap hit; see https://lookup.example.org/ip/198.18.2.7", aa: true}},
		{"other type: NODATA", "7.2.18.198." + zone, dns.TypeAAAA, want{rcode: dns.RcodeSuccess, soa: true, aa: true}},
		{"in a /24", "1.100.19.198." + zone, dns.TypeA, want{rcode: dns.RcodeSuccess, a: "127.0.0.10", aa: true}},
		{"the /24's TXT names the network", "1.100.19.198." + zone, dns.TypeTXT, want{rcode: dns.RcodeSuccess, txt: "dynamic: generic rDNS; see https://lookup.example.org/ip/198.19.100.0", aa: true}},
		{"a /32 in the /24 wins", "77.100.19.198." + zone, dns.TypeA, want{rcode: dns.RcodeSuccess, a: "127.0.0.2", aa: true}},
		{"a /20: last address", "255.15.0.10." + zone, dns.TypeA, want{rcode: dns.RcodeSuccess, a: "127.0.0.2", aa: true}},
		{"a /20: just outside", "0.16.0.10." + zone, dns.TypeA, want{rcode: dns.RcodeNameError, soa: true, aa: true}},
		{"category without a code: 127.0.0.2", "1.0.0.10." + zone, dns.TypeTXT, want{rcode: dns.RcodeSuccess, txt: "local: ours; see https://lookup.example.org/ip/10.0.0.0", aa: true}},
		{"not listed", "8.2.18.198." + zone, dns.TypeA, want{rcode: dns.RcodeNameError, soa: true, aa: true}},
		{"empty non-terminal above a /32", "2.18.198." + zone, dns.TypeA, want{rcode: dns.RcodeSuccess, soa: true, aa: true}},
		{"empty non-terminal above a /24", "100.19.198." + zone, dns.TypeA, want{rcode: dns.RcodeSuccess, soa: true, aa: true}},
		{"below a /32: nothing", "x.7.2.18.198." + zone, dns.TypeA, want{rcode: dns.RcodeNameError, soa: true, aa: true}},
		{"IPv6 listed", addrName(netip.MustParseAddr("2001:db8:bad::25"), zone), dns.TypeA, want{rcode: dns.RcodeSuccess, a: "127.0.0.4", aa: true}},
		{"IPv6 next door", addrName(netip.MustParseAddr("2001:db8:bae::25"), zone), dns.TypeA, want{rcode: dns.RcodeNameError, soa: true, aa: true}},
		{"test point 127.0.0.2", "2.0.0.127." + zone, dns.TypeA, want{rcode: dns.RcodeSuccess, a: "127.0.0.2", aa: true}},
		{"test point TXT", "2.0.0.127." + zone, dns.TypeTXT, want{rcode: dns.RcodeSuccess, txt: "test: RFC 5782 test point; see https://lookup.example.org/ip/127.0.0.2", aa: true}},
		{"test point 127.0.0.1", "1.0.0.127." + zone, dns.TypeA, want{rcode: dns.RcodeNameError, soa: true, aa: true}},
		{"IPv6 test point", addrName(netip.MustParseAddr("::ffff:7f00:2"), zone), dns.TypeA, want{rcode: dns.RcodeSuccess, a: "127.0.0.2", aa: true}},
		{"IPv6 negative test point", addrName(netip.MustParseAddr("::ffff:7f00:1"), zone), dns.TypeA, want{rcode: dns.RcodeNameError, soa: true, aa: true}},
		{"apex A: NODATA", zone, dns.TypeA, want{rcode: dns.RcodeSuccess, soa: true, aa: true}},
		{"outside the zone", "7.2.18.198.example.com.", dns.TypeA, want{rcode: dns.RcodeRefused}},
		{"the parent zone", "example.org.", dns.TypeSOA, want{rcode: dns.RcodeRefused}},
		{"a zone that only ends the same", "7.2.18.198.xbl.example.org.", dns.TypeA, want{rcode: dns.RcodeRefused}},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				r := ask(t, ts.addr, network, tt.qname, tt.qtype)
				if r.Rcode != tt.want.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.want.rcode])
				}
				if got := dnstest.AnswerA(r); got != tt.want.a {
					t.Errorf("A %q, want %q", got, tt.want.a)
				}
				if got := answerTXT(r); got != tt.want.txt {
					t.Errorf("TXT %q, want %q", got, tt.want.txt)
				}
				if len(r.Answer) > 0 {
					if r.Answer[0].Header().Name != tt.qname || r.Answer[0].Header().Ttl != 300 {
						t.Errorf("answer %v: want owner %s and TTL 300", r.Answer[0], tt.qname)
					}
				}
				var soa *dns.SOA
				for _, rr := range r.Ns {
					if s, ok := rr.(*dns.SOA); ok {
						soa = s
					}
				}
				if (soa != nil) != tt.want.soa {
					t.Errorf("SOA in the authority section: %v, want %v (%v)", soa != nil, tt.want.soa, r.Ns)
				}
				if soa != nil && (soa.Hdr.Ttl != 60 || soa.Minttl != 60 || soa.Hdr.Name != zone) {
					t.Errorf("negative SOA %v: want owner %s, TTL and minimum 60", soa, zone)
				}
				if r.Authoritative != tt.want.aa {
					t.Errorf("AA %v, want %v", r.Authoritative, tt.want.aa)
				}
				if r.RecursionAvailable {
					t.Error("RA set: the zone server does not recurse")
				}
			})
		}
	}
}

func TestApex(t *testing.T) {
	ts := startServer(t, testOptions(), serverListings)
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, ts.addr, network, "bl.example.org.", dns.TypeSOA)
		soa, ok := firstRR[*dns.SOA](r.Answer)
		if !ok || soa.Ns != "ns1.example.org." || soa.Mbox != "hostmaster.example.org." || soa.Serial != ts.Serial() ||
			soa.Refresh != 3600 || soa.Retry != 600 || soa.Expire != 604800 || soa.Minttl != 60 || !r.Authoritative {
			t.Errorf("%s: SOA answer %v", network, r)
		}
		r = ask(t, ts.addr, network, "bl.example.org.", dns.TypeNS)
		var ns []string
		for _, rr := range r.Answer {
			ns = append(ns, rr.(*dns.NS).Ns)
		}
		if strings.Join(ns, " ") != "ns1.example.org. ns2.example.net." {
			t.Errorf("%s: NS %v", network, ns)
		}
	}
}

func firstRR[T dns.RR](rrs []dns.RR) (T, bool) {
	for _, rr := range rrs {
		if x, ok := rr.(T); ok {
			return x, true
		}
	}
	var zero T
	return zero, false
}

func TestQueryFormsAndFlags(t *testing.T) {
	opts := testOptions()
	long := strings.Repeat("long reason ", 30) // the TXT is cut to 255 bytes
	ls := append([]Listing{{Prefix: netip.MustParsePrefix("203.0.113.5/32"), Category: "zombie", Reason: long}}, serverListings...)
	ts := startServer(t, opts, ls)
	const name = "7.2.18.198.bl.example.org."

	t.Run("case is kept", func(t *testing.T) {
		for _, network := range []string{"udp", "tcp"} {
			q := "7.2.18.198.Bl.EXAMPLE.org."
			r := ask(t, ts.addr, network, q, dns.TypeA)
			if len(r.Answer) != 1 || r.Answer[0].Header().Name != q || r.Question[0].Name != q {
				t.Errorf("%s: answer %v for %s", network, r.Answer, q)
			}
			r = ask(t, ts.addr, network, "8.2.18.198.bL.example.ORG.", dns.TypeA)
			if soa, ok := firstRR[*dns.SOA](r.Ns); !ok || soa.Hdr.Name != "bL.example.ORG." {
				t.Errorf("%s: the negative SOA's owner should be the apex as asked: %v", network, r.Ns)
			}
			// Hex digits of IPv6 names in upper case.
			q6 := strings.ToUpper(addrName(netip.MustParseAddr("2001:db8:bad::fade"), "bl.example.org."))
			if r := ask(t, ts.addr, network, q6, dns.TypeA); dnstest.AnswerA(r) != "127.0.0.4" {
				t.Errorf("%s: %s answers %v", network, q6, r)
			}
		}
	})
	t.Run("EDNS is echoed with the DO bit", func(t *testing.T) {
		for _, network := range []string{"udp", "tcp"} {
			r := ask(t, ts.addr, network, name, dns.TypeA, func(m *dns.Msg) { m.SetEdns0(4096, true) })
			opt := r.IsEdns0()
			if opt == nil || opt.UDPSize() != DefaultUDPSize || !opt.Do() || opt.Version() != 0 {
				t.Errorf("%s: OPT %v", network, opt)
			}
			r = ask(t, ts.addr, network, name, dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, false) })
			if opt := r.IsEdns0(); opt == nil || opt.Do() {
				t.Errorf("%s: OPT %v, want one without DO", network, opt)
			}
			if r := ask(t, ts.addr, network, name, dns.TypeA); r.IsEdns0() != nil {
				t.Errorf("%s: an OPT in the answer to a query without one", network)
			}
		}
	})
	t.Run("EDNS version 1 is BADVERS", func(t *testing.T) {
		r := ask(t, ts.addr, "udp", name, dns.TypeA, func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().SetVersion(1)
		})
		if r.Rcode != dns.RcodeBadVers || len(r.Answer) != 0 {
			t.Errorf("rcode %s with %d answers, want BADVERS", dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	})
	t.Run("a 255-byte TXT fits in 512 bytes", func(t *testing.T) {
		r := ask(t, ts.addr, "udp", "5.113.0.203.bl.example.org.", dns.TypeTXT)
		if r.Truncated || len(answerTXT(r)) != 255 {
			t.Fatalf("TC %v, TXT of %d bytes", r.Truncated, len(answerTXT(r)))
		}
	})
	t.Run("class CHAOS is refused", func(t *testing.T) {
		r := ask(t, ts.addr, "udp", "version.bind.", dns.TypeTXT, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS })
		if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
			t.Errorf("CHAOS: %v", r)
		}
	})
	t.Run("no recursion, RD copied", func(t *testing.T) {
		r := ask(t, ts.addr, "udp", "www.example.com.", dns.TypeA, func(m *dns.Msg) { m.RecursionDesired = true })
		if r.Rcode != dns.RcodeRefused || r.RecursionAvailable || !r.RecursionDesired || r.Authoritative {
			t.Errorf("recursive query for a foreign name: %v", r)
		}
	})
}

// TestTruncation checks that an answer that does not fit the client's
// size goes out empty with TC, and whole over TCP.
func TestTruncation(t *testing.T) {
	opts := testOptions()
	ls := []Listing{{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Category: "zombie", Reason: strings.Repeat("r", 300)}}
	ts := startServer(t, opts, ls)
	// A 253-byte name under the /24's wildcard, and the 255-byte TXT:
	// 537 bytes.
	label := strings.Repeat("a", 60)
	q := label + "." + label + "." + label + "." + strings.Repeat("b", 40) + ".1.100.51.198.bl.example.org."
	for _, tt := range []struct {
		name    string
		edns    uint16
		network string
		wantTC  bool
	}{
		{"udp without EDNS", 0, "udp", true},
		{"udp with EDNS 512", 512, "udp", true},
		{"udp with EDNS 1232", 1232, "udp", false},
		{"tcp", 0, "tcp", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := ask(t, ts.addr, tt.network, q, dns.TypeTXT, func(m *dns.Msg) {
				if tt.edns > 0 {
					m.SetEdns0(tt.edns, false)
				}
			})
			if r.Truncated != tt.wantTC {
				t.Errorf("TC %v, want %v", r.Truncated, tt.wantTC)
			}
			if tt.wantTC && (len(r.Answer) != 0 || len(r.Ns) != 0) {
				t.Errorf("a truncated answer carries records: %v", r)
			}
			if !tt.wantTC && len(answerTXT(r)) != 255 {
				t.Errorf("TXT of %d bytes, want 255", len(answerTXT(r)))
			}
		})
	}
}

func TestOddQueries(t *testing.T) {
	ts := startServer(t, testOptions(), serverListings)
	raw := func(t *testing.T, b []byte) *dns.Msg {
		t.Helper()
		c, err := net.Dial("udp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 65535)
		n, err := c.Read(buf)
		if err != nil {
			return nil // no answer
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			t.Fatalf("the server sent a malformed answer: %v", err)
		}
		return m
	}
	query := func(edit func(*dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion("7.2.18.198.bl.example.org.", dns.TypeA)
		edit(m)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name      string
		packet    []byte
		wantRcode int // -1: no answer
	}{
		{"update opcode", query(func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate }), dns.RcodeNotImplemented},
		{"notify to the primary", query(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), dns.RcodeNotImplemented},
		{"no question", query(func(m *dns.Msg) { m.Question = nil }), dns.RcodeFormatError},
		{"two questions", query(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), dns.RcodeFormatError},
		{"a response", query(func(m *dns.Msg) { m.Response = true }), -1},
		{"too short", []byte{1, 2, 3}, -1},
		{"header only", []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, dns.RcodeFormatError},
		{"name pointing at itself", []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}, dns.RcodeFormatError},
		{"label running past the end", []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, 'a', 0, 1, 0, 1}, dns.RcodeFormatError},
		{"trailing garbage", append(query(func(*dns.Msg) {}), 1, 2, 3), dns.RcodeSuccess},
		{"MAILB", query(func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeMAILB }), dns.RcodeNotImplemented},
		{"AXFR over UDP", query(func(m *dns.Msg) { m.SetQuestion("bl.example.org.", dns.TypeAXFR) }), dns.RcodeNotImplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := raw(t, tt.packet)
			switch {
			case tt.wantRcode < 0 && r != nil:
				t.Errorf("answered %v, want no answer", r)
			case tt.wantRcode >= 0 && r == nil:
				t.Errorf("no answer, want %s", dns.RcodeToString[tt.wantRcode])
			case r != nil && r.Rcode != tt.wantRcode:
				t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.wantRcode])
			}
		})
	}
	// The server still answers.
	if r := ask(t, ts.addr, "udp", "7.2.18.198.bl.example.org.", dns.TypeA); dnstest.AnswerA(r) != "127.0.0.4" {
		t.Errorf("after the odd queries: %v", r)
	}
}

func TestNotLoadedIsServfail(t *testing.T) {
	s, err := New(testOptions())
	if err != nil {
		t.Fatal(err)
	}
	pc, l := listenPair(t)
	go s.Serve(pc, l)
	defer s.Close()
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: time.Second}
		m := new(dns.Msg)
		m.SetQuestion("2.0.0.127.bl.example.org.", dns.TypeA)
		var r *dns.Msg
		for range 50 {
			if r, _, err = c.Exchange(m, pc.LocalAddr().String()); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s: rcode %s before the first Update, want SERVFAIL", network, dns.RcodeToString[r.Rcode])
		}
	}
}

// TestFastPathEqualsSlowPath answers the same datagrams both ways and
// compares the messages.
func TestFastPathEqualsSlowPath(t *testing.T) {
	ls := append([]Listing{
		{Prefix: netip.MustParsePrefix("198.18.0.0/24"), Category: "zombie", Reason: strings.Repeat("long ", 60)},
		{Prefix: netip.MustParsePrefix("1.2.3.0/24"), Category: "zombie", Reason: "digits"},
		{Prefix: netip.MustParsePrefix("1230::/12"), Category: "dynamic", Reason: "v6"},
	}, serverListings...)
	s, err := New(testOptions())
	if err != nil {
		t.Fatal(err)
	}
	s.Update(ls)
	sn := s.snap.Load()
	label := strings.Repeat("z", 63)
	names := []string{
		"bl.example.org.", "7.2.18.198.bl.example.org.", "7.2.18.198.BL.example.org.", "8.2.18.198.bl.example.org.",
		"2.18.198.bl.example.org.", "1.100.19.198.bl.example.org.", "x.1.100.19.198.bl.example.org.",
		"*.100.19.198.bl.example.org.", "a.*.100.19.198.bl.example.org.", "1.0.18.198.bl.example.org.",
		label + "." + label + "." + label + ".5.0.18.198.bl.example.org.", "a.3.2.1.bl.example.org.",
		"5.3.2.1.bl.example.org.", "100.3.2.1.bl.example.org.", "example.org.", "org.", ".", "com.",
		addrName(netip.MustParseAddr("2001:db8:bad::1"), "bl.example.org."),
		addrName(netip.MustParseAddr("1234::1"), "bl.example.org."),
		addrName(netip.MustParseAddr("::ffff:7f00:2"), "Bl.Example.Org."),
	}
	types := []uint16{dns.TypeA, dns.TypeTXT, dns.TypeANY, dns.TypeSOA, dns.TypeNS, dns.TypeAAAA, dns.TypeMX, 0, 65535}
	edns := []func(*dns.Msg){
		func(*dns.Msg) {},
		func(m *dns.Msg) { m.SetEdns0(512, false) },
		func(m *dns.Msg) { m.SetEdns0(4096, true) },
		func(m *dns.Msg) { m.SetEdns0(100, false); m.CheckingDisabled = true },
		func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		},
	}
	local := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	from := netip.MustParseAddrPort("127.0.0.1:5353")
	n := 0
	for _, name := range names {
		for _, qt := range types {
			for i, e := range edns {
				q := new(dns.Msg)
				q.SetQuestion(name, qt)
				q.Id = uint16(n)
				q.RecursionDesired = n%2 == 0
				e(q)
				b, err := q.Pack()
				if err != nil {
					t.Fatal(err)
				}
				fast, ok := s.fastAnswer(sn, b, nil)
				if !ok {
					t.Fatalf("%s %d edns %d: not on the fast path", name, qt, i)
				}
				slow := s.slowAnswer(b, from, local, nil)
				compareAnswers(t, name+" "+dns.TypeToString[qt]+" edns "+itoa(i), fast, slow)
				n++
			}
		}
	}
}

func compareAnswers(t *testing.T, what string, fast, slow []byte) {
	t.Helper()
	var mf, ms dns.Msg
	if err := mf.Unpack(fast); err != nil {
		t.Fatalf("%s: fast answer does not parse: %v", what, err)
	}
	if err := ms.Unpack(slow); err != nil {
		t.Fatalf("%s: slow answer does not parse: %v", what, err)
	}
	mf.Compress, ms.Compress = false, false
	if mf.String() != ms.String() {
		t.Errorf("%s: the two paths differ:\nfast:\n%s\nslow:\n%s", what, mf.String(), ms.String())
	}
	if binary.BigEndian.Uint16(fast[2:]) != binary.BigEndian.Uint16(slow[2:]) {
		t.Errorf("%s: flags %04x (fast) and %04x (slow)", what, binary.BigEndian.Uint16(fast[2:]), binary.BigEndian.Uint16(slow[2:]))
	}
}

func TestTCPConnectionLimit(t *testing.T) {
	opts := testOptions()
	opts.MaxTCPConnsPerIP = 3
	ts := startServer(t, opts, serverListings)
	var conns []*dns.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 3 {
		c, err := dns.DialTimeout("tcp", ts.addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Each of the three answers.
	for _, c := range conns {
		m := new(dns.Msg)
		m.SetQuestion("7.2.18.198.bl.example.org.", dns.TypeA)
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if err := c.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		if r, err := c.ReadMsg(); err != nil || dnstest.AnswerA(r) != "127.0.0.4" {
			t.Fatalf("connection within the limit: %v %v", r, err)
		}
	}
	// The fourth is closed at once.
	c, err := dns.DialTimeout("tcp", ts.addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion("7.2.18.198.bl.example.org.", dns.TypeA)
	c.SetDeadline(time.Now().Add(2 * time.Second))
	c.WriteMsg(m)
	if r, err := c.ReadMsg(); err == nil {
		t.Fatalf("a fourth connection from the same address was answered: %v", r)
	}
	if got := ts.Stats().TCPRefused; got != 1 {
		t.Errorf("TCPRefused = %d, want 1", got)
	}
	// Closing one makes room again.
	conns[0].Close()
	conns = conns[1:]
	testkit.WaitFor(t, "a free connection slot", 5*time.Second, func() error {
		c, err := dns.DialTimeout("tcp", ts.addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		c.WriteMsg(m)
		r, err := c.ReadMsg()
		if err != nil {
			return err
		}
		return testkit.Unless(dnstest.AnswerA(r) == "127.0.0.4", "answered %q", dnstest.AnswerA(r))
	})
}

func TestShutdownEndsServe(t *testing.T) {
	s, err := New(testOptions())
	if err != nil {
		t.Fatal(err)
	}
	s.Update(nil)
	pc, l := listenPair(t)
	done := make(chan error, 1)
	go func() { done <- s.Serve(pc, l) }()
	waitAnswering(t, pc.LocalAddr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-done:
		if err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
	if err := s.ServeUDP(pc); err != ErrServerClosed {
		t.Errorf("ServeUDP after Shutdown: %v", err)
	}
}

// TestUDPBurst sends many datagrams at once, so the server reads them in
// batches, with odd ones among them, and checks each answer belongs to
// its query.
func TestUDPBurst(t *testing.T) {
	ts := startServer(t, testOptions(), serverListings)
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to, _ := net.ResolveUDPAddr("udp", ts.addr)
	want := map[uint16]string{} // id -> the A record expected ("" none, "formerr")
	const n = 600
	var packets [][]byte
	for i := range n {
		m := new(dns.Msg)
		id := uint16(i + 1)
		switch i % 5 {
		case 0:
			m.SetQuestion("7.2.18.198.bl.example.org.", dns.TypeA)
			want[id] = "127.0.0.4"
		case 1:
			m.SetQuestion(addrName(netip.AddrFrom4([4]byte{198, 19, 100, byte(i)}), "bl.example.org."), dns.TypeA)
			want[id] = "127.0.0.10"
			if byte(i) == 77 {
				want[id] = "127.0.0.2"
			}
		case 2:
			m.SetQuestion(addrName(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), "bl.example.org."), dns.TypeA)
			want[id] = ""
		case 3:
			// Two questions: FORMERR, through the other path.
			m.SetQuestion("7.2.18.198.bl.example.org.", dns.TypeA)
			m.Question = append(m.Question, m.Question[0])
			want[id] = "formerr"
		case 4:
			// A response: no answer at all.
			m.SetQuestion("7.2.18.198.bl.example.org.", dns.TypeA)
			m.Response = true
		}
		m.Id = id // SetQuestion picked a random one
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		packets = append(packets, b)
	}
	// Bursts of 50, read as they come: loopback drops what a socket
	// buffer cannot hold, and the point is the batches, not the buffers.
	type answer struct {
		b   []byte
		err error
	}
	answers := make(chan answer, n)
	go func() {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			buf := make([]byte, 65535)
			k, _, err := c.ReadFrom(buf)
			answers <- answer{buf[:k], err}
			if err != nil {
				return
			}
		}
	}()
	for i, b := range packets {
		if _, err := c.WriteTo(b, to); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	got, expected := 0, len(want)
	for got < expected {
		a := <-answers
		if a.err != nil {
			break
		}
		buf, k := a.b, len(a.b)
		var r dns.Msg
		if err := r.Unpack(buf[:k]); err != nil {
			t.Fatalf("malformed answer: %v", err)
		}
		w, ok := want[r.Id]
		if !ok {
			t.Errorf("answer to query %d, which should get none or was answered twice", r.Id)
			continue
		}
		delete(want, r.Id)
		got++
		switch {
		case w == "formerr":
			if r.Rcode != dns.RcodeFormatError {
				t.Errorf("query %d: rcode %s, want FORMERR", r.Id, dns.RcodeToString[r.Rcode])
			}
		case dnstest.AnswerA(&r) != w:
			t.Errorf("query %d (%v): A %q, want %q", r.Id, r.Question, dnstest.AnswerA(&r), w)
		}
	}
	// Loopback drops nothing at this size, but a busy machine may: most
	// must have come back, and none of them wrong.
	if got < expected*9/10 {
		t.Errorf("%d answers to %d queries", got, expected)
	}
}

// TestPanicEndsOneQuery serves a broken snapshot (a tree whose root is
// out of range, which no build makes): the queries that touch it are
// dropped and counted, over UDP and TCP, OnPanic is told of each, and the
// server goes on.
func TestPanicEndsOneQuery(t *testing.T) {
	opts := testOptions()
	var told atomic.Int32
	opts.OnPanic = func() { told.Add(1) }
	ts := startServer(t, opts, serverListings)
	good := ts.snap.Load()
	broken := *good
	broken.b = &built{tree: &tree{root: 1 << 20}, digest: good.b.digest}
	ts.snap.Store(&broken)
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 300 * time.Millisecond}
		m := new(dns.Msg)
		m.SetQuestion("7.2.18.198.bl.example.org.", dns.TypeA)
		if r, _, err := c.Exchange(m, ts.addr); err == nil {
			t.Errorf("%s: answered %v from a broken tree", network, r)
		}
	}
	if got := ts.Stats().Panics; got != 2 {
		t.Errorf("Panics = %d, want 2", got)
	}
	if got := told.Load(); got != 2 {
		t.Errorf("OnPanic called %d times, want 2", got)
	}
	if !strings.Contains(ts.log.String(), "panic answering a query") {
		t.Error("the panic is not logged")
	}
	ts.snap.Store(good)
	for _, network := range []string{"udp", "tcp"} {
		if r := ask(t, ts.addr, network, "7.2.18.198.bl.example.org.", dns.TypeA); dnstest.AnswerA(r) != "127.0.0.4" {
			t.Errorf("%s after the panics: %v", network, r)
		}
	}
}
