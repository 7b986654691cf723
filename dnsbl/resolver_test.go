package dnsbl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
)

const zone = "bl.test"

func newTestResolver(t testing.TB, timeout time.Duration, servers ...string) *Resolver {
	t.Helper()
	r, err := NewResolver(servers, timeout)
	if err != nil {
		t.Fatalf("NewResolver(%v): %v", servers, err)
	}
	return r
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestLookup(t *testing.T) {
	tests := []struct {
		name    string
		ip      string
		answer  *dnstest.Answer // for QueryName(ip, zone); nil: not set (NXDOMAIN)
		noTXT   bool
		status  Status
		codes   []netip.Addr
		reason  string
		ttl     time.Duration
		err     error  // sentinel the error must wrap
		errText string // and text it must contain
	}{
		{
			name:   "listed with several codes, sorted and deduplicated",
			ip:     "192.0.2.1",
			answer: &dnstest.Answer{A: []string{"127.0.0.4", "127.0.0.2", "127.0.0.4"}, TXT: []string{"see https://bl.test/q/192.0.2.1"}, TTL: 120},
			status: Listed, codes: addrs("127.0.0.2", "127.0.0.4"), reason: "see https://bl.test/q/192.0.2.1", ttl: 120 * time.Second,
		},
		{
			name:   "NXDOMAIN is clean, negative TTL from the SOA",
			ip:     "192.0.2.2",
			status: NotListed, ttl: 60 * time.Second,
		},
		{
			name:   "NODATA is clean",
			ip:     "192.0.2.3",
			answer: &dnstest.Answer{TXT: []string{"a TXT but no A"}},
			status: NotListed, ttl: 60 * time.Second,
		},
		{
			name:   "several TXT records joined with a space, made printable",
			ip:     "192.0.2.4",
			answer: &dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{`listed "spam"`, "line\r\nbreak"}},
			status: Listed, codes: addrs("127.0.0.2"), reason: `listed "spam" line  break`, ttl: 300 * time.Second,
		},
		{
			name:   "NoTXT leaves the reason out",
			ip:     "192.0.2.5",
			answer: &dnstest.Answer{A: []string{"127.0.0.3"}, TXT: []string{"not wanted"}},
			noTXT:  true,
			status: Listed, codes: addrs("127.0.0.3"), ttl: 300 * time.Second,
		},
		{
			name:   "IPv6 asked by nibbles",
			ip:     "2001:db8::1",
			answer: &dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{"v6"}},
			status: Listed, codes: addrs("127.0.0.2"), reason: "v6", ttl: 300 * time.Second,
		},
		{
			name:   "IPv4-mapped IPv6 asked as IPv4",
			ip:     "::ffff:192.0.2.6",
			answer: &dnstest.Answer{A: []string{"127.0.0.10"}},
			status: Listed, codes: addrs("127.0.0.10"), ttl: 300 * time.Second,
		},
		{
			name:   "127.255.255.254 is a list error, not a listing",
			ip:     "192.0.2.7",
			answer: &dnstest.Answer{A: []string{"127.255.255.254"}},
			status: Error, err: ErrResolverBlocked, errText: "127.255.255.254 (Spamhaus: query through a public/open resolver)",
		},
		{
			name:   "127.255.255.255 is a list error, not a listing",
			ip:     "192.0.2.8",
			answer: &dnstest.Answer{A: []string{"127.255.255.255"}},
			status: Error, err: ErrResolverBlocked, errText: "excessive number of queries",
		},
		{
			name:   "a listing code next to an error code is an error",
			ip:     "192.0.2.9",
			answer: &dnstest.Answer{A: []string{"127.0.0.2", "127.255.255.254"}},
			status: Error, err: ErrResolverBlocked, errText: "list refuses this resolver",
		},
		{
			name:   "answer outside 127/8",
			ip:     "192.0.2.10",
			answer: &dnstest.Answer{A: []string{"198.51.100.7"}},
			status: Error, err: ErrNotLoopback, errText: "198.51.100.7",
		},
		{
			name:   "answer outside 127/8 next to a listing code",
			ip:     "192.0.2.11",
			answer: &dnstest.Answer{A: []string{"127.0.0.2", "198.51.100.7"}},
			status: Error, err: ErrNotLoopback,
		},
		{
			name:   "SERVFAIL",
			ip:     "192.0.2.12",
			answer: &dnstest.Answer{Rcode: dns.RcodeServerFailure},
			status: Error, err: ErrServFail,
		},
		{
			name:   "REFUSED",
			ip:     "192.0.2.13",
			answer: &dnstest.Answer{Rcode: dns.RcodeRefused},
			status: Error, err: ErrRefused,
		},
		{
			name:   "truncated UDP answer is asked again over TCP",
			ip:     "192.0.2.14",
			answer: &dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{"over tcp"}, Truncate: true, TTL: 30},
			status: Listed, codes: addrs("127.0.0.2"), reason: "over tcp", ttl: 30 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := dnstest.Start(t)
			ip := netip.MustParseAddr(tt.ip)
			name := QueryName(ip, zone)
			if tt.answer != nil {
				s.Set(name, *tt.answer)
			}
			r := newTestResolver(t, 2*time.Second, s.Addr)
			res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: tt.noTXT})

			if res.Status != tt.status {
				t.Fatalf("Status = %v (err %v), want %v", res.Status, res.Err, tt.status)
			}
			if !slices.Equal(res.Codes, tt.codes) {
				t.Errorf("Codes = %v, want %v", res.Codes, tt.codes)
			}
			if res.Reason != tt.reason {
				t.Errorf("Reason = %q, want %q", res.Reason, tt.reason)
			}
			if res.TTL != tt.ttl {
				t.Errorf("TTL = %v, want %v", res.TTL, tt.ttl)
			}
			switch {
			case tt.err == nil && res.Err != nil:
				t.Errorf("Err = %v, want none", res.Err)
			case tt.err != nil && !errors.Is(res.Err, tt.err):
				t.Errorf("Err = %v, want one wrapping %v", res.Err, tt.err)
			case tt.errText != "" && !strings.Contains(res.Err.Error(), tt.errText):
				t.Errorf("Err = %q, want it to contain %q", res.Err, tt.errText)
			}
			if res.Err != nil && strings.Contains(res.Err.Error(), zone) {
				t.Errorf("Err = %q names the zone, which may hold an access key", res.Err)
			}
			if res.Duration <= 0 {
				t.Errorf("Duration = %v, want it measured", res.Duration)
			}
			// The reason is fetched for listings only, and only once (a
			// truncated answer is asked once over UDP, once over TCP).
			wantTXT := int64(0)
			if tt.status == Listed && !tt.noTXT {
				wantTXT = 1
			}
			if tt.answer != nil && tt.answer.Truncate {
				wantTXT *= 2
			}
			if n := s.QueriesFor(name, dns.TypeTXT); n != wantTXT {
				t.Errorf("TXT queries = %d, want %d", n, wantTXT)
			}
		})
	}
}

