// Package policy decides what to do with an SMTP client's IP: it asks the
// configured DNS lists, local list files and the site's own list about the
// IP (in parallel, under one deadline, through a TTL cache), scores the hits
// into a Verdict and writes the reply text the client sees. The milter, the
// policy server and the web service only translate between their protocol
// and Check, Inspect and Reply. The engine takes validated Options; it never
// reads the config file.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blmilter/blmilter/cache"
	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/iplist"
	"github.com/blmilter/blmilter/signedref"
)

// StoreList is the site's own list; Lookup must be fast (in memory). A
// StoreList that can be missing for a while (a store that is not open
// yet) also has an Available() bool method, so that Inspect says the list
// could not be asked rather than that it does not list the IP.
type StoreList interface {
	Lookup(ip netip.Addr) (category, reason string, listed bool)
}

// storeAvailable reports whether the store list can be asked now.
func (e *Engine) storeAvailable() bool {
	if e.opts.StoreList == nil {
		return false
	}
	if a, ok := e.opts.StoreList.(interface{ Available() bool }); ok {
		return a.Available()
	}
	return true
}

// Deferrer is a StoreList that supports delist-and-deliver
// (Options.DeferFirst). Both methods run on the mail path: memory only,
// never blocking.
type Deferrer interface {
	// DeferState reports whether ip's listing is one its owner may remove
	// now, and when a refusal by it was first deferred (zero: never).
	DeferState(ip netip.Addr) (selfRemovable bool, first time.Time)
	// NoteDeferral records a deferred refusal of ip at at.
	NoteDeferral(ip netip.Addr, at time.Time)
}

// Decision is what Reply records: the verdict and the reply it produced.
type Decision struct {
	Ref     string
	Time    time.Time
	Verdict Verdict
	Reply   Reply
}

// Recorder keeps decisions for the lookup page; RecordDecision must not
// block the mail path.
type Recorder interface {
	RecordDecision(d Decision)
}

// Observer is told what the engine sees. Its methods run on the mail path,
// so they must be quick and must not block.
type Observer interface {
	// ObserveAnswer is called for each answer of a DNS list asked on
	// behalf of a client (cache misses only; lookups from Inspect are not
	// reported): result is "listed", "clean" or "error", and state the
	// list's health when it answered (only a healthy list's answers
	// count).
	ObserveAnswer(list, result string, state ListState, took time.Duration)
	// ObserveCheck is called for every Check, cached or not.
	ObserveCheck(v Verdict)
}

// ListInfo describes one configured list, for the health monitor and metrics.
type ListInfo struct {
	Name    string
	Zone    string   // DNS lists only; never show it to SMTP clients
	Servers []string // DNS lists only: the resolvers it is asked through (none: the system's)
	Kind    string   // KindDNS, KindFile, KindStore
	IPv4    bool
	IPv6    bool
	Health  bool      // probed with the RFC 5782 test points
	State   ListState // what the probes last found
	Healthy bool      // State is ListHealthy: its hits count
	DryRun  bool
	Weight  float64
}

// fileWatchInterval is how often list files are checked for changes.
const fileWatchInterval = 5 * time.Second

type list struct {
	cfg   *List
	kind  string
	state atomic.Int32 // a ListState
	file  *iplist.File
}

func (l *list) health() ListState { return ListState(l.state.Load()) }

