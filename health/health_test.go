package health

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
)

const zone = "bl.test"

// clock is a settable time source for the monitor's schedule.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	dns     *dnstest.Server
	engine  *policy.Engine
	mon     *Monitor
	clock   *clock
	changes chan string
}

// honest makes the zone behave as RFC 5782 asks: the test points only.
func honest(s *dnstest.Server) {
	s.SetZone(zone, dnstest.Answer{Rcode: dns.RcodeNameError})
	s.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), zone), dnstest.Answer{A: []string{"127.0.0.2"}})
}

func newFixture(t *testing.T, extra string, opts Options) *fixture {
	t.Helper()
	f := &fixture{dns: dnstest.Start(t), clock: &clock{now: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}, changes: make(chan string, 16)}
	honest(f.dns)
	cfg := testengine.Config(t, f.dns, fmt.Sprintf(`
[dns]
timeout = "200ms"
[policy]
deadline = "2s"
[[list]]
name = "Test BL"
zone = %q
weight = 3
ipv6 = false
%s`, zone, extra))
	res, err := dnsbl.NewResolver([]string{f.dns.Addr}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// The default config's [health] values for what a test leaves out.
	d := config.Defaults().Health
	if opts.Interval == 0 {
		opts.Interval = d.Interval.Duration
	}
	if opts.Timeout == 0 {
		opts.Timeout = d.Timeout.Duration
	}
	if opts.FailAfter == 0 {
		opts.FailAfter = d.FailAfter
	}
	if opts.MaxHitRatio == 0 {
		opts.MaxHitRatio = d.MaxHitRatio
	}
	if opts.MinChecks == 0 {
		opts.MinChecks = d.MinChecks
	}
	if opts.RatioWindow == 0 {
		opts.RatioWindow = d.RatioWindow.Duration
	}
	opts.Now = f.clock.Now
	opts.OnChange = func(list string, state policy.ListState, reason string) {
		select {
		case f.changes <- fmt.Sprintf("%s %s", list, state):
		default: // the tests that read changes read them as they come
		}
	}
	f.mon = New(func() Target { return f.engine }, func() Resolver { return res }, opts)
	f.engine = testengine.From(t, cfg, policy.Deps{Observers: []policy.Observer{f.mon}})
	return f
}

func (f *fixture) status(t *testing.T) Status {
	t.Helper()
	for _, s := range f.mon.Statuses() {
		if s.List == "Test BL" {
			return s
		}
	}
	t.Fatal("no status for Test BL")
	return Status{}
}

func (f *fixture) engineHealthy(t *testing.T) bool {
	t.Helper()
	for _, l := range f.engine.Lists() {
		if l.Name == "Test BL" {
			return l.Healthy
		}
	}
	t.Fatal("no list Test BL")
	return false
}

func TestProbeFailures(t *testing.T) {
	tests := []struct {
		name     string
		breakIt  func(s *dnstest.Server)
		wantCode string
		wantText string
		rounds   int // probe rounds before the list is degraded
	}{
		{"answers everything", func(s *dnstest.Server) {
			s.SetZone(zone, dnstest.Answer{A: []string{"127.0.0.2"}})
			s.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.1"), zone), dnstest.Answer{A: []string{"127.0.0.2"}})
		}, ReasonAnswersAll, "answers everything", 1},
		{"resolver refused", func(s *dnstest.Server) {
			s.SetZone(zone, dnstest.Answer{A: []string{"127.255.255.254"}})
			s.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), zone), dnstest.Answer{A: []string{"127.255.255.254"}})
		}, ReasonResolverRefused, "use your own recursive resolver", 1},
		{"stops listing the test point", func(s *dnstest.Server) {
			s.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), zone), dnstest.Answer{Rcode: dns.RcodeNameError})
		}, ReasonMissesTestPoint, "health = false", 1},
		{"times out", func(s *dnstest.Server) {
			s.SetZone(zone, dnstest.Answer{Silent: true})
			s.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), zone), dnstest.Answer{Silent: true})
		}, ReasonUnreachable, "timeout", 2},
		{"SERVFAIL", func(s *dnstest.Server) {
			s.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), zone), dnstest.Answer{Rcode: dns.RcodeServerFailure})
		}, ReasonUnreachable, "SERVFAIL", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "", Options{Interval: time.Minute, MinBackoff: 10 * time.Second, FailAfter: 2})
			ctx := context.Background()
			f.mon.ProbeDue(ctx)
			if st := f.status(t); !st.Healthy || !f.engineHealthy(t) {
				t.Fatalf("honest list: status %+v", st)
			}
			tt.breakIt(f.dns)
			for round := 1; round <= tt.rounds; round++ {
				f.clock.Add(time.Minute + 10*time.Second) // one interval and its jitter
				f.mon.ProbeDue(ctx)
				st := f.status(t)
				if round < tt.rounds && !st.Healthy {
					t.Fatalf("degraded after %d round(s), want %d: %+v", round, tt.rounds, st)
				}
			}
			st := f.status(t)
			if st.Healthy || f.engineHealthy(t) {
				t.Fatalf("broken list still healthy: %+v", st)
			}
			if st.Code != tt.wantCode || !strings.Contains(strings.ToLower(st.Reason), strings.ToLower(tt.wantText)) {
				t.Errorf("status = %s %q, want %s containing %q", st.Code, st.Reason, tt.wantCode, tt.wantText)
			}

			// Recovery: the next due probe (a backoff, not a whole interval) restores it.
			honest(f.dns)
			f.dns.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), zone), dnstest.Answer{A: []string{"127.0.0.2"}})
			f.dns.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.1"), zone), dnstest.Answer{Rcode: dns.RcodeNameError})
			f.clock.Add(20 * time.Second)
			f.mon.ProbeDue(ctx)
			if st := f.status(t); !st.Healthy || !f.engineHealthy(t) {
				t.Fatalf("recovered list not restored: %+v", st)
			}
		})
	}
}