func TestLookupInvalidQuery(t *testing.T) {
	r := newTestResolver(t, time.Second, "127.0.0.1:1")
	tests := []struct {
		name string
		q    Query
	}{
		{"invalid IP", Query{Zone: zone}},
		{"empty zone", Query{IP: netip.MustParseAddr("192.0.2.1")}},
		{"bad zone", Query{Zone: "bad..zone", IP: netip.MustParseAddr("192.0.2.1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if res := r.Lookup(context.Background(), tt.q); res.Status != Error || res.Err == nil {
				t.Errorf("Lookup = %v, %v; want Error", res.Status, res.Err)
			}
		})
	}
}

func TestLookupSilentServer(t *testing.T) {
	s := dnstest.Start(t)
	s.SetZone(zone, dnstest.Answer{Silent: true})
	const timeout = 150 * time.Millisecond
	r := newTestResolver(t, timeout, s.Addr)
	ip := netip.MustParseAddr("192.0.2.1")
	res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip})
	if res.Status != Error || !errors.Is(res.Err, ErrTimeout) {
		t.Fatalf("Lookup = %v, %v; want Error wrapping ErrTimeout", res.Status, res.Err)
	}
	// The bound is the lookup's timeout, not miekg/dns's 2 s default;
	// the slack only absorbs a loaded test machine.
	if res.Duration > timeout+time.Second {
		t.Errorf("Lookup took %v with a %v timeout", res.Duration, timeout)
	}
	// A single server is asked twice, as a lost datagram is the likely cause.
	if n := s.QueriesFor(QueryName(ip, zone), dns.TypeA); n != 2 {
		t.Errorf("A queries to the only server = %d, want 2", n)
	}
}