// Engine checks client IPs. It is safe for concurrent use; build a new one
// to change the configuration.
type Engine struct {
	log      *slog.Logger
	opts     Options
	lists    []*list
	byName   map[string]*list
	dns4     []*list // DNS lists asked about IPv4 clients
	dns6     []*list
	local4   []*list // file and store lists
	local6   []*list
	files    []*list
	resolver *dnsbl.Resolver
	cache    *cache.Cache[netip.Addr, *dnsResult]
	action   Action
	epoch    time.Time
	reasons  reasons // TXT texts for the decision records, off the mail path
	results  results // the DNS results many clients have in common, shared
	// panicLogNext is when the next recovered panic may be logged (Unix
	// nanoseconds): one line a second at most.
	panicLogNext atomic.Int64

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// dnsResult is the immutable outcome of the DNS lists for one IP, kept in
// the cache. File and store lists are not in it: they are asked on every
// check (in memory), so an edit takes effect at once.
type dnsResult struct {
	hits     []Hit
	errors   []ListError
	score    float64
	tempfail bool // an error on a counted list with on_error = "tempfail"
}

var emptyResult = &dnsResult{}

// FileError is a list file NewEngine could not read.
type FileError struct {
	Index int    // the list's position in Options.Lists
	List  string // its name
	Err   error
}

func (e *FileError) Error() string { return fmt.Sprintf("list %q: %v", e.List, e.Err) }

func (e *FileError) Unwrap() error { return e.Err }

// NewEngine builds an engine: the resolver, the cache and the list files.
// opts must be valid (see Options); the lists are copied. Every list file
// that cannot be read is a *FileError in the returned error.
func NewEngine(opts Options) (*Engine, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts.Lists = slices.Clone(opts.Lists)
	e := &Engine{
		log:    log,
		opts:   opts,
		byName: map[string]*list{},
		cache:  cache.New[netip.Addr, *dnsResult](cache.Options{Size: opts.Cache.Size}),
		action: opts.Action,
		epoch:  time.Now(),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	var problems []error
	for i := range opts.Lists {
		lc := &opts.Lists[i]
		l := &list{cfg: lc, kind: lc.Kind}
		if opts.Health != nil && lc.Kind == KindDNS {
			l.state.Store(int32(opts.Health.ListState(e.info(l))))
		}
		switch l.kind {
		case KindFile:
			f, err := iplist.OpenFile(lc.File)
			if err != nil {
				problems = append(problems, &FileError{Index: i, List: lc.Name, Err: err})
				continue
			}
			l.file = f
			e.files = append(e.files, l)
		case KindStore:
			if opts.StoreList == nil {
				log.Warn("list skipped: no store available", "list", lc.Name)
			}
		}
		e.lists = append(e.lists, l)
		e.byName[lc.Name] = l
		if l.kind == KindDNS {
			if lc.IPv4 {
				e.dns4 = append(e.dns4, l)
			}
			if lc.IPv6 {
				e.dns6 = append(e.dns6, l)
			}
		} else {
			if lc.IPv4 {
				e.local4 = append(e.local4, l)
			}
			if lc.IPv6 {
				e.local6 = append(e.local6, l)
			}
		}
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	if len(e.dns4)+len(e.dns6) > 0 {
		r, err := dnsbl.NewResolver(opts.DNSServers, opts.DNSTimeout)
		if err != nil {
			return nil, fmt.Errorf("policy: DNS resolver: %w", err)
		}
		e.resolver = r
	}
	if len(e.files) > 0 {
		go e.watchFiles()
	} else {
		close(e.done)
	}
	return e, nil
}

// RejectAt is the stage at which front ends apply a verdict:
// RejectAtRcpt or RejectAtConnect.
func (e *Engine) RejectAt() string { return e.opts.RejectAt }

// Threshold is the score at or above which the policy acts.
func (e *Engine) Threshold() float64 { return e.opts.Threshold }

// Deadline bounds one check.
func (e *Engine) Deadline() time.Duration { return e.opts.Deadline }

// RefKey is the fleet's key that signs and opens refs; nil without one.
func (e *Engine) RefKey() *signedref.Key { return e.opts.RefKey }

// Close stops the list file watcher. Checks still work after Close.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		close(e.stop)
		<-e.done
	})
	e.FlushDecisions()
	return nil
}

func (e *Engine) watchFiles() {
	defer close(e.done)
	t := time.NewTicker(fileWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
			e.ReloadFiles()
		}
	}
}

// ReloadFiles re-reads the list files that changed. A file that fails to
// parse keeps its last good version; the problem is logged.
func (e *Engine) ReloadFiles() {
	for _, l := range e.files {
		changed, err := l.file.Reload()
		if err != nil {
			e.log.Warn("list file not reloaded, keeping the last good version", "list", l.cfg.Name, "file", l.cfg.File, "err", err)
			continue
		}
		if changed {
			e.log.Info("list file reloaded", "list", l.cfg.Name, "file", l.cfg.File, "entries", l.file.List().Len())
		}
	}
}

// Invalidate drops the cached DNS answers for ip; an invalid ip drops all.
func (e *Engine) Invalidate(ip netip.Addr) {
	if !ip.IsValid() {
		e.cache.Purge()
		return
	}
	e.cache.Remove(ip.Unmap())
}

// CacheStats returns the verdict cache's counters.
func (e *Engine) CacheStats() cache.Stats { return e.cache.Stats() }

// Lists describes the configured lists in config order.
func (e *Engine) Lists() []ListInfo {
	out := make([]ListInfo, 0, len(e.lists))
	for _, l := range e.lists {
		out = append(out, e.info(l))
	}
	return out
}

