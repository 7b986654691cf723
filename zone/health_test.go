package zone

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/health"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
)

// TestHealthProbePasses runs blmilter's own list health probe (RFC 5782
// test points) against the zone, for a list asked about IPv4 and IPv6 and
// for one asked about IPv6 alone, which must publish ::ffff:127.0.0.2.
// With 127.0.0.0/8 and ::/0 listed, 127.0.0.1 and ::ffff:7f00:1 must still
// be unlisted.
func TestHealthProbePasses(t *testing.T) {
	for _, tt := range []struct {
		name     string
		listings []Listing
	}{
		{"the list", serverListings},
		{"networks around the test points", append([]Listing{
			{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Category: "zombie"},
			{Prefix: netip.MustParsePrefix("::/0"), Category: "zombie"},
		}, serverListings...)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, testOptions(), tt.listings)
			cfg := testengine.Config(t, nil, fmt.Sprintf(`
[dns]
servers = [%q]
timeout = "1s"
[[list]]
name = "Site zone"
zone = "bl.example.org"
weight = 3
[[list]]
name = "Site zone IPv6"
zone = "bl.example.org"
weight = 3
ipv4 = false
`, ts.addr))
			res, err := dnsbl.NewResolver([]string{ts.addr}, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			// The monitor the daemon runs, strict: one failed round
			// degrades, and the hit ratio cannot come into it.
			var engine *policy.Engine
			mon := health.New(func() health.Target { return engine }, func() health.Resolver { return res }, health.Options{
				Interval: time.Hour, Timeout: time.Second, FailAfter: 1,
				MaxHitRatio: 1, MinChecks: 1 << 20, RatioWindow: time.Hour,
			})
			engine = testengine.From(t, cfg, policy.Deps{Observers: []policy.Observer{mon}})
			before := ts.Stats()
			mon.ProbeDue(context.Background())
			sts := mon.Statuses()
			if len(sts) != 2 {
				t.Fatalf("statuses %+v, want two lists", sts)
			}
			for _, st := range sts {
				if !st.Healthy || st.LastProbe.IsZero() {
					t.Errorf("%s: healthy %v (%s: %s), probed %v", st.List, st.Healthy, st.Code, st.Reason, st.LastProbe)
				}
			}
			after := ts.Stats()
			// Listed test points and unlisted ones were asked: at least
			// the distinct questions (127.0.0.2 and ::ffff:127.0.0.2 listed;
			// 127.0.0.1, ::ffff:127.0.0.1 and a random address not). The two
			// lists ask some of them at the same moment, and the resolver
			// sends identical questions in flight once.
			if after.Listed-before.Listed < 2 || after.NXDomain-before.NXDomain < 3 {
				t.Errorf("probe queries: %d listed and %d NXDOMAIN answers, want at least 2 and 3",
					after.Listed-before.Listed, after.NXDomain-before.NXDomain)
			}
		})
	}
}
