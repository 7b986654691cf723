package policy_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/policy"
)

const threeListsConfig = `
[[list]]
name = "Spamhaus ZEN"
zone = "zen.test"
weight = 3
codes = { "127.0.0.2" = "spam-source", "127.0.0.4-127.0.0.7" = "zombie" }

[[list]]
name = "Second"
zone = "two.test"
weight = 1

[[list]]
name = "Third"
zone = "three.test"
weight = 1
`

// gate holds back TXT answers until it is opened.
type gate struct {
	once sync.Once
	ch   chan struct{}
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

func (g *gate) wait(qtype uint16) {
	if qtype == dns.TypeTXT {
		<-g.ch
	}
}

// The mail path sends one A query per list for a new client, and nothing
// else: the reply never waits for a TXT text. The texts arrive afterwards
// for the decision record, one TXT query per listing, and a client refused
// again finds them in the text cache.
func TestMailPathOnePacketPerList(t *testing.T) {
	const ip = "192.0.2.7"
	zones := []string{"zen.test", "two.test", "three.test"}
	txt := map[string]string{"zen.test": "exploited host", "two.test": "seen at traps"}

	t.Run("without a recorder", func(t *testing.T) {
		s := dnstest.Start(t)
		s.Set(qname(ip, "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, TXT: []string{txt["zen.test"]}})
		s.Set(qname(ip, "two.test"), dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{txt["two.test"]}})
		e := newEngine(t, s, threeListsConfig, policy.Deps{})
		v := e.Check(context.Background(), netip.MustParseAddr(ip))
		if v.Action != policy.ActionReject || len(v.Hits) != 2 {
			t.Fatalf("verdict %+v", v)
		}
		e.Reply(&v)
		e.FlushDecisions()
		for _, z := range zones {
			if a, x := s.QueriesFor(qname(ip, z), dns.TypeA), s.QueriesFor(qname(ip, z), dns.TypeTXT); a != 1 || x != 0 {
				t.Errorf("%s: %d A and %d TXT queries, want 1 and 0", z, a, x)
			}
		}
		if n := s.Queries(); n != int64(len(zones)) {
			t.Errorf("%d packets for %d lists", n, len(zones))
		}
	})

	t.Run("with a recorder", func(t *testing.T) {
		s := dnstest.Start(t)
		g := newGate()
		t.Cleanup(g.open)
		s.Set(qname(ip, "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, TXT: []string{txt["zen.test"]}, Wait: g.wait})
		s.Set(qname(ip, "two.test"), dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{txt["two.test"]}, Wait: g.wait})
		rec := &recorder{}
		e := newEngine(t, s, threeListsConfig, policy.Deps{Recorder: rec})

		v := e.Check(context.Background(), netip.MustParseAddr(ip))
		r := e.Reply(&v) // returns while every TXT answer is held back
		if r.Code != 550 {
			t.Fatalf("reply %+v", r)
		}
		if d := rec.all(); len(d) != 0 {
			t.Fatalf("decision recorded before its texts arrived: %+v", d)
		}
		g.open()
		e.FlushDecisions()
		d := rec.all()
		if len(d) != 1 || d[0].Ref != r.Ref {
			t.Fatalf("recorded %+v", d)
		}
		for _, h := range d[0].Verdict.Hits {
			if want := txt[zoneOf(t, e, h.List)]; h.Reason != want {
				t.Errorf("%s: recorded reason %q, want %q", h.List, h.Reason, want)
			}
		}
		// The verdict cache was not touched: its hits carry no texts.
		if v2 := e.Check(context.Background(), netip.MustParseAddr(ip)); !v2.Cached || v2.Hits[0].Reason != "" {
			t.Errorf("cached verdict %+v", v2)
		}
		for _, z := range zones {
			wantTXT := int64(0)
			if txt[z] != "" {
				wantTXT = 1
			}
			if a, x := s.QueriesFor(qname(ip, z), dns.TypeA), s.QueriesFor(qname(ip, z), dns.TypeTXT); a != 1 || x != wantTXT {
				t.Errorf("%s: %d A and %d TXT queries, want 1 and %d", z, a, x, wantTXT)
			}
		}

		// Refused again: recorded at once, texts from the cache, no packet.
		before := s.Queries()
		v = e.Check(context.Background(), netip.MustParseAddr(ip))
		r = e.Reply(&v)
		d = rec.all()
		if len(d) != 2 || d[1].Ref != r.Ref || d[1].Verdict.Hits[0].Reason == "" {
			t.Errorf("second decision %+v", d)
		}
		if n := s.Queries() - before; n != 0 {
			t.Errorf("a client refused again cost %d packets", n)
		}
	})
}

func zoneOf(t *testing.T, e *policy.Engine, list string) string {
	t.Helper()
	for _, l := range e.Lists() {
		if l.Name == list {
			return l.Zone
		}
	}
	t.Fatalf("no list %q", list)
	return ""
}

// A text that cannot be had leaves the record without it; the record is
// never lost.
func TestDecisionRecordedWhenReasonFails(t *testing.T) {
	s := dnstest.Start(t)
	ip := "192.0.2.7"
	s.Set(qname(ip, "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, TXT: []string{"exploited host"}})
	rec := &recorder{}
	e := newEngine(t, s, zenConfig, policy.Deps{Recorder: rec})
	v := e.Check(context.Background(), netip.MustParseAddr(ip))
	// The list fails after the verdict.
	s.Set(qname(ip, "zen.test"), dnstest.Answer{Rcode: dns.RcodeServerFailure})
	r := e.Reply(&v)
	e.FlushDecisions()
	if d := rec.all(); len(d) != 1 || d[0].Ref != r.Ref || d[0].Verdict.Hits[0].Reason != "" || d[0].Verdict.Action != policy.ActionReject {
		t.Errorf("recorded %+v", d)
	}
}

// Clients with the same answers share one result in the verdict cache.
func TestResultsShared(t *testing.T) {
	s := dnstest.Start(t)
	for _, ip := range []string{"192.0.2.7", "192.0.2.8"} {
		s.Set(qname(ip, "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
	}
	s.Set(qname("192.0.2.9", "zen.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	s.Set(qname("192.0.2.10", "zen.test"), dnstest.Answer{Rcode: dns.RcodeServerFailure})
	s.Set(qname("192.0.2.11", "zen.test"), dnstest.Answer{Rcode: dns.RcodeServerFailure})
	e := newEngine(t, s, zenConfig, policy.Deps{})
	result := func(ip string) any {
		t.Helper()
		return e.DNSResult(context.Background(), netip.MustParseAddr(ip))
	}
	check := func(ip string) policy.Verdict {
		t.Helper()
		return e.Check(context.Background(), netip.MustParseAddr(ip))
	}
	if a, b := result("192.0.2.7"), result("192.0.2.8"); a != b {
		t.Errorf("same listing, two results")
	}
	if a, b := result("192.0.2.7"), result("192.0.2.9"); a == b {
		t.Errorf("another code shares the result")
	}
	if v := check("192.0.2.9"); len(v.Hits) != 1 || v.Hits[0].Category != "spam-source" {
		t.Errorf("the other code lost its own result: %+v", v)
	}
	if a, b := result("192.0.2.1"), result("192.0.2.2"); a != policy.EmptyResult || b != policy.EmptyResult {
		t.Errorf("clean results not shared")
	}
	if a, b := result("192.0.2.10"), result("192.0.2.11"); a == b {
		t.Errorf("error results are shared")
	}
	if v := check("192.0.2.10"); len(v.Errors) != 1 {
		t.Errorf("error result: %+v", v)
	}
}
