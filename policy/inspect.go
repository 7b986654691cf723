package policy

import (
	"context"
	"net/netip"
	"time"

	"github.com/blmilter/blmilter/cache"
	"github.com/blmilter/blmilter/dnsbl"
)

// ListResult is one list's own answer about an IP, as Inspect reports it.
type ListResult struct {
	List     string
	Kind     string
	Status   string // listed | clean | error | degraded | unproven | skipped
	Codes    []netip.Addr
	Category string
	Reason   string
	Weight   float64
	TTL      time.Duration
	Expires  time.Time
	Err      string
	Duration time.Duration
	DryRun   bool
}

// Inspection is everything known about one IP, for the lookup page and
// `blmilter check`.
type Inspection struct {
	Verdict Verdict
	Lists   []ListResult
	Reply   *Reply // nil when the verdict does not refuse the client
}

// Inspect asks every list about ip, bypassing the cache (whose entry it
// refreshes), and waits for degraded lists too. The reply is what a client
// would get, without a ref and without being recorded.
//
// An address the mail path exempts (loopback, allow) is still asked about:
// the lookup page is about any address, and /ip/127.0.0.2 shows each list
// answering its RFC 5782 test point. Its verdict stays Skipped, with no
// reply, because mail from it is never judged.
func (e *Engine) Inspect(ctx context.Context, ip netip.Addr) Inspection {
	start := time.Now()
	ip = ip.Unmap()
	in := Inspection{Verdict: Verdict{IP: ip, Threshold: e.opts.Threshold, Action: ActionAccept}}
	if !ip.IsValid() {
		in.Verdict.Skipped = SkipInvalid
		return in
	}
	skip := e.Exempt(ip)
	dnsLists := e.dnsLists(ip)
	r := emptyResult
	var outs []outcome
	if len(dnsLists) > 0 {
		outs = e.query(ctx, ip, dnsLists, true)
		var ttl time.Duration
		r, ttl = e.build(outs)
		if ctx.Err() == nil && skip == SkipNone {
			e.cache.Set(ip, r, ttl)
		}
	}
	now := time.Now()
	c := &e.opts.Cache
	for _, l := range e.lists {
		lr := ListResult{List: l.cfg.Name, Kind: l.kind, DryRun: l.cfg.DryRun}
		var o *outcome
		for i := range outs {
			if outs[i].l == l {
				o = &outs[i]
			}
		}
		switch {
		case l.kind == KindDNS && o == nil:
			lr.Status = "skipped"
			lr.Reason = "not asked about IPv6 addresses"
			if ip.Is4() {
				lr.Reason = "not asked about IPv4 addresses"
			}
		case l.kind == KindDNS:
			lr.Duration = o.res.Duration
			switch o.res.Status {
			case dnsbl.Listed:
				h := e.hit(l.cfg, o.res, o.state)
				lr.Status, lr.Codes, lr.Category, lr.Reason, lr.Weight = "listed", o.res.Codes, h.Category, h.Reason, h.Weight
				lr.TTL = cache.Clamp(o.res.TTL, c.MinTTL, c.MaxTTL)
			case dnsbl.NotListed:
				lr.Status, lr.TTL = "clean", c.NegativeTTL
			default:
				lr.Status, lr.TTL = "error", c.ErrorTTL
				if o.res.Err != nil {
					lr.Err = o.res.Err.Error()
				}
			}
			switch o.state {
			case ListDegraded:
				lr.Status = "degraded"
			case ListUnproven:
				lr.Status = "unproven"
			}
			if lr.TTL > 0 {
				lr.Expires = now.Add(lr.TTL)
			}
		case l.kind == KindStore && e.opts.StoreList == nil:
			lr.Status, lr.Reason = "skipped", "no store"
		case l.kind == KindStore && !e.storeAvailable():
			lr.Status, lr.Err = "error", "the store is not open"
		default:
			if !(ip.Is4() && l.cfg.IPv4 || ip.Is6() && l.cfg.IPv6) {
				lr.Status = "skipped"
				break
			}
			t0 := time.Now()
			h, ok := e.localHit(l, ip)
			lr.Duration = time.Since(t0)
			lr.Status = "clean"
			if ok {
				lr.Status, lr.Category, lr.Reason, lr.Weight = "listed", h.Category, h.Reason, h.Weight
			}
		}
		in.Lists = append(in.Lists, lr)
	}
	in.Verdict.IP = ip
	if skip != SkipNone {
		in.Verdict.Skipped = skip
		in.Verdict.Duration = time.Since(start)
		return in
	}
	e.finish(&in.Verdict, r)
	in.Verdict.Duration = time.Since(start)
	if in.Verdict.Action.Applies() {
		rep := e.reply(&in.Verdict, "", false)
		in.Reply = &rep
	}
	return in
}
