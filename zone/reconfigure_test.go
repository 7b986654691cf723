package zone

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
)

// A reload's new TTL, codes and TXT template are served at once under a
// new serial, which the secondaries are notified of; a new transfer list
// and new notify targets apply too; the name cannot change.
func TestReconfigure(t *testing.T) {
	first := startNotifyReceiver(t, 1, nil)
	opts := testOptions()
	opts.Notify = []string{first.addr}
	ts := startServer(t, opts, serverListings)
	const name = "7.2.18.198.bl.example.org."
	before := ts.Serial()
	<-first.serials // the first load's NOTIFY

	r := ask(t, ts.addr, "udp", name, dns.TypeA)
	if dnstest.AnswerA(r) != "127.0.0.4" || r.Answer[0].Header().Ttl != 300 {
		t.Fatalf("before: %v", r)
	}

	second := startNotifyReceiver(t, 1, nil)
	z := opts.Zone
	z.TTL = 30 * time.Second
	z.Codes = map[string]netip.Addr{"zombie": netip.MustParseAddr("127.0.0.14")}
	z.TXT = "{category} ({reason})"
	if err := ts.Reconfigure(z, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, []string{second.addr}); err != nil {
		t.Fatal(err)
	}
	r = ask(t, ts.addr, "udp", name, dns.TypeA)
	if dnstest.AnswerA(r) != "127.0.0.14" || r.Answer[0].Header().Ttl != 30 {
		t.Errorf("after: %v", r)
	}
	if txt := answerTXT(ask(t, ts.addr, "tcp", name, dns.TypeTXT)); txt != "zombie (trap hit)" {
		t.Errorf("TXT after: %q", txt)
	}
	after := ts.Serial()
	if !serialAfter(after, before) {
		t.Errorf("serial %d after a change of records, was %d", after, before)
	}
	select {
	case got := <-second.serials:
		if got != after {
			t.Errorf("new target notified of %d, want %d", got, after)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the new notify target heard nothing")
	}
	if n := first.received.Load(); n != 1 {
		t.Errorf("the dropped notify target got %d NOTIFYs, want only the first", n)
	}
	if _, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, nil); err == nil || !strings.Contains(err.Error(), "rcode: 5") {
		t.Errorf("AXFR from outside the new transfer networks: %v, want REFUSED", err)
	}

	// The same settings again: nothing to serve anew.
	if err := ts.Reconfigure(z, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, []string{second.addr}); err != nil {
		t.Fatal(err)
	}
	if ts.Serial() != after {
		t.Errorf("serial moved to %d with the same records", ts.Serial())
	}
	if _, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, nil); err != nil {
		t.Errorf("AXFR from a transfer network again: %v", err)
	}

	for _, bad := range []struct {
		name   string
		change func(*Zone)
		notify []string
	}{
		{"another name", func(z *Zone) { z.Name = "other.example.org" }, nil},
		{"a bad code", func(z *Zone) { z.Codes = map[string]netip.Addr{"zombie": netip.MustParseAddr("10.0.0.1")} }, nil},
		{"no name servers", func(z *Zone) { z.NS = nil }, nil},
		{"a bad notify address", func(*Zone) {}, []string{"no port"}},
	} {
		z2 := z
		bad.change(&z2)
		if err := ts.Reconfigure(z2, nil, bad.notify); err == nil {
			t.Errorf("%s: accepted", bad.name)
		}
	}
	if dnstest.AnswerA(ask(t, ts.addr, "udp", name, dns.TypeA)) != "127.0.0.14" || ts.Serial() != after {
		t.Error("a refused change changed the zone")
	}
}

// A serial learnt after New stands as New's would; after the first Update
// it is too late to change it.
func TestSetPublished(t *testing.T) {
	s, err := New(testOptions())
	if err != nil {
		t.Fatal(err)
	}
	first, _ := s.Update(serverListings)
	s2, err := New(testOptions())
	if err != nil {
		t.Fatal(err)
	}
	s2.SetPublished(first, s.snap.Load().b.digest)
	if serial, changed := s2.Update(serverListings); serial != first || !changed {
		t.Errorf("serial %d (changed %v), want the published %d", serial, changed, first)
	}
	s2.SetPublished(first+100, "other")
	if serial, _ := s2.Update(serverListings[1:]); serial == first+100 || serial == first+101 {
		t.Errorf("SetPublished after the first Update moved the serial to %d", serial)
	}
}
