// Package dnstest runs a real DNS server on loopback for tests: an
// in-process miekg/dns server on 127.0.0.1 (UDP and TCP on the same port)
// whose answers a test sets per query name, including failures such as
// SERVFAIL, REFUSED, silence and truncation.
package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Answer is what the server says for one name.
type Answer struct {
	A        []string // A records, e.g. "127.0.0.2"
	AAAA     []string
	TXT      []string
	TTL      uint32 // TTL of the answer records (default 300)
	Rcode    int    // dns.RcodeSuccess (0) unless set; dns.RcodeNameError for NXDOMAIN
	Silent   bool   // never answer
	Truncate bool   // over UDP answer with TC set and no records; full answer over TCP
	Delay    time.Duration
	// Wait, if set, is called with the query's type before the server
	// answers, and the answer waits until it returns: a test holds back
	// one type of answer (the TXT) while others flow.
	Wait func(qtype uint16)
}

// Server is a DNS server on 127.0.0.1.
type Server struct {
	Addr string // "127.0.0.1:PORT", for both UDP and TCP

	mu       sync.RWMutex
	names    map[string]Answer // by lower-case FQDN
	zones    map[string]Answer // default answer for any name under a zone
	soaMin   uint32
	queries  atomic.Int64
	perName  sync.Map // FQDN+type -> *atomic.Int64
	udp, tcp *dns.Server
}

// Start starts a server and stops it when the test ends. Names not set
// answer NXDOMAIN with an SOA whose minimum is 60 s (see SetNegativeTTL).
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{names: map[string]Answer{}, zones: map[string]Answer{}, soaMin: 60}
	pc, ln, err := listenPair()
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	s.Addr = pc.LocalAddr().String()
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	s.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve(false)), NotifyStartedFunc: notify}
	s.tcp = &dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.serve(true)), NotifyStartedFunc: notify}
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	<-started
	<-started
	t.Cleanup(func() {
		s.udp.Shutdown()
		s.tcp.Shutdown()
	})
	return s
}

// listenPair listens on one port for UDP and TCP. The kernel picks a free
// UDP port, which may be taken for TCP; then it tries again.
func listenPair() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp: %w", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("listen tcp beside udp: %w", lastErr)
}

// Set sets the answer for one name (a query name such as
// "2.0.0.127.zen.example."; the trailing dot is optional).
func (s *Server) Set(name string, a Answer) {
	s.mu.Lock()
	s.names[dns.Fqdn(strings.ToLower(name))] = a
	s.mu.Unlock()
}

// SetZone sets the answer for every name under zone that has no answer of its own.
func (s *Server) SetZone(zone string, a Answer) {
	s.mu.Lock()
	s.zones[dns.Fqdn(strings.ToLower(zone))] = a
	s.mu.Unlock()
}

// SetNegativeTTL sets the SOA minimum sent with NXDOMAIN answers.
func (s *Server) SetNegativeTTL(ttl uint32) {
	s.mu.Lock()
	s.soaMin = ttl
	s.mu.Unlock()
}

// Queries returns how many queries the server received in all.
func (s *Server) Queries() int64 { return s.queries.Load() }

// QueriesFor returns how many queries of type qtype (dns.TypeA, dns.TypeTXT)
// the server received for name.
func (s *Server) QueriesFor(name string, qtype uint16) int64 {
	v, ok := s.perName.Load(key(dns.Fqdn(strings.ToLower(name)), qtype))
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

func key(name string, qtype uint16) string { return name + "/" + dns.TypeToString[qtype] }

func (s *Server) lookup(name string) (Answer, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if a, ok := s.names[name]; ok {
		return a, true
	}
	for i := 0; i < len(name); i++ {
		if i == 0 || name[i-1] == '.' {
			if a, ok := s.zones[name[i:]]; ok {
				return a, true
			}
		}
	}
	return Answer{}, false
}

func (s *Server) serve(overTCP bool) func(dns.ResponseWriter, *dns.Msg) {
	return func(w dns.ResponseWriter, req *dns.Msg) {
		s.queries.Add(1)
		if len(req.Question) != 1 {
			m := new(dns.Msg)
			m.SetRcode(req, dns.RcodeFormatError)
			w.WriteMsg(m)
			return
		}
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		c, _ := s.perName.LoadOrStore(key(name, q.Qtype), new(atomic.Int64))
		c.(*atomic.Int64).Add(1)

		a, found := s.lookup(name)
		if a.Silent {
			return
		}
		if a.Delay > 0 {
			time.Sleep(a.Delay)
		}
		if a.Wait != nil {
			a.Wait(q.Qtype)
		}
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		if !found {
			m.Rcode = dns.RcodeNameError
		} else {
			m.Rcode = a.Rcode
		}
		if a.Truncate && !overTCP {
			m.Truncated = true
			w.WriteMsg(m)
			return
		}
		ttl := a.TTL
		if ttl == 0 {
			ttl = 300
		}
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
		}
		if m.Rcode == dns.RcodeSuccess {
			switch q.Qtype {
			case dns.TypeA:
				for _, ip := range a.A {
					m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: net.ParseIP(ip).To4()})
				}
			case dns.TypeAAAA:
				for _, ip := range a.AAAA {
					m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: net.ParseIP(ip)})
				}
			case dns.TypeTXT:
				for _, txt := range a.TXT {
					m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: []string{txt}})
				}
			}
		}
		if len(m.Answer) == 0 {
			s.mu.RLock()
			min := s.soaMin
			s.mu.RUnlock()
			m.Ns = append(m.Ns, &dns.SOA{
				Hdr: dns.RR_Header{Name: "test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: min},
				Ns:  "ns.test.", Mbox: "hostmaster.test.", Serial: 1,
				Refresh: 3600, Retry: 600, Expire: 86400, Minttl: min,
			})
		}
		w.WriteMsg(m)
	}
}

// AnswerA returns the first A record in r's answer section as text, ""
// when there is none: what a DNS list's client reads from an answer.
func AnswerA(r *dns.Msg) string {
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}
