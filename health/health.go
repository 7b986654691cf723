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
//
// A list the monitor has not checked yet (new at start, or new or changed
// by a reload) is unproven: like a degraded list, its hits are logged but
// do not count until it passes a probe round. The state outlives engines:
// a reloaded engine's list keeps it while its zone, servers, address
// families and health setting stay the same.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime/debug"
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
	SetListState(name string, s policy.ListState)
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
	// OnChange is called once per state change, for metrics; a list the
	// monitor starts watching is reported too.
	OnChange func(list string, state policy.ListState, reason string)
	// OnRemove is called when a list is no longer configured.
	OnRemove func(list string)
	// OnPanic is called when a probe panicked (and was recovered).
	OnPanic func()
	Now     func() time.Time
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
	List string `json:"list"`
	// State is "healthy", "degraded" or "unproven" (not yet checked).
	State     string    `json:"state"`
	Healthy   bool      `json:"healthy"`
	Code      string    `json:"reason_code,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Since     time.Time `json:"since"`
	LastProbe time.Time `json:"last_probe"`
}

type listState struct {
	Status
	state policy.ListState
	// ident is what the state is about: a list of the same name with
	// another zone, servers, address families or health setting is
	// another list, unproven.
	ident  string
	probed bool // health = true: the test points are asked
	proven bool // has passed a probe round since ident was set
	rounds int  // probe rounds finished since ident was set

	inFlight       bool
	transientFails int
	nextProbe      time.Time
	backoff        time.Duration
	// hit ratio over the current window
	windowStart time.Time
	checks      int
	listed      int
}

// Monitor probes lists and keeps their state across engine reloads: lists
// are known by name, and a list keeps its state while its zone, servers,
// address families and health setting stay the same.
type Monitor struct {
	target   func() Target
	resolver func() Resolver
	opts     Options
	log      *slog.Logger
	kick     chan struct{} // wakes Run: a reload brought lists to probe

	mu      sync.Mutex
	lists   map[string]*listState
	changed chan struct{} // closed and replaced when a probe ends
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
	return &Monitor{target: target, resolver: resolver, opts: opts, log: opts.Logger,
		lists: map[string]*listState{}, kick: make(chan struct{}, 1), changed: make(chan struct{})}
}

// identity is what a list's health is about. Its name is not part of it:
// the state is kept by name, and a renamed list is a new one.
func identity(l policy.ListInfo) string {
	return fmt.Sprintf("%s|%s|v4=%t|v6=%t|health=%t", l.Zone, strings.Join(l.Servers, ","), l.IPv4, l.IPv6, l.Health)
}

// ListState is the state a new engine's list starts in (policy.HealthSource):
// what the monitor knows of the same list, else unproven, or healthy for a
// list that is not probed (health = false is trusted as configured).
func (m *Monitor) ListState(l policy.ListInfo) policy.ListState {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st, ok := m.lists[l.Name]; ok && st.ident == identity(l) {
		return st.state
	}
	if l.Kind != policy.KindDNS || !l.Health {
		return policy.ListHealthy
	}
	return policy.ListUnproven
}

// Sync makes the monitor watch the lists of the current target: it starts
// a new or changed list unproven, forgets lists no longer configured, tells
// the target every list's state, and has Run probe the unproven lists at
// once. Call it after installing a new engine: a probe that ended while
// the engine was being built told the old one.
func (m *Monitor) Sync() {
	m.mu.Lock()
	target := m.target()
	due := false
	if target != nil {
		now := m.opts.Now()
		lists := target.Lists()
		m.reconcile(target, lists, now)
		for _, l := range lists {
			if st, ok := m.lists[l.Name]; ok {
				target.SetListState(l.Name, st.state)
				due = due || st.probed && !st.inFlight && !now.Before(st.nextProbe)
			}
		}
	}
	m.mu.Unlock()
	if due {
		m.wake()
	}
}

// reconcile brings the watched lists in line with the target's DNS lists.
// m.mu is held.
func (m *Monitor) reconcile(target Target, lists []policy.ListInfo, now time.Time) {
	seen := make(map[string]bool, len(lists))
	for _, l := range lists {
		if l.Kind != policy.KindDNS {
			continue
		}
		seen[l.Name] = true
		id := identity(l)
		if st, ok := m.lists[l.Name]; ok && st.ident == id {
			continue
		}
		st := &listState{Status: Status{List: l.Name, Since: now}, ident: id, probed: l.Health, windowStart: now}
		m.lists[l.Name] = st
		if l.Health {
			st.state = policy.ListUnproven
			m.log.Info("list not yet checked: its hits do not count until it passes a probe round", "list", l.Name)
		}
		st.State, st.Healthy = st.state.String(), st.state == policy.ListHealthy
		if m.opts.OnChange != nil {
			m.opts.OnChange(l.Name, st.state, "")
		}
	}
	for name := range m.lists {
		if !seen[name] {
			delete(m.lists, name)
			if m.opts.OnRemove != nil {
				m.opts.OnRemove(name)
			}
		}
	}
}

// wake has Run look for due probes now.
func (m *Monitor) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run probes every list at once and then as each is due, until ctx ends,
// and then waits for the probes in flight. A probe cut short by ctx is
// not a failure: its result is dropped.
func (m *Monitor) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		m.mu.Lock()
		target := m.target()
		if target != nil {
			m.reconcile(target, target.Lists(), m.opts.Now())
		}
		due := m.takeDue(target)
		m.mu.Unlock()
		for _, p := range due {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m.finish(ctx, p, m.safeProbe(ctx, p.list))
				m.wake()
			}()
		}
		m.mu.Lock()
		wait := m.nextDue().Sub(m.opts.Now())
		m.mu.Unlock()
		wait = max(wait, 50*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-m.kick:
			t.Stop()
		case <-t.C:
		}
	}
}

// ProbeDue probes the lists whose probe is due (all of them the first
// time), applies the results to the target, and returns when the next
// probe is due. Run does the same without waiting for the probes.
func (m *Monitor) ProbeDue(ctx context.Context) time.Time {
	m.mu.Lock()
	target := m.target()
	if target == nil {
		m.mu.Unlock()
		return m.opts.Now().Add(m.opts.Interval)
	}
	m.reconcile(target, target.Lists(), m.opts.Now())
	due := m.takeDue(target)
	m.mu.Unlock()

	// Probe outside the lock, lists in parallel: a dead list must not hold
	// the others' probes.
	results := make([]probeResult, len(due))
	var wg sync.WaitGroup
	for i, p := range due {
		wg.Go(func() { results[i] = m.safeProbe(ctx, p.list) })
	}
	wg.Wait()
	for i, p := range due {
		m.finish(ctx, p, results[i])
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nextDue()
}

// dueProbe is a probe taken from the schedule: the list as the target has
// it, and the state's identity when it was taken.
type dueProbe struct {
	list  policy.ListInfo
	ident string
	at    time.Time
}

// takeDue marks the due lists of target in flight and returns them. m.mu
// is held.
func (m *Monitor) takeDue(target Target) []dueProbe {
	if target == nil {
		return nil
	}
	now := m.opts.Now()
	var due []dueProbe
	for _, l := range target.Lists() {
		st, ok := m.lists[l.Name]
		if !ok || !st.probed || st.inFlight || now.Before(st.nextProbe) || st.ident != identity(l) {
			continue
		}
		st.inFlight = true
		due = append(due, dueProbe{list: l, ident: st.ident, at: now})
	}
	return due
}

// nextDue is when the next probe is due (lists in flight aside). m.mu is held.
func (m *Monitor) nextDue() time.Time {
	next := m.opts.Now().Add(m.opts.Interval)
	for _, st := range m.lists {
		if st.probed && !st.inFlight && st.nextProbe.Before(next) {
			next = st.nextProbe
		}
	}
	return next
}

// finish applies a probe's result, unless ctx ended (a cancelled probe
// says nothing about the list) or the list changed meanwhile.
func (m *Monitor) finish(ctx context.Context, p dueProbe, r probeResult) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.notify()
	st, ok := m.lists[p.list.Name]
	if !ok || st.ident != p.ident {
		return // a reload changed or removed the list: the new one has its own probe
	}
	st.inFlight = false
	if ctx.Err() != nil {
		return
	}
	m.apply(st, r, m.opts.Now())
}

// notify wakes WaitChecked. m.mu is held.
func (m *Monitor) notify() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// WaitChecked waits until every unproven list of the target has had its
// first probe round, or ctx ends, and returns the lists still unproven.
func (m *Monitor) WaitChecked(ctx context.Context) []string {
	for {
		m.mu.Lock()
		var waiting, unproven []string
		for _, st := range m.lists {
			if st.state != policy.ListUnproven {
				continue
			}
			unproven = append(unproven, st.List)
			if st.rounds == 0 {
				waiting = append(waiting, st.List)
			}
		}
		changed := m.changed
		m.mu.Unlock()
		if len(waiting) == 0 {
			slices.Sort(unproven)
			return unproven
		}
		select {
		case <-changed:
		case <-ctx.Done():
			slices.Sort(unproven)
			return unproven
		}
	}
}

// safeProbe is probe, but a panic in it is a failed probe of one list,
// not the end of the process.
func (m *Monitor) safeProbe(ctx context.Context, l policy.ListInfo) (r probeResult) {
	defer func() {
		if p := recover(); p != nil {
			m.log.Error("list health probe panicked", "list", l.Name, "panic", p, "stack", string(debug.Stack()))
			if m.opts.OnPanic != nil {
				m.opts.OnPanic()
			}
			r = probeResult{transient: true, code: ReasonUnreachable, reason: fmt.Sprintf("probe failed: %v", p)}
		}
	}()
	return m.probe(ctx, l)
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

func (m *Monitor) apply(st *listState, r probeResult, now time.Time) {
	st.LastProbe = now
	st.rounds++
	switch {
	case r.ok:
		st.transientFails = 0
		st.backoff = 0
		st.nextProbe = now.Add(m.jitter(m.opts.Interval))
		st.proven = true
		if st.state != policy.ListHealthy && st.Code != ReasonHitRatio {
			m.set(st, policy.ListHealthy, "", "", now)
		}
	case r.transient && st.transientFails+1 < m.opts.FailAfter:
		// An unproven list stays unproven until a round passes.
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
		if st.state != policy.ListDegraded || st.Code != r.code {
			m.set(st, policy.ListDegraded, r.code, r.reason, now)
		}
	}
}

func (m *Monitor) jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()*0.2-0.1)*float64(d))
}

// set changes a list's state and tells the target, the log and OnChange.
// m.mu is held.
func (m *Monitor) set(st *listState, s policy.ListState, code, reason string, now time.Time) {
	was := st.state
	st.state, st.Code, st.Reason, st.Since = s, code, reason, now
	st.State, st.Healthy = s.String(), s == policy.ListHealthy
	m.push(m.target(), st)
	switch {
	case s == policy.ListHealthy && was == policy.ListUnproven:
		m.log.Info("list checked: its hits count from now on", "list", st.List)
	case s == policy.ListHealthy:
		m.log.Warn("list healthy again", "list", st.List)
	case s == policy.ListDegraded:
		m.log.Warn("list degraded: its answers no longer count", "list", st.List, "reason_code", code, "reason", reason)
	}
	if m.opts.OnChange != nil {
		m.opts.OnChange(st.List, s, reason)
	}
}

// push tells target a list's state, if the target's list of that name is
// the one the state is about. m.mu is held.
func (m *Monitor) push(target Target, st *listState) {
	if target == nil {
		return
	}
	for _, l := range target.Lists() {
		if l.Name == st.List && identity(l) == st.ident {
			target.SetListState(st.List, st.state)
			return
		}
	}
}

// ObserveCheck is part of policy.Observer; verdicts tell the monitor nothing.
func (m *Monitor) ObserveCheck(policy.Verdict) {}

// ObserveAnswer feeds the hit-ratio alarm with one real answer of a list
// (policy.Observer). Only DNS answers count, not cached ones: the ratio is
// over distinct clients. Errors say nothing about the ratio.
func (m *Monitor) ObserveAnswer(list, result string, _ policy.ListState, _ time.Duration) {
	if result != "listed" && result != "clean" {
		return
	}
	listed := result == "listed"
	now := m.opts.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	st, ok := m.lists[list]
	if !ok {
		return // not watched yet: Sync has not seen the engine
	}
	if now.Sub(st.windowStart) > m.opts.RatioWindow {
		// A window that ends without tripping clears a ratio alarm; a
		// list no probe round has passed goes back to unproven.
		if st.state == policy.ListDegraded && st.Code == ReasonHitRatio && !m.tripped(st) {
			s := policy.ListHealthy
			if st.probed && !st.proven {
				s = policy.ListUnproven
			}
			m.set(st, s, "", "", now)
		}
		st.windowStart, st.checks, st.listed = now, 0, 0
	}
	st.checks++
	if listed {
		st.listed++
	}
	if st.state != policy.ListDegraded && m.tripped(st) {
		m.set(st, policy.ListDegraded, ReasonHitRatio, fmt.Sprintf(
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