func TestLookupQueryTimeoutOverridesDefault(t *testing.T) {
	s := dnstest.Start(t)
	s.SetZone(zone, dnstest.Answer{Silent: true})
	r := newTestResolver(t, time.Minute, s.Addr)
	res := r.Lookup(context.Background(), Query{Zone: zone, IP: netip.MustParseAddr("192.0.2.1"), Timeout: 100 * time.Millisecond})
	if !errors.Is(res.Err, ErrTimeout) || res.Duration > 5*time.Second {
		t.Fatalf("Lookup = %v after %v; want ErrTimeout after about 100ms", res.Err, res.Duration)
	}
}

func TestLookupBoundedByContext(t *testing.T) {
	s := dnstest.Start(t)
	s.SetZone(zone, dnstest.Answer{Silent: true})
	r := newTestResolver(t, time.Minute, s.Addr)
	ip := netip.MustParseAddr("192.0.2.1")

	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		res := r.Lookup(ctx, Query{Zone: zone, IP: ip})
		if !errors.Is(res.Err, ErrTimeout) || res.Duration > 5*time.Second {
			t.Fatalf("Lookup = %v after %v; want ErrTimeout after about 100ms", res.Err, res.Duration)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		res := r.Lookup(ctx, Query{Zone: zone, IP: ip})
		if res.Status != Error || !errors.Is(res.Err, context.Canceled) || res.Duration > 5*time.Second {
			t.Fatalf("Lookup = %v, %v after %v; want an error wrapping context.Canceled soon after 100ms", res.Status, res.Err, res.Duration)
		}
	})
}

func TestLookupRetriesNextServer(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	name := QueryName(ip, zone)
	tests := []struct {
		name  string
		first dnstest.Answer
	}{
		{"first silent", dnstest.Answer{Silent: true}},
		{"first SERVFAIL", dnstest.Answer{Rcode: dns.RcodeServerFailure}},
		{"first REFUSED", dnstest.Answer{Rcode: dns.RcodeRefused}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s1, s2 := dnstest.Start(t), dnstest.Start(t)
			s1.SetZone(zone, tt.first)
			s2.Set(name, dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{"from the second"}})
			r := newTestResolver(t, 2*time.Second, s1.Addr, s2.Addr)

			res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip})
			if res.Status != Listed || res.Reason != "from the second" {
				t.Fatalf("Lookup = %v %q, %v; want Listed by the second server", res.Status, res.Reason, res.Err)
			}
			if n1, n2 := s1.QueriesFor(name, dns.TypeA), s2.QueriesFor(name, dns.TypeA); n1 != 1 || n2 != 1 {
				t.Errorf("A queries: first server %d, second %d; want 1 and 1", n1, n2)
			}
			// The server that answered is asked first from now on, so a
			// broken first server does not cost every lookup a retry.
			other := netip.MustParseAddr("192.0.2.2")
			r.Lookup(context.Background(), Query{Zone: zone, IP: other})
			if n := s1.QueriesFor(QueryName(other, zone), dns.TypeA); n != 0 {
				t.Errorf("next lookup asked the failing server first (%d queries)", n)
			}
		})
	}
}

