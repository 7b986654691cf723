package policy

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/blmilter/blmilter/cache"
	"github.com/blmilter/blmilter/dnsbl"
)

// The mail path asks each DNS list one A query per client IP and nothing
// else: the code in the answer decides, and no reply uses the list's TXT
// text. The text is for people: the lookup page and `blmilter check` ask
// for it themselves (Inspect, a person waits there anyway), and the
// decision record gets it here, after the reply is out. Reply hands the
// decision over at once when the texts it needs are known, else a
// background fill fetches them (one TXT query per listing, sent together
// and shared with any other fill asking the same at once) and records the decision when they
// arrive or the list's timeout passes. The texts are kept in a small cache
// of their own for their TTL, so a client refused again and again costs
// one TXT query per TTL; the verdict cache holds only the A answers.

// reasonCacheSize bounds the texts kept. A text is needed between a
// refusal and its record, and for clients refused again within the TTL.
const reasonCacheSize = 4096

// maxReasonFills bounds the fills waiting for DNS at once. A refusal that
// finds them all busy is recorded without its texts: the record matters
// more than the text, and a flood of refusals must not pile up goroutines.
const maxReasonFills = 256

// reasons is the engine's text cache and its background fills. The zero
// value is ready; the cache is made on first use.
type reasons struct {
	once  sync.Once
	cache *cache.Cache[reasonKey, string]
	slots chan struct{}

	mu    sync.Mutex
	busy  int           // fills running
	drain chan struct{} // closed when busy drops to 0; nil when nobody waits
}

type reasonKey struct {
	zone string
	ip   netip.Addr
}

func (rs *reasons) init() {
	rs.once.Do(func() {
		rs.cache = cache.New[reasonKey, string](cache.Options{Size: reasonCacheSize})
		rs.slots = make(chan struct{}, maxReasonFills)
	})
}

// record hands d to the Recorder, with the TXT texts of its DNS hits
// filled in when they can be had: at once from the text cache, else from
// a background fill. It never waits for DNS.
func (e *Engine) record(d Decision) {
	rs := &e.reasons
	rs.init()
	var missing []int // hits whose text is still to be fetched
	for i, h := range d.Verdict.Hits {
		if h.Reason == "" && e.reasonList(h) != nil {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		e.opts.Recorder.RecordDecision(d)
		return
	}
	// The hits are shared with the verdict cache: fill a copy.
	hits := make([]Hit, len(d.Verdict.Hits))
	copy(hits, d.Verdict.Hits)
	d.Verdict.Hits = hits
	n := 0
	for _, i := range missing {
		if text, ok := rs.cache.Get(reasonKey{e.reasonList(hits[i]).cfg.Zone, d.Verdict.IP}); ok {
			hits[i].Reason = text
			continue
		}
		missing[n] = i
		n++
	}
	missing = missing[:n]
	if len(missing) == 0 {
		e.opts.Recorder.RecordDecision(d)
		return
	}
	select {
	case rs.slots <- struct{}{}:
	default:
		e.opts.Recorder.RecordDecision(d)
		return
	}
	rs.mu.Lock()
	rs.busy++
	rs.mu.Unlock()
	go func() {
		defer rs.done()
		// A panic here would end the process, long after the client was
		// answered; recovered, the decision is recorded without the texts.
		defer func() {
			if p := recover(); p != nil {
				e.panicked("recording a decision panicked", p, slog.String("ip", d.Verdict.IP.String()), slog.String("ref", d.Ref))
			}
		}()
		func() {
			defer func() {
				if p := recover(); p != nil {
					e.panicked("fetching listing texts panicked; the decision is recorded without them", p, slog.String("ip", d.Verdict.IP.String()), slog.String("ref", d.Ref))
				}
			}()
			e.fetchReasons(hits, missing, d.Verdict.IP)
		}()
		e.opts.Recorder.RecordDecision(d)
	}()
}

func (rs *reasons) done() {
	<-rs.slots
	rs.mu.Lock()
	rs.busy--
	if rs.busy == 0 && rs.drain != nil {
		close(rs.drain)
		rs.drain = nil
	}
	rs.mu.Unlock()
}

// FlushDecisions waits until every decision Reply made so far has gone to
// the Recorder, with the texts of its listings or without those whose
// lookups ran out of time (a list's timeout at most). Close calls it, so a
// shutdown records every reply it sent.
func (e *Engine) FlushDecisions() {
	rs := &e.reasons
	rs.mu.Lock()
	if rs.busy == 0 {
		rs.mu.Unlock()
		return
	}
	if rs.drain == nil {
		rs.drain = make(chan struct{})
	}
	ch := rs.drain
	rs.mu.Unlock()
	<-ch
}

// reasonList is the DNS list behind a hit, or nil for a hit of a file or
// store list (their texts are in memory, already in the hit).
func (e *Engine) reasonList(h Hit) *list {
	if !h.Code.IsValid() {
		return nil
	}
	l := e.byName[h.List]
	if l == nil || l.kind != KindDNS {
		return nil
	}
	return l
}

// fetchReasons fills in the texts of hits[missing] (hits of DNS lists)
// for ip: the TXT queries leave together, each list's with its own
// timeout, and each text goes into the text cache. A failure leaves a
// text "": the listing stands without it.
func (e *Engine) fetchReasons(hits []Hit, missing []int, ip netip.Addr) {
	c := &e.opts.Cache
	qs := make([]dnsbl.Query, len(missing))
	for j, i := range missing {
		l := e.reasonList(hits[i])
		qs[j] = dnsbl.Query{Zone: l.cfg.Zone, IP: ip, Timeout: l.cfg.Timeout}
	}
	for j, res := range e.resolver.Reasons(context.Background(), qs) {
		if res.Err != nil {
			continue
		}
		hits[missing[j]].Reason = res.Reason
		e.reasons.cache.Set(reasonKey{qs[j].Zone, ip}, res.Reason, cache.Clamp(res.TTL, c.MinTTL, c.MaxTTL))
	}
}
