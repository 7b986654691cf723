package dnsbl

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
)

// A check's lists are asked together: one A query per list, from one
// socket, and each result comes back under its own index.
func TestBatchAsksListsTogether(t *testing.T) {
	var mu sync.Mutex
	ports := map[int]int{}
	addr := rawServer(t, func(w dns.ResponseWriter, req *dns.Msg) {
		mu.Lock()
		ports[w.RemoteAddr().(*net.UDPAddr).Port]++
		mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(req)
		switch q := req.Question[0]; {
		case q.Qtype != dns.TypeA:
			m.Rcode = dns.RcodeRefused
		case q.Name == QueryName(netip.MustParseAddr("192.0.2.9"), "two.test"):
			m.Answer = append(m.Answer, a(q.Name, "127.0.0.4", 60))
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	r := newTestResolver(t, 2*time.Second, addr)
	ip := netip.MustParseAddr("192.0.2.9")
	qs := []Query{{Zone: "one.test", IP: ip, NoTXT: true}, {Zone: "two.test", IP: ip, NoTXT: true}, {Zone: "three.test", IP: ip, NoTXT: true}}
	b := r.Start(context.Background(), time.Time{}, qs)
	defer b.Close()
	got := make([]Result, len(qs))
	seen := 0
	for {
		i, res, ok := b.Next(time.Time{})
		if !ok {
			break
		}
		got[i] = res
		seen++
	}
	if seen != len(qs) {
		t.Fatalf("Next returned %d results for %d queries", seen, len(qs))
	}
	want := []Status{NotListed, Listed, NotListed}
	for i, res := range got {
		if res.Status != want[i] || res.Duration <= 0 {
			t.Errorf("%s: %v (%v) after %v, want %v", qs[i].Zone, res.Status, res.Err, res.Duration, want[i])
		}
	}
	if !slices.Equal(got[1].Codes, addrs("127.0.0.4")) {
		t.Errorf("codes %v", got[1].Codes)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ports) != 1 {
		t.Errorf("the queries of one batch came from %d ports (%v), want one socket", len(ports), ports)
	}
	for _, n := range ports {
		if n != len(qs) {
			t.Errorf("%d queries for %d lists", n, len(qs))
		}
	}
}

// Next stops at until with the answers that are in; a lookup still
// running then is not reported, and Close gives it up without a trace: a
// lookup of the same question afterwards asks on its own and gets the
// answer.
func TestBatchNextUntilAndClose(t *testing.T) {
	s := dnstest.Start(t)
	fast, slow := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	s.Set(QueryName(fast, zone), dnstest.Answer{A: []string{"127.0.0.2"}})
	s.Set(QueryName(slow, zone), dnstest.Answer{A: []string{"127.0.0.4"}, Delay: 300 * time.Millisecond})
	r := newTestResolver(t, 2*time.Second, s.Addr)
	b := r.Start(context.Background(), time.Time{}, []Query{{Zone: zone, IP: slow, NoTXT: true}, {Zone: zone, IP: fast, NoTXT: true}})
	start := time.Now()
	i, res, ok := b.Next(start.Add(time.Second))
	if !ok || i != 1 || res.Status != Listed {
		t.Fatalf("first result: %d %v %v (%v), want the fast list's listing", i, ok, res.Status, res.Err)
	}
	until := time.Now().Add(50 * time.Millisecond)
	if i, res, ok := b.Next(until); ok {
		t.Fatalf("Next returned %d %v (%v) before the slow answer", i, res.Status, res.Err)
	}
	if now := time.Now(); now.Before(until) {
		t.Errorf("Next returned %v before until", until.Sub(now))
	}
	if _, _, ok := b.Next(time.Unix(1, 0)); ok {
		t.Error("Next with an until in the past returned a result that is not in")
	}
	b.Close()
	// The slow question was in flight when the batch closed: the next
	// lookup does not inherit a cancellation.
	if res := r.Lookup(context.Background(), Query{Zone: zone, IP: slow, NoTXT: true}); res.Status != Listed {
		t.Errorf("lookup after Close: %v (%v), want Listed", res.Status, res.Err)
	}
}

// A lookup that joined a batch's query asks on its own when the batch
// closes before the answer.
func TestBatchCloseHandsOverJoinedLookups(t *testing.T) {
	s := dnstest.Start(t)
	ip := netip.MustParseAddr("192.0.2.3")
	name := QueryName(ip, zone)
	s.Set(name, dnstest.Answer{A: []string{"127.0.0.2"}, Delay: 150 * time.Millisecond})
	r := newTestResolver(t, 2*time.Second, s.Addr)
	b := r.Start(context.Background(), time.Time{}, []Query{{Zone: zone, IP: ip, NoTXT: true}})
	joined := make(chan Result, 1)
	go func() { joined <- r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true}) }()
	time.Sleep(30 * time.Millisecond) // the lookup joins the batch's query
	b.Close()
	if res := <-joined; res.Status != Listed {
		t.Errorf("joined lookup: %v (%v), want Listed", res.Status, res.Err)
	}
	if n := s.QueriesFor(name, dns.TypeA); n != 2 {
		t.Errorf("%d A queries, want 2: the batch's, then the joined lookup's own", n)
	}
}

// A cancelled context ends every lookup of a batch at once.
func TestBatchCanceled(t *testing.T) {
	s := dnstest.Start(t)
	s.SetZone(zone, dnstest.Answer{Silent: true})
	r := newTestResolver(t, time.Minute, s.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	b := r.Start(ctx, time.Time{}, []Query{{Zone: zone, IP: netip.MustParseAddr("192.0.2.1")}, {Zone: zone, IP: netip.MustParseAddr("192.0.2.2")}})
	defer b.Close()
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	for range 2 {
		_, res, ok := b.Next(time.Time{})
		if !ok || res.Status != Error || !errors.Is(res.Err, context.Canceled) {
			t.Fatalf("Next = %v %v (%v), want an error wrapping context.Canceled", ok, res.Status, res.Err)
		}
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cancelled batch took %v", took)
	}
}

// Reasons asks for several texts at once; one that is missing or fails
// leaves the others.
func TestReasons(t *testing.T) {
	s := dnstest.Start(t)
	ip := netip.MustParseAddr("192.0.2.5")
	s.Set(QueryName(ip, "one.test"), dnstest.Answer{TXT: []string{"first text"}, TTL: 90})
	s.Set(QueryName(ip, "two.test"), dnstest.Answer{Rcode: dns.RcodeServerFailure})
	s.SetNegativeTTL(30)
	r := newTestResolver(t, 2*time.Second, s.Addr)
	got := r.Reasons(context.Background(), []Query{{Zone: "one.test", IP: ip}, {Zone: "two.test", IP: ip}, {Zone: "three.test", IP: ip}, {Zone: "four.test"}})
	if g := got[0]; g.Reason != "first text" || g.TTL != 90*time.Second || g.Err != nil {
		t.Errorf("listed text: %+v", g)
	}
	if g := got[1]; !errors.Is(g.Err, ErrServFail) {
		t.Errorf("failing list: %+v, want ErrServFail", g)
	}
	if g := got[2]; g.Reason != "" || g.TTL != 30*time.Second || g.Err != nil {
		t.Errorf("no text: %+v, want none for the negative TTL", g)
	}
	if g := got[3]; g.Err == nil {
		t.Errorf("invalid query: %+v, want an error", g)
	}
	for _, z := range []string{"one.test", "two.test", "three.test"} {
		if n := s.QueriesFor(QueryName(ip, z), dns.TypeA); n != 0 {
			t.Errorf("%s: %d A queries, want none", z, n)
		}
	}
}

// parse reads what miekg/dns reads of any message, for the fields a
// lookup uses. (It may take a message that miekg/dns rejects for the data
// of a record type a lookup does not read.)
func FuzzParse(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("1.2.0.192."+zone+".", dns.TypeA)
	q.SetEdns0(udpSize, false)
	m := new(dns.Msg)
	m.SetReply(q)
	m.Answer = append(m.Answer, a(q.Question[0].Name, "127.0.0.2", 300),
		&dns.CNAME{Hdr: dns.RR_Header{Name: "x." + zone + ".", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 5}, Target: q.Question[0].Name},
		&dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 7}, Txt: []string{"a \"b\"", "\x00c"}})
	m.Ns = append(m.Ns, soa(30, 20))
	m.SetEdns0(udpSize, false)
	nx := new(dns.Msg)
	nx.SetRcode(q, dns.RcodeNameError)
	nx.Ns = append(nx.Ns, soa(10, 60))
	for _, msg := range []*dns.Msg{q, m, nx} {
		for _, compress := range []bool{false, true} {
			msg.Compress = compress
			b, err := msg.Pack()
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parse(b)
		want := new(dns.Msg)
		if want.Unpack(b) != nil {
			return
		}
		if err != nil {
			t.Fatalf("parse: %v; miekg/dns reads %v", err, want)
		}
		if got.id != want.Id || got.response != want.Response || got.truncated != want.Truncated || got.rcode != want.Rcode {
			t.Fatalf("header %+v, miekg/dns %+v", got, want.MsgHdr)
		}
		if got.questions != len(want.Question) {
			t.Fatalf("%d questions, miekg/dns %d", got.questions, len(want.Question))
		}
		if got.questions > 0 {
			wq := want.Question[0]
			wire, werr := wireName(wq.Name)
			if werr != nil || got.qname != wire || got.qtype != wq.Qtype || got.qclass != wq.Qclass {
				t.Fatalf("question %q %d %d, miekg/dns %v", got.qname, got.qtype, got.qclass, wq)
			}
		}
		if got.truncated {
			return // the sections of a truncated answer are not read
		}
		if len(got.answer) != len(want.Answer) {
			t.Fatalf("%d answer records, miekg/dns %d", len(got.answer), len(want.Answer))
		}
		for i, rr := range want.Answer {
			g, h := got.answer[i], rr.Header()
			owner, _ := wireName(h.Name)
			if g.name != owner || g.rtype != h.Rrtype || g.class != h.Class || g.ttl != h.Ttl {
				t.Fatalf("record %d: %+v, miekg/dns %v", i, g, rr)
			}
			switch rr := rr.(type) {
			case *dns.A:
				if (rr.A != nil) != g.hasA || (g.hasA && netip.AddrFrom4(g.a) != netip.MustParseAddr(rr.A.String())) {
					t.Fatalf("A %v %v, miekg/dns %v", g.hasA, g.a, rr.A)
				}
			case *dns.CNAME:
				if target, _ := wireName(rr.Target); g.target != target {
					t.Fatalf("CNAME %q, miekg/dns %q", g.target, rr.Target)
				}
			}
		}
		var soa *dns.SOA
		for _, rr := range want.Ns {
			if s, ok := rr.(*dns.SOA); ok {
				soa = s
				break
			}
		}
		if (soa != nil) != got.hasSOA || (soa != nil && (soa.Hdr.Ttl != got.soaTTL || soa.Minttl != got.soaMin)) {
			t.Fatalf("SOA %v %d %d, miekg/dns %v", got.hasSOA, got.soaTTL, got.soaMin, soa)
		}
	})
}

