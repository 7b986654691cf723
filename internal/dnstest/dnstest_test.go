package dnstest

import (
	"testing"

	"github.com/miekg/dns"
)

func TestServerAnswersAndCounts(t *testing.T) {
	s := Start(t)
	s.Set("2.0.0.127.bl.test", Answer{A: []string{"127.0.0.2"}, TTL: 42})
	s.SetZone("bl.test", Answer{Rcode: dns.RcodeServerFailure})

	c := new(dns.Client)
	ask := func(name string) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := c.Exchange(m, s.Addr)
		if err != nil {
			t.Fatalf("exchange %s: %v", name, err)
		}
		return r
	}
	r := ask("2.0.0.127.bl.test.")
	if len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 42 {
		t.Fatalf("listed name: got %v", r)
	}
	if r := ask("3.0.0.127.bl.test."); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("zone default: got rcode %d", r.Rcode)
	}
	if r := ask("other.test."); r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
		t.Fatalf("unknown name: got %v", r)
	}
	if n := s.QueriesFor("2.0.0.127.bl.test", dns.TypeA); n != 1 {
		t.Fatalf("QueriesFor = %d, want 1", n)
	}
}