// A server port with nobody behind it: over loopback UDP the "port
// unreachable" comes back at once, a network error that moves on to the
// next server.
func TestLookupRetriesAfterNetworkError(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close()

	s := dnstest.Start(t)
	ip := netip.MustParseAddr("192.0.2.1")
	s.Set(QueryName(ip, zone), dnstest.Answer{A: []string{"127.0.0.2"}})
	r := newTestResolver(t, 2*time.Second, dead, s.Addr)
	if res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true}); res.Status != Listed {
		t.Fatalf("Lookup = %v, %v; want Listed by the second server", res.Status, res.Err)
	}
}

// rawServer serves DNS over UDP on loopback with handler h, for answers
// that dnstest will not give: wrong names, mixed TTLs, CNAMEs.
func rawServer(t *testing.T, h dns.HandlerFunc) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func a(name, ip string, ttl uint32) dns.RR {
	return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.ParseIP(ip).To4()}
}

func soa(ttl, minttl uint32) dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: zone + ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns: "ns.bl.test.", Mbox: "hostmaster.bl.test.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: minttl}
}

func TestLookupRawAnswers(t *testing.T) {
	tests := []struct {
		name   string
		answer func(req, m *dns.Msg) // fills m, already a reply to req
		status Status
		codes  []netip.Addr
		ttl    time.Duration
		reason string
		err    error
	}{
		{
			name: "answer record for another name",
			answer: func(req, m *dns.Msg) {
				m.Answer = append(m.Answer, a("3.0.0.127."+zone+".", "127.0.0.2", 300))
			},
			status: Error, err: ErrMismatch,
		},
		{
			name: "name compared without case",
			answer: func(req, m *dns.Msg) {
				m.Question[0].Name = strings.ToUpper(req.Question[0].Name)
				m.Answer = append(m.Answer, a(strings.ToUpper(req.Question[0].Name), "127.0.0.2", 300))
			},
			status: Listed, codes: addrs("127.0.0.2"), ttl: 300 * time.Second,
		},
		{
			name: "lowest TTL of the A records",
			answer: func(req, m *dns.Msg) {
				q := req.Question[0].Name
				m.Answer = append(m.Answer, a(q, "127.0.0.2", 300), a(q, "127.0.0.4", 30), a(q, "127.0.0.10", 900))
			},
			status: Listed, codes: addrs("127.0.0.2", "127.0.0.4", "127.0.0.10"), ttl: 30 * time.Second,
		},
		{
			name: "CNAME to a listed name",
			answer: func(req, m *dns.Msg) {
				q := req.Question[0].Name
				target := "listed.bl.test."
				m.Answer = append(m.Answer,
					&dns.CNAME{Hdr: dns.RR_Header{Name: q, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: target},
					a(target, "127.0.0.2", 120))
			},
			status: Listed, codes: addrs("127.0.0.2"), ttl: 120 * time.Second,
		},
		{
			name: "NXDOMAIN: SOA minimum below its TTL",
			answer: func(req, m *dns.Msg) {
				m.Rcode = dns.RcodeNameError
				m.Ns = append(m.Ns, soa(3600, 20))
			},
			status: NotListed, ttl: 20 * time.Second,
		},
		{
			name: "NXDOMAIN: SOA TTL below its minimum",
			answer: func(req, m *dns.Msg) {
				m.Rcode = dns.RcodeNameError
				m.Ns = append(m.Ns, soa(10, 3600))
			},
			status: NotListed, ttl: 10 * time.Second,
		},
		{
			name: "NODATA with SOA",
			answer: func(req, m *dns.Msg) {
				m.Ns = append(m.Ns, soa(900, 45))
			},
			status: NotListed, ttl: 45 * time.Second,
		},
		{
			name: "NXDOMAIN without SOA",
			answer: func(req, m *dns.Msg) {
				m.Rcode = dns.RcodeNameError
			},
			status: NotListed, ttl: 0,
		},
		{
			name: "REFUSED without a question section",
			answer: func(req, m *dns.Msg) {
				m.Rcode = dns.RcodeRefused
				m.Question = nil
			},
			status: Error, err: ErrRefused,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := rawServer(t, func(w dns.ResponseWriter, req *dns.Msg) {
				m := new(dns.Msg)
				m.SetReply(req)
				if req.Question[0].Qtype == dns.TypeA {
					tt.answer(req, m)
				}
				w.WriteMsg(m)
			})
			r := newTestResolver(t, 2*time.Second, addr)
			res := r.Lookup(context.Background(), Query{Zone: zone, IP: netip.MustParseAddr("127.0.0.2"), NoTXT: true})
			if res.Status != tt.status || !slices.Equal(res.Codes, tt.codes) || res.TTL != tt.ttl {
				t.Errorf("Lookup = %v %v TTL %v (err %v); want %v %v TTL %v", res.Status, res.Codes, res.TTL, res.Err, tt.status, tt.codes, tt.ttl)
			}
			if tt.err != nil && !errors.Is(res.Err, tt.err) {
				t.Errorf("Err = %v, want one wrapping %v", res.Err, tt.err)
			}
		})
	}
}

