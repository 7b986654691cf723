package dnsbl

import (
	"context"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
)

// An attacker who sees no packets can only guess: datagrams from another
// address, with another ID, for another question, that are no answers, or
// that do not parse are all dropped, and the query takes the server's own
// answer that comes after them.
func TestLookupIgnoresForgedAnswers(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	listed := func(req *dns.Msg, edit func(m *dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Answer = append(m.Answer, a(req.Question[0].Name, "127.0.0.2", 300))
		edit(m)
		b, err := m.Pack()
		if err != nil {
			t.Errorf("pack forged answer: %v", err)
		}
		return b
	}
	addr := rawServer(t, func(w dns.ResponseWriter, req *dns.Msg) {
		// Right ID and question, but from another port of the server's host.
		other, err := net.DialUDP("udp", nil, w.RemoteAddr().(*net.UDPAddr))
		if err != nil {
			t.Errorf("forger: %v", err)
			return
		}
		other.Write(listed(req, func(*dns.Msg) {}))
		other.Close()
		for _, forged := range [][]byte{
			listed(req, func(m *dns.Msg) { m.Id++ }),
			listed(req, func(m *dns.Msg) { m.Question[0].Name = "3.0.0.127." + zone + "." }),
			listed(req, func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAAAA }),
			listed(req, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }),
			listed(req, func(m *dns.Msg) { m.Response = false }),
			listed(req, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }),
			{byte(req.Id >> 8), byte(req.Id), 0x81, 0x80, 0, 1}, // a header cut short
		} {
			w.Write(forged)
		}
		time.Sleep(20 * time.Millisecond) // let the forgeries arrive first
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeNameError)
		w.WriteMsg(m)
	})
	r := newTestResolver(t, 2*time.Second, addr)
	res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true})
	if res.Status != NotListed || res.Err != nil {
		t.Fatalf("Lookup = %v %v (err %v), want the server's NXDOMAIN", res.Status, res.Codes, res.Err)
	}
}

// portServer answers NXDOMAIN and records the source port of each query.
func portServer(t *testing.T) (addr string, ports func() []int) {
	var mu sync.Mutex
	var seen []int
	addr = rawServer(t, func(w dns.ResponseWriter, req *dns.Msg) {
		mu.Lock()
		seen = append(seen, w.RemoteAddr().(*net.UDPAddr).Port)
		mu.Unlock()
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeNameError)
		w.WriteMsg(m)
	})
	return addr, func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), seen...)
	}
}

// setSocketLimits changes the rotation limits for one test.
func setSocketLimits(t *testing.T, uses int, age time.Duration) {
	oldUses, oldAge := socketMaxUses, socketMaxAge
	socketMaxUses, socketMaxAge = uses, age
	t.Cleanup(func() { socketMaxUses, socketMaxAge = oldUses, oldAge })
}

func openFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("counting open files: %v", err)
	}
	return len(ents)
}

// Sockets are reused, but each only for socketMaxUses queries, and a
// retired socket is closed: the source port keeps changing and no file
// descriptor is left behind.
func TestSocketsRotateAfterUses(t *testing.T) {
	setSocketLimits(t, 3, time.Minute)
	addr, ports := portServer(t)
	r := newTestResolver(t, 2*time.Second, addr)
	lookup := func(i int) {
		t.Helper()
		ip := netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
		if res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true}); res.Status != NotListed {
			t.Fatalf("Lookup = %v, %v", res.Status, res.Err)
		}
	}
	lookup(0) // the first socket, and the server's own descriptors
	before := openFiles(t)
	const n = 60
	for i := range n {
		lookup(i + 1)
	}
	perPort := map[int]int{}
	for _, p := range ports() {
		perPort[p]++
	}
	for p, k := range perPort {
		if k > 3 {
			t.Errorf("port %d carried %d queries, want at most 3", p, k)
		}
	}
	if len(perPort) < (n+1)/3 {
		t.Errorf("%d queries came from %d ports, want at least %d", n+1, len(perPort), (n+1)/3)
	}
	// At most one socket per slot stays open.
	if after := openFiles(t); after > before+socketsPerServer {
		t.Errorf("open files went from %d to %d over %d queries", before, after, n)
	}
}

func TestSocketsRotateAfterAge(t *testing.T) {
	setSocketLimits(t, 1000, 50*time.Millisecond)
	addr, ports := portServer(t)
	r := newTestResolver(t, 2*time.Second, addr)
	p := poolFor(r.Servers()[0])
	for i := range socketsPerServer {
		r.Lookup(context.Background(), Query{Zone: zone, IP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), NoTXT: true})
	}
	dials := p.dials.Load()
	time.Sleep(200 * time.Millisecond)
	for i := range socketsPerServer {
		r.Lookup(context.Background(), Query{Zone: zone, IP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), NoTXT: true})
	}
	if p.dials.Load() == dials {
		t.Errorf("no new socket after the sockets' age passed")
	}
	first := map[int]bool{}
	got := ports()
	for _, port := range got[:socketsPerServer] {
		first[port] = true
	}
	for _, port := range got[socketsPerServer:] {
		if first[port] {
			t.Errorf("port %d still in use after its socket's age", port)
		}
	}
}