func (e *Engine) info(l *list) ListInfo {
	li := ListInfo{
		Name:    l.cfg.Name,
		Zone:    l.cfg.Zone,
		Kind:    l.kind,
		IPv4:    l.cfg.IPv4,
		IPv6:    l.cfg.IPv6,
		Health:  l.kind == KindDNS && l.cfg.Health,
		State:   l.health(),
		Healthy: l.health() == ListHealthy,
		DryRun:  l.cfg.DryRun,
		Weight:  l.cfg.Weight,
	}
	if l.kind == KindDNS {
		li.Servers = e.opts.DNSServers
	}
	return li
}

// SetListState sets what the health probes found of a list. The hits of a
// list that is not ListHealthy are logged but not scored, its errors never
// tempfail, and checks do not wait for it. A change purges the cache so no
// verdict made under the old state survives.
func (e *Engine) SetListState(name string, s ListState) {
	l, ok := e.byName[name]
	if !ok {
		return
	}
	if ListState(l.state.Swap(int32(s))) != s {
		e.cache.Purge()
		// The health monitor logs the change with its reason, once.
		e.log.Debug("list health changed", "list", name, "state", s.String())
	}
}

// SetListHealthy is SetListState with ListHealthy or ListDegraded.
func (e *Engine) SetListHealthy(name string, healthy bool) {
	s := ListDegraded
	if healthy {
		s = ListHealthy
	}
	e.SetListState(name, s)
}

// Exempt reports why ip is never looked up, or SkipNone.
func (e *Engine) Exempt(ip netip.Addr) Skip {
	if !ip.IsValid() {
		return SkipInvalid
	}
	ip = ip.Unmap()
	if ip.IsLoopback() || ip.IsUnspecified() {
		return SkipLoopback
	}
	for _, p := range e.opts.Allow {
		if p.Contains(ip) {
			return SkipAllow
		}
	}
	return SkipNone
}

// Check decides about one client IP: exemptions, then the cached or fresh
// DNS answers, then the local lists, then the score.
func (e *Engine) Check(ctx context.Context, ip netip.Addr) Verdict {
	v, _ := e.check(ctx, ip, true)
	return v
}

// CheckCached is Check when it can answer at once: the client needs no
// DNS lookup, or the lists' answers for it are in the cache. ok is false
// when a lookup is needed; the caller then uses Check, which counts the
// cache miss. A front end uses it to decide without a goroutine of its own
// when it can.
func (e *Engine) CheckCached(ip netip.Addr) (v Verdict, ok bool) {
	return e.check(context.Background(), ip, false)
}

func (e *Engine) check(ctx context.Context, ip netip.Addr, wait bool) (Verdict, bool) {
	start := e.mono()
	ip = ip.Unmap()
	v := Verdict{IP: ip, Threshold: e.opts.Threshold, Action: ActionAccept}
	if v.Skipped = e.Exempt(ip); v.Skipped != SkipNone {
		v.Duration = e.mono() - start
		return v, true
	}
	var r *dnsResult
	if wait {
		r, v.Cached = e.dns(ctx, ip)
	} else if len(e.dnsLists(ip)) == 0 {
		r = emptyResult
	} else if c, ok := e.cache.Peek(ip); ok {
		r, v.Cached = c, true
	} else {
		return Verdict{}, false
	}
	e.finish(&v, r)
	v.Duration = e.mono() - start
	for _, o := range e.opts.Observers {
		o.ObserveCheck(v)
	}
	return v, true
}

// mono reads only the monotonic clock: time.Now also reads the wall
// clock, which doubles the cost of timing a cached check.
func (e *Engine) mono() time.Duration { return time.Since(e.epoch) }

func (e *Engine) dnsLists(ip netip.Addr) []*list {
	if ip.Is4() {
		return e.dns4
	}
	return e.dns6
}

func (e *Engine) localLists(ip netip.Addr) []*list {
	if ip.Is4() {
		return e.local4
	}
	return e.local6
}

// dns returns the DNS lists' answers for ip, from the cache when it can.
func (e *Engine) dns(ctx context.Context, ip netip.Addr) (*dnsResult, bool) {
	lists := e.dnsLists(ip)
	if len(lists) == 0 {
		return emptyResult, false
	}
	r, cached, err := e.cache.Load(ctx, ip, func(ctx context.Context) (*dnsResult, time.Duration, error) {
		outs := e.query(ctx, ip, lists, false)
		if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			// The caller went away: nothing worth keeping, and the
			// errors it caused must not stick to the IP.
			return nil, 0, err
		}
		r, ttl := e.build(outs)
		return r, ttl, nil
	})
	if err != nil {
		errs := make([]ListError, 0, len(lists))
		for _, l := range lists {
			errs = append(errs, ListError{List: l.cfg.Name, Err: "check abandoned: " + err.Error(), OnError: "ignore"})
		}
		return &dnsResult{errors: errs}, false
	}
	return r, cached
}