// The RFC 5782 IPv6 test point ::ffff:127.0.0.2 is published under its
// nibble name; KeepMapped asks that name, a plain query the IPv4 one.
func TestLookupKeepMapped(t *testing.T) {
	s := dnstest.Start(t)
	nibbles := "2.0.0.0.0.0.f.7.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0." + zone
	s.Set(nibbles, dnstest.Answer{A: []string{"127.0.0.2"}})
	r := newTestResolver(t, 2*time.Second, s.Addr)
	ip := netip.MustParseAddr("::ffff:127.0.0.2")
	tests := []struct {
		name       string
		keepMapped bool
		want       Status
		asked      string
	}{
		{"KeepMapped asks the nibble name", true, Listed, nibbles},
		{"default asks the IPv4 name", false, NotListed, "2.0.0.127." + zone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true, KeepMapped: tt.keepMapped})
			if res.Status != tt.want {
				t.Errorf("Lookup = %v (%v), want %v", res.Status, res.Err, tt.want)
			}
			if n := s.QueriesFor(tt.asked, dns.TypeA); n != 1 {
				t.Errorf("queries for %s = %d, want 1", tt.asked, n)
			}
		})
	}
}

// A listing stands when its reason cannot be fetched.
func TestLookupTXTFailureKeepsListing(t *testing.T) {
	addr := rawServer(t, func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		if req.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, a(req.Question[0].Name, "127.0.0.2", 300))
		} else {
			m.Rcode = dns.RcodeServerFailure
		}
		w.WriteMsg(m)
	})
	r := newTestResolver(t, 2*time.Second, addr)
	res := r.Lookup(context.Background(), Query{Zone: zone, IP: netip.MustParseAddr("192.0.2.1")})
	if res.Status != Listed || res.Reason != "" || res.Err != nil {
		t.Fatalf("Lookup = %v %q %v; want Listed with no reason and no error", res.Status, res.Reason, res.Err)
	}
}