// A degraded list's listing is logged but does not reject.
func TestDegradedListDoesNotScore(t *testing.T) {
	f := newFixture(t, "", Options{})
	client := netip.MustParseAddr("192.0.2.99")
	f.dns.Set(dnsbl.QueryName(client, zone), dnstest.Answer{A: []string{"127.0.0.2"}})
	ctx := context.Background()
	if v := f.engine.Check(ctx, client); v.Action != policy.ActionReject {
		t.Fatalf("healthy list: action %s, want reject", v.Action)
	}
	f.dns.SetZone(zone, dnstest.Answer{A: []string{"127.0.0.2"}})
	f.mon.ProbeDue(ctx) // first probe: answers everything
	v := f.engine.Check(ctx, client)
	if v.Action != policy.ActionAccept || len(v.Hits) != 1 || !v.Hits[0].Degraded || v.Score != 0 {
		t.Fatalf("degraded list: verdict %+v, want accept with one degraded hit", v)
	}
}

// A list that stops answering is degraded, and checks stop waiting for it.
func TestTimedOutListStopsCostingTime(t *testing.T) {
	f := newFixture(t, `
[[list]]
name = "Fast BL"
zone = "fast.test"
weight = 3
health = false
`, Options{FailAfter: 2})
	f.dns.SetZone(zone, dnstest.Answer{Silent: true})
	f.dns.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), zone), dnstest.Answer{Silent: true})
	ctx := context.Background()
	for range 2 {
		f.mon.ProbeDue(ctx)
		f.clock.Add(time.Hour)
	}
	if st := f.status(t); st.Healthy {
		t.Fatalf("silent list still healthy: %+v", st)
	}
	// The resolver timeout is 200 ms and the deadline 2 s: a check that
	// still waited for the silent list would take at least 200 ms.
	v := f.engine.Check(ctx, netip.MustParseAddr("192.0.2.50"))
	if v.Duration >= 200*time.Millisecond {
		t.Errorf("check took %v with the silent list degraded; it should not wait for it", v.Duration)
	}
	if v.Action != policy.ActionAccept {
		t.Errorf("action %s, want accept", v.Action)
	}
}

