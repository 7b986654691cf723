package zone_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/blmilter/blmilter/store"
	"github.com/blmilter/blmilter/zone"
)

// The daemon's wiring: the zone follows the store, keeps its serial there,
// and serves UDP and TCP on one address.
func Example() {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	st, err := store.Open("blmilter.db", store.Options{Logger: log})
	if err != nil {
		log.Error("store", "err", err)
		return
	}
	defer st.Close()
	const name = "bl.example.org."
	serial, digest, err := st.ZoneSerial(ctx, name)
	if err != nil {
		log.Error("zone serial", "err", err)
		return
	}
	keyFile, _ := os.ReadFile("/etc/blmilter/xfr.key")
	secret, err := zone.ParseTSIGSecret(keyFile)
	if err != nil {
		log.Error("tsig", "err", err)
		return
	}
	srv, err := zone.New(zone.Options{
		Zone: zone.Zone{
			Name:      name,
			TTL:       5 * time.Minute,
			NS:        []string{"ns1.example.org.", "ns2.example.org."},
			SOA:       zone.SOA{RName: "hostmaster.example.org.", Refresh: time.Hour, Retry: 10 * time.Minute, Expire: 7 * 24 * time.Hour, Minimum: 5 * time.Minute},
			Codes:     map[string]netip.Addr{"zombie": netip.MustParseAddr("127.0.0.4")},
			TXT:       "{category}: see {url}",
			PublicURL: "https://lookup.example.org",
		},
		Transfer: []netip.Prefix{netip.MustParsePrefix("192.0.2.53/32")},
		Notify:   []string{"192.0.2.53:53"},
		TSIG:     &zone.TSIG{Name: "xfr.example.org.", Algorithm: "hmac-sha256", Secret: secret},
		Serial:   serial,
		Digest:   digest,
		OnSerial: func(serial uint32, digest string) error { return st.SetZoneSerial(ctx, name, serial, digest) },
		Logger:   log,
	})
	if err != nil {
		log.Error("zone", "err", err)
		return
	}
	feed := zone.NewFeeder(srv, func() []zone.Listing {
		var out []zone.Listing
		for _, l := range st.LiveListings() {
			zl := zone.Listing{Prefix: l.Prefix, Category: l.Category, Reason: l.Reason}
			if l.ExpiresAt != nil {
				zl.Expires = *l.ExpiresAt
			}
			out = append(out, zl)
		}
		return out
	})
	st.OnChange(func(netip.Prefix) { feed.Changed() })
	feed.Sync()
	go feed.Run(ctx)

	pc, err := net.ListenPacket("udp", "127.0.0.1:5300")
	if err != nil {
		log.Error("listen", "err", err)
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:5300")
	if err != nil {
		log.Error("listen", "err", err)
		return
	}
	go srv.Serve(pc, l)
	// ... until the daemon stops:
	shutdown, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	srv.Shutdown(shutdown)
}