// outcome is one DNS list's answer to one query.
type outcome struct {
	l     *list
	res   dnsbl.Result
	state ListState // the list's health when it was asked
}

// counted reports whether the answer may score.
func (o *outcome) counted() bool { return o.state.Counts() }

var errDeadline = errors.New("no answer before the check deadline")

// degradedGrace is how long a check waits for degraded lists when every
// healthy list has answered.
const degradedGrace = 100 * time.Millisecond

// query asks every list in lists about ip in parallel under the policy
// deadline. Unless all is set, it stops waiting for degraded lists shortly
// after every healthy list has answered: a degraded list must not cost
// check time, and it asks for the A records only: one packet per list,
// the TXT texts come later, off the mail path (reason.go). With all set
// (Inspect: a person is waiting for the whole story) it waits for every
// list and fetches the texts of listings too.
func (e *Engine) query(ctx context.Context, ip netip.Addr, lists []*list, all bool) (outs []outcome) {
	start := time.Now()
	deadline := start.Add(e.opts.Deadline)
	outs = make([]outcome, len(lists))
	got := make([]bool, len(lists))
	// A panic in the DNS client is a list error for every list that has
	// not answered, never a listing, and it ends neither the check nor
	// the process.
	defer func() {
		if p := recover(); p != nil {
			e.panicked("DNS lookup panicked; taken as a list error", p, slog.String("ip", ip.String()))
			for i := range outs {
				if !got[i] {
					outs[i].res = dnsbl.Result{Status: dnsbl.Error, Err: errLookupPanicked}
				}
			}
		}
	}()
	var qbuf [8]dnsbl.Query
	qs := qbuf[:0]
	waiting := 0
	for i, l := range lists {
		outs[i] = outcome{l: l, state: l.health()}
		if all || outs[i].counted() {
			waiting++
		}
		qs = append(qs, dnsbl.Query{Zone: l.cfg.Zone, IP: ip, Timeout: l.cfg.Timeout, NoTXT: !all})
	}
	// The queries leave together and are answered in this goroutine;
	// Close gives up the ones still out when the check stops waiting.
	b := e.resolver.Start(ctx, deadline, qs)
	defer b.Close()
	received := 0
	for waiting > 0 {
		i, res, ok := b.Next(deadline)
		if !ok {
			break
		}
		outs[i].res, got[i] = res, true
		received++
		if all || outs[i].counted() {
			waiting--
		}
	}
	// Degraded lists get a short grace, so their hits still show in the
	// log when they answer quickly, but a dead one costs a check little.
	graceEnd := start.Add(degradedGrace)
	if deadline.Before(graceEnd) {
		graceEnd = deadline
	}
	for received < len(lists) {
		// Past the grace (or the deadline), only answers already in.
		i, res, ok := b.Next(graceEnd)
		if !ok {
			break
		}
		outs[i].res, got[i] = res, true
		received++
	}
	for i := range outs {
		if !got[i] {
			outs[i].res = dnsbl.Result{Status: dnsbl.Error, Err: errDeadline, Duration: e.opts.Deadline}
		}
	}
	if !all {
		for _, o := range outs {
			for _, obs := range e.opts.Observers {
				obs.ObserveAnswer(o.l.cfg.Name, o.res.Status.String(), o.state, o.res.Duration)
			}
		}
	}
	return outs
}

// build scores DNS answers and computes how long the result may be kept:
// the lowest of the lists' TTLs (a listing's TTL clamped to [min_ttl,
// max_ttl], a clean answer negative_ttl, an error error_ttl). Results
// without errors and texts are shared by every IP that has the same
// answers (see results), so a cache entry costs no result of its own.
func (e *Engine) build(outs []outcome) (*dnsResult, time.Duration) {
	r, ttl := e.score(outs)
	return e.results.share(r), ttl
}

