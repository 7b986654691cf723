// Package health watches each DNS list and marks it degraded when it stops
// answering honestly, so a dead or misbehaving list never rejects mail.
//
// Two signals are used. The RFC 5782 test points (section 5): 127.0.0.2 must
// be listed and 127.0.0.1 must not, with the IPv4-mapped forms
// ::ffff:127.0.0.2 and ::ffff:127.0.0.1 for lists that take IPv6; a random
// address from the documentation ranges (RFC 5737) must not be listed
// either. And the hit ratio of real traffic: no list lists nine in ten of
// the hosts that really connect, so a list that suddenly does is answering
// everything. A list that fails is degraded until it passes again; the
// probes of a degraded list back off.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/policy"
)

// Resolver asks one list about one IP; *dnsbl.Resolver is one.
type Resolver interface {
	Lookup(ctx context.Context, q dnsbl.Query) dnsbl.Result
}

// Target is what the monitor marks: the current engine. The monitor's
// target function returns nil while there is none.
type Target interface {
	Lists() []policy.ListInfo
	SetListHealthy(name string, healthy bool)
}

// Options tune the monitor. cmd/blmilter fills the first six from the
// [health] section; they must be positive.
type Options struct {
	Interval    time.Duration // between probe rounds, with ±10% jitter
	Timeout     time.Duration // per probe query
	FailAfter   int           // rounds of timeouts or SERVFAIL before degrading
	MaxHitRatio float64       // share of listed answers that degrades a list
	MinChecks   int           // answers needed before the ratio counts
	RatioWindow time.Duration // the ratio's window
	MinBackoff  time.Duration // first re-probe of a degraded list; 0 is DefaultMinBackoff
	Logger      *slog.Logger
	// OnChange is called once per state change, for metrics.
	OnChange func(list string, healthy bool, reason string)
	Now      func() time.Time
}

// Reason words for a failed list; the text for admins is in Status.Reason.
const (
	ReasonResolverRefused = "resolver-refused"
	ReasonAnswersAll      = "answers-everything"
	ReasonMissesTestPoint = "misses-test-point"
	ReasonUnreachable     = "unreachable"
	ReasonHitRatio        = "hit-ratio"
)