// An answer too large for the reader's buffer is cut there, and taken for
// a truncated one: the query is asked again over TCP.
func TestCutAnswerAskedOverTCP(t *testing.T) {
	addr := rawServer(t, func(dns.ResponseWriter, *dns.Msg) {}) // silent over UDP
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("TCP on the UDP server's port: %v", err)
	}
	tcpQueries := make(chan struct{}, 4)
	started := make(chan struct{})
	srv := &dns.Server{Listener: ln, NotifyStartedFunc: func() { close(started) }, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		tcpQueries <- struct{}{}
		m := new(dns.Msg)
		m.SetReply(req)
		m.Answer = append(m.Answer, a(req.Question[0].Name, "127.0.0.4", 60))
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })

	r := newTestResolver(t, 2*time.Second, addr)
	ip := netip.MustParseAddr("192.0.2.6")
	b := r.Start(context.Background(), time.Time{}, []Query{{Zone: zone, IP: ip, NoTXT: true}})
	defer b.Close()
	c := &b.calls[0]
	s, id := c.sock, c.id
	// The answer the server might have sent over UDP: far larger than a
	// small read buffer, cut at its size.
	big := new(dns.Msg)
	big.SetQuestion(QueryName(ip, zone), dns.TypeA)
	big.Id = id
	big.Response = true
	for i := range 400 {
		big.Answer = append(big.Answer, a(QueryName(ip, zone), netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)}).String(), 60))
	}
	wire, err := big.Pack()
	if err != nil || len(wire) <= 4096 {
		t.Fatalf("big answer: %d bytes, %v", len(wire), err)
	}
	s.deliver(wire[:4096], true)
	_, res, ok := b.Next(time.Time{})
	if !ok || res.Status != Listed || !slices.Equal(res.Codes, addrs("127.0.0.4")) {
		t.Fatalf("Next = %v %v %v (%v), want the TCP answer's listing", ok, res.Status, res.Codes, res.Err)
	}
	if len(tcpQueries) != 1 {
		t.Errorf("%d TCP queries, want 1", len(tcpQueries))
	}
}