func TestServerAddr(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "192.0.2.53", want: "192.0.2.53:53"},
		{in: "192.0.2.53:5353", want: "192.0.2.53:5353"},
		{in: "::1", want: "[::1]:53"},
		{in: "[::1]", want: "[::1]:53"},
		{in: "[2001:db8::53]:5353", want: "[2001:db8::53]:5353"},
		{in: " unbound ", want: "unbound:53"},
		{in: "unbound:5300", want: "unbound:5300"},
		{in: "", bad: true},
		{in: "192.0.2.53:0", bad: true},
		{in: "192.0.2.53:dns", bad: true},
		{in: ":53", bad: true},
		{in: "[::1", bad: true},
		{in: "[nonsense]", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := serverAddr(tt.in, "53")
			if tt.bad {
				if err == nil {
					t.Errorf("serverAddr(%q) = %q, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("serverAddr(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestNewResolver(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Run("resolv.conf", func(t *testing.T) {
		p := write("resolv.conf", "# local\nnameserver 192.0.2.53\nnameserver ::1\noptions timeout:5\n")
		r, err := newResolver(nil, time.Second, p)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"192.0.2.53:53", "[::1]:53"}; !slices.Equal(r.Servers(), want) {
			t.Errorf("Servers = %v, want %v", r.Servers(), want)
		}
		// resolv.conf's "options timeout:5" is not taken: mail waits for
		// the timeout given.
		if r.timeout != time.Second {
			t.Errorf("timeout = %v, want 1s", r.timeout)
		}
	})
	t.Run("resolv.conf without nameserver", func(t *testing.T) {
		if _, err := newResolver(nil, time.Second, write("empty.conf", "search example.org\n")); err == nil {
			t.Error("want an error")
		}
	})
	t.Run("missing resolv.conf", func(t *testing.T) {
		if _, err := newResolver(nil, time.Second, filepath.Join(dir, "nope")); err == nil {
			t.Error("want an error")
		}
	})
	t.Run("configured servers win", func(t *testing.T) {
		r, err := newResolver([]string{"127.0.0.1:5300"}, time.Second, filepath.Join(dir, "nope"))
		if err != nil || !slices.Equal(r.Servers(), []string{"127.0.0.1:5300"}) || r.timeout != time.Second {
			t.Errorf("newResolver = %v, %v", r, err)
		}
	})
	t.Run("bad server", func(t *testing.T) {
		if _, err := NewResolver([]string{"192.0.2.1:99999"}, time.Second); err == nil {
			t.Error("want an error")
		}
	})
	// No timeout of its own: the caller gives one ([dns] timeout).
	t.Run("no timeout", func(t *testing.T) {
		for _, d := range []time.Duration{0, -time.Second} {
			if _, err := NewResolver([]string{"127.0.0.1:5300"}, d); err == nil || !strings.Contains(err.Error(), "timeout must be positive") {
				t.Errorf("NewResolver with timeout %v: %v, want an error naming the timeout", d, err)
			}
		}
	})
}

func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{NotListed: "clean", Listed: "listed", Error: "error", 7: "Status(7)"} {
		if got := s.String(); got != want {
			t.Errorf("Status(%d).String() = %q, want %q", s, got, want)
		}
	}
}

func TestPrintable(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{" a\tb\r\nc\x00 ", "a b  c"},
		{"bad \xff utf8", "bad \uFFFD utf8"},
		{strings.Repeat("é", 300), strings.Repeat("é", maxReason/2)},
	}
	for _, tt := range tests {
		if got := printable(tt.in); got != tt.want {
			t.Errorf("printable(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// One Resolver serves all sessions at once; every lookup gets its own answer.
func TestLookupConcurrent(t *testing.T) {
	s := dnstest.Start(t)
	const n = 32
	for i := range n {
		if i%2 == 0 {
			s.Set(QueryName(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), zone), dnstest.Answer{A: []string{"127.0.0.2"}})
		}
	}
	r := newTestResolver(t, 5*time.Second, s.Addr)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			ip := netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
			res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true})
			want := NotListed
			if i%2 == 0 {
				want = Listed
			}
			if res.Status != want {
				errs <- fmt.Errorf("%s: %v (%v), want %v", ip, res.Status, res.Err, want)
				return
			}
			errs <- nil
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