// Status is one list's health as the monitor sees it.
type Status struct {
	List      string    `json:"list"`
	Healthy   bool      `json:"healthy"`
	Code      string    `json:"reason_code,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Since     time.Time `json:"since"`
	LastProbe time.Time `json:"last_probe"`
}

type listState struct {
	Status
	transientFails int
	nextProbe      time.Time
	backoff        time.Duration
	// hit ratio over the current window
	windowStart time.Time
	checks      int
	listed      int
}

// Monitor probes lists and keeps their state across engine reloads: lists
// are known by name.
type Monitor struct {
	target   func() Target
	resolver func() Resolver
	opts     Options
	log      *slog.Logger

	mu    sync.Mutex
	lists map[string]*listState
}

// DefaultMinBackoff is the first re-probe of a degraded list when
// Options.MinBackoff is 0.
const DefaultMinBackoff = 30 * time.Second

// New makes a monitor; Run starts it.
func New(target func() Target, resolver func() Resolver, opts Options) *Monitor {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Monitor{target: target, resolver: resolver, opts: opts, log: opts.Logger, lists: map[string]*listState{}}
}

// Run probes every list at once and then as each is due, until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	for {
		next := m.ProbeDue(ctx)
		wait := time.Until(next)
		if wait < time.Second {
			wait = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// ProbeDue probes the lists whose probe is due (all of them the first
// time), applies the results to the target, and returns when the next
// probe is due.
func (m *Monitor) ProbeDue(ctx context.Context) time.Time {
	target := m.target()
	now := m.opts.Now()
	if target == nil {
		return now.Add(m.opts.Interval)
	}
	var due []policy.ListInfo
	m.mu.Lock()
	for _, l := range target.Lists() {
		if l.Kind != "dns" || !l.Health {
			continue
		}
		st := m.state(l.Name, now)
		if !now.Before(st.nextProbe) {
			due = append(due, l)
		}
	}
	m.mu.Unlock()

	// Probe outside the lock, lists in parallel: a dead list must not hold
	// the others' probes.
	results := make([]probeResult, len(due))
	var wg sync.WaitGroup
	for i, l := range due {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = m.probe(ctx, l)
		}()
	}
	wg.Wait()

	m.mu.Lock()
	defer m.mu.Unlock()
	for i, l := range due {
		m.apply(target, l.Name, results[i], now)
	}
	next := now.Add(m.opts.Interval)
	for _, l := range target.Lists() {
		if st, ok := m.lists[l.Name]; ok && st.nextProbe.Before(next) {
			next = st.nextProbe
		}
		// A reloaded engine starts with every list healthy: tell it again.
		if st, ok := m.lists[l.Name]; ok && !st.Healthy {
			target.SetListHealthy(l.Name, false)
		}
	}
	return next
}

func (m *Monitor) state(name string, now time.Time) *listState {
	st, ok := m.lists[name]
	if !ok {
		st = &listState{Status: Status{List: name, Healthy: true, Since: now}, windowStart: now}
		m.lists[name] = st
	}
	return st
}

type probeResult struct {
	ok        bool
	transient bool // a timeout or SERVFAIL: counts only when repeated
	code      string
	reason    string
}

// probe asks the list about its test points. Order matters for the reason:
// a resolver the list refuses shows up on every query, so it is checked
// first and reported as such, not as a generic error.
func (m *Monitor) probe(ctx context.Context, l policy.ListInfo) probeResult {
	type point struct {
		ip         netip.Addr
		wantListed bool
		optional   bool // a miss is not a failure
	}
	points := []point{}
	if l.IPv4 {
		points = append(points,
			point{netip.MustParseAddr("127.0.0.2"), true, false},
			point{netip.MustParseAddr("127.0.0.1"), false, false},
			point{randomDocAddr(), false, false})
	}
	if l.IPv6 {
		// Many lists that take IPv4 and IPv6 in one zone do not publish
		// the IPv6 test point; the IPv4 one already shows such a list is
		// alive. Its absence only counts for lists asked about IPv6 alone.
		points = append(points,
			point{netip.MustParseAddr("::ffff:127.0.0.2"), true, l.IPv4},
			point{netip.MustParseAddr("::ffff:127.0.0.1"), false, false})
	}
	res := m.resolver()
	for _, p := range points {
		r := res.Lookup(ctx, dnsbl.Query{Zone: l.Zone, IP: p.ip, Timeout: m.opts.Timeout, NoTXT: true, KeepMapped: true})
		switch {
		case r.Status == dnsbl.Error && errors.Is(r.Err, dnsbl.ErrResolverBlocked):
			return probeResult{code: ReasonResolverRefused, reason: fmt.Sprintf(
				"the list refuses this server's DNS resolver (%v): use your own recursive resolver, not a public or forwarding one", r.Err)}
		case r.Status == dnsbl.Error && (errors.Is(r.Err, dnsbl.ErrTimeout) || errors.Is(r.Err, dnsbl.ErrServFail)):
			return probeResult{transient: true, code: ReasonUnreachable, reason: fmt.Sprintf("test point %s: %v", p.ip, r.Err)}
		case r.Status == dnsbl.Error:
			return probeResult{code: ReasonUnreachable, reason: fmt.Sprintf("test point %s: %v", p.ip, r.Err)}
		case p.wantListed && r.Status != dnsbl.Listed && p.optional:
		case p.wantListed && r.Status != dnsbl.Listed:
			return probeResult{code: ReasonMissesTestPoint, reason: fmt.Sprintf(
				"does not list the test point %s (set health = false for lists that publish none)", p.ip)}
		case !p.wantListed && r.Status == dnsbl.Listed:
			return probeResult{code: ReasonAnswersAll, reason: fmt.Sprintf("lists %s, which no list may list: it answers everything", p.ip)}
		}
	}
	return probeResult{ok: true}
}

// randomDocAddr picks an address from the RFC 5737 documentation ranges,
// which no honest list lists; a random one defeats lists that special-case
// the fixed test points.
func randomDocAddr() netip.Addr {
	nets := [][3]byte{{192, 0, 2}, {198, 51, 100}, {203, 0, 113}}
	n := nets[rand.IntN(len(nets))]
	return netip.AddrFrom4([4]byte{n[0], n[1], n[2], byte(1 + rand.IntN(254))})
}

func (m *Monitor) apply(target Target, name string, r probeResult, now time.Time) {
	st := m.state(name, now)
	st.LastProbe = now
	switch {
	case r.ok:
		st.transientFails = 0
		st.backoff = 0
		st.nextProbe = now.Add(m.jitter(m.opts.Interval))
		if !st.Healthy && st.Code != ReasonHitRatio {
			m.set(target, st, true, "", "", now)
		}
	case r.transient && st.transientFails+1 < m.opts.FailAfter:
		st.transientFails++
		st.nextProbe = now.Add(m.opts.MinBackoff)
	default:
		st.transientFails++
		if st.backoff == 0 {
			st.backoff = m.opts.MinBackoff
		} else if st.backoff *= 2; st.backoff > m.opts.Interval {
			st.backoff = m.opts.Interval
		}
		st.nextProbe = now.Add(st.backoff)
		if st.Healthy || st.Code != r.code {
			m.set(target, st, false, r.code, r.reason, now)
		}
	}
}

func (m *Monitor) jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()*0.2-0.1)*float64(d))
}

func (m *Monitor) set(target Target, st *listState, healthy bool, code, reason string, now time.Time) {
	st.Healthy, st.Code, st.Reason, st.Since = healthy, code, reason, now
	if target != nil {
		target.SetListHealthy(st.List, healthy)
	}
	if healthy {
		m.log.Warn("list healthy again", "list", st.List)
	} else {
		m.log.Warn("list degraded: its answers no longer count", "list", st.List, "reason_code", code, "reason", reason)
	}
	if m.opts.OnChange != nil {
		m.opts.OnChange(st.List, healthy, reason)
	}
}

// ObserveCheck is part of policy.Observer; verdicts tell the monitor nothing.
func (m *Monitor) ObserveCheck(policy.Verdict) {}

// ObserveAnswer feeds the hit-ratio alarm with one real answer of a list
// (policy.Observer). Only DNS answers count, not cached ones: the ratio is
// over distinct clients. Errors say nothing about the ratio.
func (m *Monitor) ObserveAnswer(list, result string, _ bool, _ time.Duration) {
	if result != "listed" && result != "clean" {
		return
	}
	listed := result == "listed"
	now := m.opts.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.state(list, now)
	if now.Sub(st.windowStart) > m.opts.RatioWindow {
		// A window that ends without tripping clears a ratio alarm.
		if !st.Healthy && st.Code == ReasonHitRatio && !m.tripped(st) {
			m.set(m.target(), st, true, "", "", now)
		}
		st.windowStart, st.checks, st.listed = now, 0, 0
	}
	st.checks++
	if listed {
		st.listed++
	}
	if st.Healthy && m.tripped(st) {
		m.set(m.target(), st, false, ReasonHitRatio, fmt.Sprintf(
			"listed %d of the last %d clients, more than %.0f%%: the list looks broken", st.listed, st.checks, m.opts.MaxHitRatio*100), now)
	}
}

func (m *Monitor) tripped(st *listState) bool {
	return st.checks >= m.opts.MinChecks && float64(st.listed) > m.opts.MaxHitRatio*float64(st.checks)
}

// Statuses returns every watched list's state, by list name.
func (m *Monitor) Statuses() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.lists))
	for _, st := range m.lists {
		out = append(out, st.Status)
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.List, b.List) })
	return out
}
