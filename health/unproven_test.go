package health

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
)

// daemonish is the daemon's use of the monitor: engines built with the
// monitor as their health source, swapped in and synced, as a reload does.
type daemonish struct {
	t      *testing.T
	dns    *dnstest.Server
	mon    *Monitor
	engine atomic.Pointer[policy.Engine]
	log    *testkit.Buffer
}

func newDaemonish(t *testing.T) *daemonish {
	d := &daemonish{t: t, dns: dnstest.Start(t), log: &testkit.Buffer{}}
	res, err := dnsbl.NewResolver([]string{d.dns.Addr}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	d.mon = New(func() Target {
		if e := d.engine.Load(); e != nil {
			return e
		}
		return nil
	}, func() Resolver { return res }, Options{
		Interval: time.Hour, Timeout: 200 * time.Millisecond, FailAfter: 2,
		MaxHitRatio: 0.9, MinChecks: 200, RatioWindow: 10 * time.Minute,
		Logger: slog.New(slog.NewTextHandler(d.log, nil)),
	})
	return d
}

// load builds an engine from lists (TOML [[list]] sections) and installs it.
func (d *daemonish) load(lists string) *policy.Engine {
	d.t.Helper()
	cfg := testengine.Config(d.t, d.dns, "[dns]\ntimeout = \"200ms\"\n[policy]\ndeadline = \"1s\"\n"+lists)
	e := testengine.From(d.t, cfg, policy.Deps{Observers: []policy.Observer{d.mon}, Health: d.mon})
	d.engine.Store(e)
	d.mon.Sync()
	return e
}

func stateOf(t *testing.T, e *policy.Engine, name string) policy.ListState {
	t.Helper()
	for _, l := range e.Lists() {
		if l.Name == name {
			return l.State
		}
	}
	t.Fatalf("no list %q", name)
	return 0
}

// listTOML is one [[list]], asked about IPv4 only unless extra says ipv6.
func listTOML(name, zone, extra string) string {
	if !strings.Contains(extra, "ipv6") {
		extra += "\nipv6 = false"
	}
	return fmt.Sprintf("[[list]]\nname = %q\nzone = %q\nweight = 3\n%s\n", name, zone, extra)
}

// answersEverything makes zone list every address, the test points too.
func answersEverything(s *dnstest.Server, zone string) {
	s.SetZone(zone, dnstest.Answer{A: []string{"127.0.0.2"}})
	s.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.1"), zone), dnstest.Answer{A: []string{"127.0.0.2"}})
}

func honestZone(s *dnstest.Server, zone string) {
	s.SetZone(zone, dnstest.Answer{Rcode: dns.RcodeNameError})
	s.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), zone), dnstest.Answer{A: []string{"127.0.0.2"}})
}