// No list lists nine in ten real clients: the ratio alarm degrades it, and a
// window of normal traffic restores it.
func TestHitRatioAlarm(t *testing.T) {
	f := newFixture(t, "", Options{MaxHitRatio: 0.9, MinChecks: 200, RatioWindow: 10 * time.Minute})
	ctx := context.Background()
	f.mon.ProbeDue(ctx)
	// The list now lists every client but still passes its probes (it
	// answers NXDOMAIN for the documentation range the probe picks from).
	f.dns.SetZone(zone, dnstest.Answer{A: []string{"127.0.0.2"}})
	for _, n := range []string{"2.0.192", "100.51.198", "113.0.203"} {
		f.dns.SetZone(n+"."+zone, dnstest.Answer{Rcode: dns.RcodeNameError})
	}
	f.dns.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.1"), zone), dnstest.Answer{Rcode: dns.RcodeNameError})
	for i := range 199 {
		f.engine.Check(ctx, netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(1 + i%250)}))
	}
	if st := f.status(t); !st.Healthy {
		t.Fatalf("tripped before min_checks: %+v", st)
	}
	v := f.engine.Check(ctx, netip.MustParseAddr("10.9.9.9"))
	st := f.status(t)
	if st.Healthy || st.Code != ReasonHitRatio {
		t.Fatalf("after 200 listed checks: status %+v, want degraded by hit ratio", st)
	}
	if f.engineHealthy(t) {
		t.Fatal("engine still counts the list")
	}
	if v.Action != policy.ActionReject {
		t.Fatalf("the check that tripped the alarm was decided before it: action %s, want reject", v.Action)
	}
	if v := f.engine.Check(ctx, netip.MustParseAddr("10.9.9.10")); v.Action != policy.ActionAccept {
		t.Fatalf("after the alarm: action %s, want accept", v.Action)
	}
	// The probes still pass, but do not lift a ratio alarm.
	f.clock.Add(6 * time.Minute)
	f.mon.ProbeDue(ctx)
	if st := f.status(t); st.Healthy {
		t.Fatal("a passing probe lifted the ratio alarm")
	}
	// The list is fixed; a whole window of normal traffic lifts the alarm.
	honest(f.dns)
	f.clock.Add(11 * time.Minute)
	for i := range 5 {
		f.engine.Check(ctx, netip.AddrFrom4([4]byte{10, 2, 0, byte(1 + i)}))
	}
	if st := f.status(t); st.Healthy {
		t.Fatal("alarm lifted before a whole window of normal traffic")
	}
	f.clock.Add(11 * time.Minute)
	f.engine.Check(ctx, netip.MustParseAddr("10.3.0.1"))
	if st := f.status(t); !st.Healthy || !f.engineHealthy(t) {
		t.Fatalf("after a clean window: %+v", st)
	}
}

// Run probes at start and again within the interval.
func TestRunProbesPeriodically(t *testing.T) {
	f := newFixture(t, "", Options{Interval: 50 * time.Millisecond})
	f.mon.opts.Now = time.Now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.mon.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	f.dns.SetZone(zone, dnstest.Answer{A: []string{"127.0.0.2"}})
	timeout := time.After(5 * time.Second)
	for {
		select {
		case c := <-f.changes:
			if c == "Test BL degraded" {
				return
			}
		case <-timeout:
			t.Fatal("not degraded within 5 s at a 50 ms interval")
		}
	}
}

// IPv6 test points: listing ::ffff:127.0.0.1 always fails a list; a missing
// ::ffff:127.0.0.2 fails only a list asked about IPv6 alone.
func TestIPv6TestPoints(t *testing.T) {
	f := newFixture(t, `
[[list]]
name = "Dual"
zone = "dual.test"
health = true
[[list]]
name = "V6 only"
zone = "v6.test"
ipv4 = false
[[list]]
name = "V6 broken"
zone = "v6broken.test"
ipv4 = false
`, Options{})
	v4point := dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), "dual.test")
	f.dns.Set(v4point, dnstest.Answer{A: []string{"127.0.0.2"}})
	v6name := func(ip, zone string) string {
		// The nibble form of an IPv4-mapped address, as KeepMapped asks it.
		a := netip.MustParseAddr(ip).As16()
		var b strings.Builder
		for i := 15; i >= 0; i-- {
			fmt.Fprintf(&b, "%x.%x.", a[i]&0xf, a[i]>>4)
		}
		return b.String() + zone + "."
	}
	f.dns.Set(v6name("::ffff:127.0.0.2", "v6.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	f.dns.Set(v6name("::ffff:127.0.0.2", "v6broken.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	f.dns.Set(v6name("::ffff:127.0.0.1", "v6broken.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	f.mon.ProbeDue(context.Background())
	want := map[string]bool{"Dual": true, "V6 only": true, "V6 broken": false}
	for _, st := range f.mon.Statuses() {
		if w, ok := want[st.List]; ok && st.Healthy != w {
			t.Errorf("%s: healthy=%v (%s), want %v", st.List, st.Healthy, st.Reason, w)
		}
	}
	// Without its IPv6 test point, a list asked about IPv6 alone is dead.
	f.dns.Set(v6name("::ffff:127.0.0.2", "v6.test"), dnstest.Answer{Rcode: dns.RcodeNameError})
	f.clock.Add(time.Hour)
	f.mon.ProbeDue(context.Background())
	for _, st := range f.mon.Statuses() {
		if st.List == "V6 only" && (st.Healthy || st.Code != ReasonMissesTestPoint) {
			t.Errorf("V6 only without its test point: %+v", st)
		}
	}
}
