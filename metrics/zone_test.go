package metrics

import (
	"context"
	"net"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/zone"
)

// The zone's series follow its counters.
func TestZoneSeries(t *testing.T) {
	srv, err := zone.New(zone.Options{Zone: zone.Zone{
		Name: "bl.test", TTL: 5 * time.Minute, NS: []string{"ns1.example.org."}, TXT: "{category}",
		SOA: zone.SOA{Refresh: time.Hour, Retry: 10 * time.Minute, Expire: 7 * 24 * time.Hour, Minimum: 5 * time.Minute},
	}, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := srv.Update([]zone.Listing{{Prefix: netip.MustParsePrefix("192.0.2.7/32"), Category: "zombie"}})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeUDP(pc)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	c := &dns.Client{Timeout: 2 * time.Second}
	for _, name := range []string{"7.2.0.192.bl.test.", "8.2.0.192.bl.test.", "8.2.0.192.other.test."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		if _, _, err := c.Exchange(m, pc.LocalAddr().String()); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	m := New("test")
	m.SetZoneStats(srv.Stats)
	ts := httptest.NewServer(m.Handler())
	defer ts.Close()
	for series, want := range map[string]float64{
		"blmilter_zone_serial":                            float64(serial),
		`blmilter_zone_queries_total{transport="udp"}`:    3,
		`blmilter_zone_answers_total{result="listed"}`:    1,
		`blmilter_zone_answers_total{result="nxdomain"}`:  1,
		`blmilter_zone_answers_total{result="refused"}`:   1,
		`blmilter_zone_transfers_total{result="refused"}`: 0,
		`blmilter_zone_notify_total{result="acked"}`:      0,
	} {
		if got := scrape(t, ts.URL, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}