// score is build without the sharing.
func (e *Engine) score(outs []outcome) (*dnsResult, time.Duration) {
	c := &e.opts.Cache
	r := &dnsResult{}
	// negative_ttl is used as configured, also above max_ttl.
	ttl := max(c.MaxTTL, c.NegativeTTL)
	for _, o := range outs {
		lc := o.l.cfg
		switch o.res.Status {
		case dnsbl.Listed:
			h := e.hit(lc, o.res, o.state)
			r.hits = append(r.hits, h)
			r.score += h.Weight
			ttl = min(ttl, cache.Clamp(o.res.TTL, c.MinTTL, c.MaxTTL))
		case dnsbl.NotListed:
			ttl = min(ttl, c.NegativeTTL)
		default:
			onErr := lc.OnError
			if !o.counted() || lc.DryRun {
				onErr = "ignore"
			}
			msg := "list error"
			if o.res.Err != nil {
				msg = o.res.Err.Error()
			}
			r.errors = append(r.errors, ListError{List: lc.Name, Err: msg, OnError: onErr})
			if onErr == "tempfail" {
				r.tempfail = true
			}
			// A degraded list's error counts for nothing, so it must not
			// shorten the entry either; recovery purges the cache.
			if o.counted() {
				ttl = min(ttl, c.ErrorTTL)
			}
		}
	}
	return r, ttl
}

func (e *Engine) hit(lc *List, res dnsbl.Result, state ListState) Hit {
	m := lc.match(res.Codes)
	h := Hit{List: lc.Name, Category: m.category, Code: m.code, Reason: res.Reason, Weight: m.weight, ListWeight: m.weight, DryRun: lc.DryRun,
		Degraded: state == ListDegraded, Unproven: state == ListUnproven}
	if h.DryRun || h.Degraded || h.Unproven {
		h.Weight = 0
	}
	return h
}

// localHit asks a file or store list about ip.
func (e *Engine) localHit(l *list, ip netip.Addr) (Hit, bool) {
	lc := l.cfg
	h := Hit{List: lc.Name, Category: lc.Category, Weight: lc.Weight, ListWeight: lc.Weight, DryRun: lc.DryRun}
	switch l.kind {
	case KindFile:
		ent, ok := l.file.List().Lookup(ip)
		if !ok {
			return Hit{}, false
		}
		if ent.Category != "" {
			h.Category = ent.Category
		}
		h.Reason = ent.Comment
	case KindStore:
		if e.opts.StoreList == nil {
			return Hit{}, false
		}
		cat, reason, listed := e.opts.StoreList.Lookup(ip)
		if !listed {
			return Hit{}, false
		}
		if cat != "" {
			h.Category = cat
		}
		h.Reason = reason
	default:
		return Hit{}, false
	}
	if h.DryRun {
		h.Weight = 0
	}
	return h, true
}

// finish adds the local lists to the DNS result and decides. It shares the
// cached slices when the local lists add nothing, so a cached check of a
// clean IP does not allocate.
func (e *Engine) finish(v *Verdict, r *dnsResult) {
	v.Hits, v.Errors, v.Score = r.hits, r.errors, r.score
	for _, l := range e.localLists(v.IP) {
		h, ok := e.localHit(l, v.IP)
		if !ok {
			continue
		}
		if len(v.Hits) == len(r.hits) {
			hits := make([]Hit, len(r.hits), len(r.hits)+len(e.localLists(v.IP)))
			copy(hits, r.hits)
			v.Hits = hits
		}
		v.Hits = append(v.Hits, h)
		v.Score += h.Weight
	}
	v.Action = e.decide(v.Score, r.tempfail)
	if v.Action == ActionReject && e.opts.DeferFirst > 0 && e.deferrable(v) {
		v.Action, v.Deferred = ActionTempfail, true
	}
}

// deferrable reports whether a reject may be deferred (delist-and-deliver):
// without the site's own list the score is below the threshold, the
// listing is one its owner may remove, and its first deferred refusal is
// less than DeferFirst ago.
func (e *Engine) deferrable(v *Verdict) bool {
	d, ok := e.opts.StoreList.(Deferrer)
	if !ok {
		return false
	}
	others := v.Score
	for _, h := range v.Hits {
		if l := e.byName[h.List]; l != nil && l.kind == KindStore {
			others -= h.Weight
		}
	}
	if others >= e.opts.Threshold {
		return false
	}
	selfRemovable, first := d.DeferState(v.IP)
	return selfRemovable && (first.IsZero() || time.Since(first) < e.opts.DeferFirst)
}

// decide turns a score into an action. The score decides first; a list
// error only tempfails when the admin asked for it (on_error = "tempfail")
// and the score has not already decided. A dry-run policy (action = "log")
// never refuses anything, also not on errors.
func (e *Engine) decide(score float64, tempfail bool) Action {
	switch {
	case score >= e.opts.Threshold:
		return e.action
	case tempfail && e.action == ActionLog:
		return ActionLog
	case tempfail:
		return ActionTempfail
	}
	return ActionAccept
}