// Lookups of the same question at the same time, from two resolvers (as
// during a reload), send one packet and all get its answer.
func TestIdenticalQueriesShared(t *testing.T) {
	s := dnstest.Start(t)
	ip := netip.MustParseAddr("192.0.2.7")
	name := QueryName(ip, zone)
	s.Set(name, dnstest.Answer{A: []string{"127.0.0.4"}, Delay: 200 * time.Millisecond})
	r1 := newTestResolver(t, 2*time.Second, s.Addr)
	r2 := newTestResolver(t, 2*time.Second, s.Addr)
	var wg sync.WaitGroup
	results := make([]Result, 10)
	for i := range results {
		r := r1
		if i%2 == 1 {
			r = r2
		}
		wg.Go(func() { results[i] = r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true}) })
	}
	wg.Wait()
	for i, res := range results {
		if res.Status != Listed {
			t.Errorf("lookup %d: %v, %v", i, res.Status, res.Err)
		}
	}
	if n := s.QueriesFor(name, dns.TypeA); n != 1 {
		t.Errorf("%d identical lookups sent %d queries, want 1", len(results), n)
	}
}

// A lookup that joined another's query is not bound by that one's shorter
// timeout: when the first gives up, the second asks on its own time.
func TestSharedQueryOutlivesShortTimeout(t *testing.T) {
	s := dnstest.Start(t)
	ip := netip.MustParseAddr("192.0.2.8")
	s.Set(QueryName(ip, zone), dnstest.Answer{A: []string{"127.0.0.2"}, Delay: 300 * time.Millisecond})
	r := newTestResolver(t, 2*time.Second, s.Addr)
	short := make(chan Result, 1)
	go func() {
		short <- r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true, Timeout: 60 * time.Millisecond})
	}()
	time.Sleep(10 * time.Millisecond)
	long := r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true})
	if res := <-short; res.Status != Error {
		t.Errorf("short lookup: %v, want a timeout", res.Status)
	}
	if long.Status != Listed {
		t.Errorf("long lookup: %v (%v), want Listed", long.Status, long.Err)
	}
}

func TestReason(t *testing.T) {
	s := dnstest.Start(t)
	listed := netip.MustParseAddr("192.0.2.1")
	s.Set(QueryName(listed, zone), dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{"seen at traps", "see https://bl.test/q"}, TTL: 90})
	s.SetNegativeTTL(30)
	r := newTestResolver(t, 2*time.Second, s.Addr)
	tests := []struct {
		name   string
		ip     string
		reason string
		ttl    time.Duration
	}{
		{"listing with TXT", "192.0.2.1", "seen at traps see https://bl.test/q", 90 * time.Second},
		{"no TXT: empty, for the negative TTL", "192.0.2.2", "", 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ip := netip.MustParseAddr(tt.ip)
			reason, ttl, err := r.Reason(context.Background(), Query{Zone: zone, IP: ip})
			if err != nil || reason != tt.reason || ttl != tt.ttl {
				t.Errorf("Reason = %q, %v, %v; want %q, %v", reason, ttl, err, tt.reason, tt.ttl)
			}
			if n := s.QueriesFor(QueryName(ip, zone), dns.TypeA); n != 0 {
				t.Errorf("Reason sent %d A queries, want none", n)
			}
			if n := s.QueriesFor(QueryName(ip, zone), dns.TypeTXT); n != 1 {
				t.Errorf("Reason sent %d TXT queries, want 1", n)
			}
		})
	}
	t.Run("invalid query", func(t *testing.T) {
		if _, _, err := r.Reason(context.Background(), Query{Zone: zone}); err == nil {
			t.Error("want an error for an invalid address")
		}
	})
}

// Whatever arrives on a socket is parsed and matched without a panic.
func FuzzDatagram(f *testing.F) {
	req := new(dns.Msg)
	req.SetQuestion("1.2.0.192."+zone+".", dns.TypeA)
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Answer = append(resp.Answer, a(req.Question[0].Name, "127.0.0.2", 300))
	for _, m := range []*dns.Msg{req, resp} {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, ok := unpack(b); ok {
			answers(m, req.Question[0].Name, dns.TypeA)
		}
	})
}

// Sockets retire under many concurrent queries without losing one, and
// every retired socket is closed.
func TestSocketsRotateUnderLoad(t *testing.T) {
	setSocketLimits(t, 5, time.Minute)
	s := dnstest.Start(t)
	s.SetZone("0.10."+zone, dnstest.Answer{A: []string{"127.0.0.2"}})
	r := newTestResolver(t, 5*time.Second, s.Addr)
	r.Lookup(context.Background(), Query{Zone: zone, IP: netip.MustParseAddr("10.0.0.1"), NoTXT: true})
	before := openFiles(t)
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 20 {
				// 10.0.x.y is listed (under 0.10.bl.test), 10.1.x.y is not.
				ip := netip.AddrFrom4([4]byte{10, byte(i % 2), byte(g), byte(i)})
				want := NotListed
				if i%2 == 0 {
					want = Listed
				}
				if res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true}); res.Status != want {
					t.Errorf("%s: %v (%v), want %v", ip, res.Status, res.Err, want)
				}
			}
		})
	}
	wg.Wait()
	if after := openFiles(t); after > before+socketsPerServer {
		t.Errorf("open files went from %d to %d", before, after)
	}
}