// A list nobody has probed yet does not count: its hit is logged as
// unproven until the first probe round passes.
func TestNewListUnprovenUntilProbed(t *testing.T) {
	d := newDaemonish(t)
	honestZone(d.dns, "good.test")
	client := netip.MustParseAddr("198.18.0.9")
	d.dns.Set(dnsbl.QueryName(client, "good.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	e := d.load(listTOML("Good", "good.test", "") + listTOML("Trusted", "trusted.test", "health = false"))
	ctx := context.Background()

	if s := stateOf(t, e, "Good"); s != policy.ListUnproven {
		t.Fatalf("new list starts %s, want unproven", s)
	}
	if s := stateOf(t, e, "Trusted"); s != policy.ListHealthy {
		t.Fatalf("a list with health = false starts %s, want healthy (trusted as configured)", s)
	}
	v := e.Check(ctx, client)
	if v.Action != policy.ActionAccept || len(v.Hits) != 1 || !v.Hits[0].Unproven || v.Hits[0].Weight != 0 {
		t.Fatalf("unproven list: %+v, want accept with one unproven hit", v)
	}
	if attrs := fmt.Sprint(policy.LogAttrs(v)); !strings.Contains(attrs, "Good:listed:127.0.0.2:unproven") {
		t.Errorf("the log line does not flag the hit as unproven: %s", attrs)
	}
	if in := e.Inspect(ctx, client); in.Lists[0].Status != "unproven" {
		t.Errorf("Inspect: %+v, want status unproven", in.Lists[0])
	}
	st := d.status(t, "Good")
	if st.State != "unproven" || st.Healthy {
		t.Errorf("status %+v, want unproven", st)
	}

	if left := d.waitFirstRound(t); len(left) != 0 {
		t.Fatalf("still unproven after the round: %v", left)
	}
	if s := stateOf(t, e, "Good"); s != policy.ListHealthy {
		t.Fatalf("after a passed round: %s, want healthy", s)
	}
	if v := e.Check(ctx, client); v.Action != policy.ActionReject {
		t.Fatalf("proven list: action %s, want reject (the unproven verdict must not stay cached)", v.Action)
	}
	if !strings.Contains(d.log.String(), "list checked: its hits count from now on") {
		t.Errorf("no log line for the list passing its first round:\n%s", d.log.String())
	}
}

// waitFirstRound runs the monitor until every unproven list had a round.
func (d *daemonish) waitFirstRound(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.mon.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	return d.mon.WaitChecked(wctx)
}

func (d *daemonish) status(t *testing.T, name string) Status {
	t.Helper()
	for _, s := range d.mon.Statuses() {
		if s.List == name {
			return s
		}
	}
	t.Fatalf("no status for %q", name)
	return Status{}
}

// A reloaded engine starts with what the monitor knows: a degraded list
// stays degraded from the engine's first check, a healthy one stays
// healthy, and a changed one is unproven.
func TestReloadedEngineInheritsHealth(t *testing.T) {
	d := newDaemonish(t)
	honestZone(d.dns, "good.test")
	answersEverything(d.dns, "broken.test")
	lists := listTOML("Good", "good.test", "") + listTOML("Broken", "broken.test", "")
	d.load(lists)
	d.waitFirstRound(t)
	if st := d.status(t, "Broken"); st.State != "degraded" {
		t.Fatalf("Broken after its round: %+v", st)
	}

	client := netip.MustParseAddr("198.18.0.10") // listed by Broken, as everything is
	// The probe round already happened; no other runs while these
	// engines are built, so what they show is what they started with.
	for i := range 20 {
		e := d.load(lists)
		if s := stateOf(t, e, "Broken"); s != policy.ListDegraded {
			t.Fatalf("reload %d: Broken starts %s, want degraded", i, s)
		}
		if s := stateOf(t, e, "Good"); s != policy.ListHealthy {
			t.Fatalf("reload %d: Good starts %s, want healthy", i, s)
		}
		if v := e.Check(context.Background(), client); v.Action != policy.ActionAccept {
			t.Fatalf("reload %d: %+v, want accept: a degraded list refused a client", i, v)
		}
	}

	tests := []struct {
		name, list string
		want       policy.ListState
	}{
		{"same list", listTOML("Good", "good.test", ""), policy.ListHealthy},
		{"other zone", listTOML("Good", "good2.test", ""), policy.ListUnproven},
		{"other families", listTOML("Good", "good.test", "ipv6 = true"), policy.ListUnproven},
		{"health off", listTOML("Good", "good.test", "health = false"), policy.ListHealthy},
		{"renamed", listTOML("Good again", "good.test", ""), policy.ListUnproven},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d.load(lists) // back to the proven lists
			e := d.load(tt.list)
			name := strings.Split(strings.Split(tt.list, "name = \"")[1], "\"")[0]
			if s := stateOf(t, e, name); s != tt.want {
				t.Errorf("%s starts %s, want %s", name, s, tt.want)
			}
		})
	}

	// Other DNS servers make every list another list.
	cfg := testengine.Config(t, d.dns, lists)
	cfg.DNS.Servers = []string{d.dns.Addr, "127.0.0.1:1"}
	e := testengine.From(t, cfg, policy.Deps{Health: d.mon})
	if s := stateOf(t, e, "Good"); s != policy.ListUnproven {
		t.Errorf("with other [dns] servers Good starts %s, want unproven", s)
	}
}

