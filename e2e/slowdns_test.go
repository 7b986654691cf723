//go:build e2e

package e2e

import (
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// slowList is a DNS server in front of rbldnsd that answers one zone late.
type slowList struct {
	Addr string
	mu   sync.Mutex
	late []lateAnswer
}

// lateAnswer is one late answer to an A query: the name asked, and the
// time from the query's arrival to the answer's sending.
type lateAnswer struct {
	name string
	took time.Duration
}

// answerTimes returns how long the late answers to A queries took, as the
// server saw it.
func (s *slowList) answerTimes() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]time.Duration, len(s.late))
	for i, a := range s.late {
		out[i] = a.took
	}
	return out
}

// answers returns the late answers to A queries in the order they were
// sent.
func (s *slowList) answers() []lateAnswer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.late)
}

// startSlowList serves DNS on 127.0.0.1 by asking upstream (rbldnsd),
// except that the answers for names under zone wait delay first: a list
// that answers late, which rbldnsd cannot play.
func startSlowList(t testing.TB, upstream, zone string, delay time.Duration) *slowList {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	suffix := "." + strings.ToLower(dns.Fqdn(zone))
	client := &dns.Client{Timeout: 2 * time.Second}
	sl := &slowList{}
	handler := func(w dns.ResponseWriter, req *dns.Msg) {
		start := time.Now()
		late := len(req.Question) == 1 && strings.HasSuffix(strings.ToLower(req.Question[0].Name), suffix)
		resp, _, err := client.Exchange(req, upstream)
		if err != nil {
			resp = new(dns.Msg)
			resp.SetRcode(req, dns.RcodeServerFailure)
		}
		// The list answers delay after the query came, not delay plus
		// the upstream's round trip.
		if late {
			time.Sleep(time.Until(start.Add(delay)))
		}
		w.WriteMsg(resp)
		if late && req.Question[0].Qtype == dns.TypeA {
			sl.mu.Lock()
			sl.late = append(sl.late, lateAnswer{strings.ToLower(req.Question[0].Name), time.Since(start)})
			sl.mu.Unlock()
		}
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(handler), NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	sl.Addr = pc.LocalAddr().String()
	return sl
}
