package zone

import (
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// FuzzAnswerUDP feeds random datagrams to the UDP answer path (and through
// it to miekg/dns and ServeDNS, which TCP shares). Nothing may panic, not
// even one the path recovers from; every answer must be a well-formed
// message; and where the fast path answers a packet miekg/dns can read,
// the other path must answer the same.
func FuzzAnswerUDP(f *testing.F) {
	opts := testOptions()
	opts.TSIG = testKey
	s, err := New(opts)
	if err != nil {
		f.Fatal(err)
	}
	s.Update(append([]Listing{
		{Prefix: netip.MustParsePrefix("1.2.3.0/24"), Category: "zombie", Reason: "digits"},
		{Prefix: netip.MustParsePrefix("1230::/12"), Category: "dynamic", Reason: "v6"},
	}, serverListings...))
	for _, name := range []string{"7.2.18.198.bl.example.org.", "2.0.0.127.bl.example.org.", "bl.example.org.", "x.*.3.2.1.bl.example.org.", "example.com."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeTXT, dns.TypeANY, dns.TypeSOA, dns.TypeIXFR, dns.TypeAXFR} {
			m := new(dns.Msg)
			m.SetQuestion(name, qt)
			b, _ := m.Pack()
			f.Add(b)
			m.SetEdns0(1232, true)
			b, _ = m.Pack()
			f.Add(b)
		}
	}
	f.Add([]byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1})
	from := netip.MustParseAddrPort("127.0.0.1:5353")
	local := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	f.Fuzz(func(t *testing.T, data []byte) {
		in := append([]byte(nil), data...)
		resp := s.answerUDP(in, from, local, nil)
		if n := s.stats.panics.Load(); n > 0 {
			t.Fatalf("%d panics", n)
		}
		if string(in) != string(data) {
			t.Fatal("the query buffer was changed")
		}
		if resp == nil {
			return
		}
		var m dns.Msg
		if err := m.Unpack(resp); err != nil && len(resp) != 12 {
			t.Fatalf("malformed answer %x: %v", resp, err)
		}
		var req dns.Msg
		if req.Unpack(data) != nil {
			return
		}
		if fast, ok := s.fastAnswer(s.snap.Load(), data, nil); ok {
			compareAnswers(t, "fuzzed query", fast, s.slowAnswer(data, from, local, nil))
		}
	})
}