// A probe cut short by shutdown or a failed start says nothing about the
// list: no degradation, no warning.
func TestCancelledProbeIsNotAFailure(t *testing.T) {
	d := newDaemonish(t)
	d.dns.SetZone("slow.test", dnstest.Answer{Silent: true})
	d.load(listTOML("Slow", "slow.test", ""))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.mon.ProbeDue(ctx); close(done) }()
	time.Sleep(50 * time.Millisecond) // the probe waits on its first query
	cancel()
	<-done
	if st := d.status(t, "Slow"); st.State != "unproven" || st.Code != "" {
		t.Errorf("after a cancelled probe: %+v, want unproven and no reason", st)
	}
	if strings.Contains(d.log.String(), "degraded") || strings.Contains(d.log.String(), "canceled") {
		t.Errorf("a cancelled probe was logged as a failure:\n%s", d.log.String())
	}
	// The list is probed again at once, not after a backoff.
	d.dns.SetZone("slow.test", dnstest.Answer{Rcode: dns.RcodeNameError})
	d.dns.Set(dnsbl.QueryName(netip.MustParseAddr("127.0.0.2"), "slow.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	d.mon.ProbeDue(context.Background())
	if st := d.status(t, "Slow"); st.State != "healthy" {
		t.Errorf("the next round: %+v, want healthy", st)
	}
}

// WaitChecked returns as soon as every unproven list had its round, and
// names the ones a round could not prove (here one that times out).
func TestWaitChecked(t *testing.T) {
	d := newDaemonish(t)
	honestZone(d.dns, "good.test")
	d.dns.SetZone("silent.test", dnstest.Answer{Silent: true})
	d.load(listTOML("Good", "good.test", "") + listTOML("Silent", "silent.test", ""))
	start := time.Now()
	left := d.waitFirstRound(t)
	if len(left) != 1 || left[0] != "Silent" {
		t.Errorf("unproven after the first round: %v, want [Silent]", left)
	}
	// A timeout is transient: one round leaves the list unproven, and its
	// round ends with the 200 ms query timeout, not the 5 s bound.
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("WaitChecked took %v; the silent list's round ends within a second", el)
	}
	if st := d.status(t, "Silent"); st.State != "unproven" {
		t.Errorf("Silent: %+v", st)
	}
}

// A result about a list a reload changed meanwhile is dropped: it must not
// mark the new list.
func TestStaleProbeResultDropped(t *testing.T) {
	d := newDaemonish(t)
	honestZone(d.dns, "old.test")
	answersEverything(d.dns, "new.test")
	// old.test answers slowly so the reload lands while its probe runs.
	slow := &slowResolver{Resolver: mustResolver(t, d.dns.Addr), delay: 300 * time.Millisecond}
	d.mon.resolver = func() Resolver { return slow }
	d.load(listTOML("L", "old.test", ""))
	var wg sync.WaitGroup
	wg.Go(func() { d.mon.ProbeDue(context.Background()) })
	time.Sleep(100 * time.Millisecond)
	e := d.load(listTOML("L", "new.test", ""))
	wg.Wait()
	if s := stateOf(t, e, "L"); s != policy.ListUnproven {
		t.Fatalf("the old zone's passed probe marked the new list %s", s)
	}
	slow.delay = 0
	d.mon.ProbeDue(context.Background())
	if s := stateOf(t, e, "L"); s != policy.ListDegraded {
		t.Fatalf("the new list after its own round: %s, want degraded", s)
	}
}

type slowResolver struct {
	Resolver
	delay time.Duration
}

func (r *slowResolver) Lookup(ctx context.Context, q dnsbl.Query) dnsbl.Result {
	time.Sleep(r.delay)
	return r.Resolver.Lookup(ctx, q)
}

func mustResolver(t *testing.T, addr string) *dnsbl.Resolver {
	t.Helper()
	r, err := dnsbl.NewResolver([]string{addr}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A probe that panics fails that list's round; the process and the other
// lists go on.
func TestProbePanicRecovered(t *testing.T) {
	d := newDaemonish(t)
	honestZone(d.dns, "good.test")
	var panics atomic.Int32
	d.mon.opts.OnPanic = func() { panics.Add(1) }
	d.mon.resolver = func() Resolver { return panicky{mustResolver(t, d.dns.Addr)} }
	d.load(listTOML("Good", "good.test", "") + listTOML("Boom", "boom.test", ""))
	d.mon.ProbeDue(context.Background())
	if panics.Load() != 1 {
		t.Errorf("panics counted: %d, want 1", panics.Load())
	}
	if st := d.status(t, "Good"); st.State != "healthy" {
		t.Errorf("Good: %+v", st)
	}
	if st := d.status(t, "Boom"); st.State == "healthy" {
		t.Errorf("Boom passed a probe that panicked: %+v", st)
	}
	if !bytes.Contains([]byte(d.log.String()), []byte("list health probe panicked")) {
		t.Errorf("the panic was not logged:\n%s", d.log.String())
	}
}

type panicky struct{ Resolver }

func (p panicky) Lookup(ctx context.Context, q dnsbl.Query) dnsbl.Result {
	if q.Zone == "boom.test" {
		panic("resolver bug")
	}
	return p.Resolver.Lookup(ctx, q)
}
