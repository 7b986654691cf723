package policy

import (
	"context"
	"net/netip"

	"github.com/blmilter/blmilter/dnsbl"
)

// Hooks for the tests in package policy_test. Those build their engines
// from config text, as the daemon does, through the config package, which
// imports policy: the tests of package policy itself cannot.

// EmptyResult is the one result every clean client shares.
var EmptyResult any = emptyResult

// DNSResult returns the DNS result the verdict cache keeps for ip, asking
// the lists if need be, as an opaque value: two clients share a result
// when their values are equal.
func (e *Engine) DNSResult(ctx context.Context, ip netip.Addr) any {
	r, _ := e.dns(ctx, ip)
	return r
}

// SetAnswers puts into the verdict cache what the engine keeps after its
// IPv4 DNS lists, in order, answered res about ip, and into the text cache
// each listing's Reason, as the record of a refusal would: a benchmark
// fills a large cache without a DNS round trip per client.
func (e *Engine) SetAnswers(ip netip.Addr, res []dnsbl.Result) {
	e.reasons.init()
	outs := make([]outcome, len(e.dns4))
	for i, l := range e.dns4 {
		outs[i] = outcome{l: l, res: res[i]}
		if res[i].Status == dnsbl.Listed && res[i].Reason != "" {
			// The mail path never has the text in its result.
			outs[i].res.Reason = ""
			e.reasons.cache.Set(reasonKey{l.cfg.Zone, ip}, res[i].Reason, res[i].TTL)
		}
	}
	r, ttl := e.build(outs)
	e.cache.Set(ip, r, ttl)
}

// BreakResolver leaves the engine without its resolver, a state no build
// makes: every DNS lookup and every fetch of a listing's text then panics,
// each on a goroutine of the engine's own.
func (e *Engine) BreakResolver() { e.resolver = nil }