// The name a lookup asks, built in wire form from the address and the
// zone packed once, is appendName's name packed; a zone is refused unless it is a
// valid domain name (a trailing dot or not) and the name is valid, fully
// qualified and at most 254 characters (one that can be sent).
func FuzzQueryWire(f *testing.F) {
	for _, z := range []string{zone, "zen.spamhaus.org.", "a\\.b.test", "bad..zone", "", ".", "x\\032y.test", strings.Repeat("a", 64) + ".test", strings.Repeat("abcdefgh.", 27)} {
		f.Add([]byte{192, 0, 2, 1}, z)
		f.Add([]byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, z)
	}
	r, err := NewResolver([]string{"127.0.0.1:1"}, time.Second)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ipb []byte, z string) {
		ip, ok := netip.AddrFromSlice(ipb)
		if !ok {
			return
		}
		var wire [255]byte
		n, _, err := r.prepare(Query{Zone: z, IP: ip}, &wire)
		name := string(appendName(nil, ip.Unmap(), z))
		_, valid := dns.IsDomainName(name)
		_, zoneValid := dns.IsDomainName(trimDot(z) + ".")
		want, werr := wireName(name)
		valid = valid && zoneValid && trimDot(z) != "" && len(name) <= 254 && werr == nil
		if valid != (err == nil) {
			t.Fatalf("prepare(%s, %q): %v; name %q valid %v", ip, z, err, name, valid)
		}
		if err != nil {
			return
		}
		if string(wire[:n]) != want {
			t.Fatalf("prepare(%s, %q) = %q, want %q (%v)", ip, z, wire[:n], want, werr)
		}
	})
}
