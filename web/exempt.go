package web

import (
	"context"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/iplist"
	"github.com/blmilter/blmilter/policy"
)

// The mail filter never looks up loopback addresses or the allowed
// networks, and the engine's Inspect reports its lists as skipped for
// them. The lookup page is about any address, though: asking for
// 127.0.0.2, the RFC 5782 test point every DNS list must list, is how an
// admin sees that each list answers. For such addresses the page asks the
// lists itself, for display only: nothing here decides about mail.

// exemptLists asks every configured list about ip, for an address the
// filter exempts.
type exemptLists struct {
	cfg      *policy.Config
	resolver *dnsbl.Resolver // nil without DNS lists or when it cannot be built
	mu       sync.Mutex
	files    map[string]*iplist.File
}

func (s *Server) exemptFor(cfg *policy.Config) *exemptLists {
	x := s.exempt.Load()
	if x != nil && x.cfg == cfg {
		return x
	}
	x = &exemptLists{cfg: cfg, files: map[string]*iplist.File{}}
	if r, err := dnsbl.NewResolver(cfg.DNS.Servers, cfg.DNS.Timeout.Duration); err == nil {
		x.resolver = r
	} else {
		s.log.Warn("web: resolver for exempt addresses", "err", err)
	}
	s.exempt.Store(x)
	return x
}

// inspect returns one row per list, as Inspect would for a checked address.
func (s *Server) inspectExempt(ctx context.Context, eng *policy.Engine, cfg *policy.Config, ip netip.Addr) []policy.ListResult {
	x := s.exemptFor(cfg)
	healthy := map[string]bool{}
	for _, l := range eng.Lists() {
		healthy[l.Name] = l.Healthy
	}
	out := make([]policy.ListResult, len(cfg.Lists))
	var wg sync.WaitGroup
	for i := range cfg.Lists {
		lc := &cfg.Lists[i]
		lr := &out[i]
		*lr = policy.ListResult{List: lc.Name, Kind: lc.Kind(), DryRun: lc.DryRun, Status: "skipped"}
		if ip.Is4() && !lc.UsesIPv4() || ip.Is6() && !lc.UsesIPv6() {
			continue
		}
		switch lc.Kind() {
		case policy.KindDNS:
			if x.resolver == nil {
				lr.Status = "error"
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := x.resolver.Lookup(ctx, dnsbl.Query{Zone: lc.Zone, IP: ip, Timeout: lc.Timeout.Duration})
				lr.Duration, lr.TTL = res.Duration, res.TTL
				switch res.Status {
				case dnsbl.Listed:
					lr.Status, lr.Codes, lr.Reason = "listed", res.Codes, res.Reason
					lr.Category, lr.Weight = codeCategory(lc, res.Codes)
				case dnsbl.NotListed:
					lr.Status = "clean"
				default:
					lr.Status = "error"
				}
				if ok, known := healthy[lc.Name]; known && !ok {
					lr.Status = "degraded"
				}
			}()
		case policy.KindStore:
			lr.Status = "clean"
			if s.store != nil {
				if l, ok := s.store.ListingFor(ip); ok && !l.Expired(s.now()) {
					lr.Status, lr.Category, lr.Reason, lr.Weight = "listed", cmp(l.Category, lc.Category), l.Reason, lc.Weight
				}
			}
		case policy.KindFile:
			f, err := x.file(lc.File)
			if err != nil {
				lr.Status = "error"
				continue
			}
			lr.Status = "clean"
			if e, ok := f.Lookup(ip); ok {
				lr.Status, lr.Category, lr.Reason, lr.Weight = "listed", cmp(e.Category, lc.Category), e.Comment, lc.Weight
			}
		}
	}
	wg.Wait()
	return out
}

// file opens a list file once per config and re-reads it when it changed.
func (x *exemptLists) file(path string) (*iplist.File, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if f, ok := x.files[path]; ok {
		f.Reload()
		return f, nil
	}
	f, err := iplist.OpenFile(path)
	if err != nil {
		return nil, err
	}
	x.files[path] = f
	return f, nil
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// codeCategory maps a DNS list's answer codes to a category and weight by
// the list's codes table, the way the policy does (a test holds the two
// together); a code no rule matches keeps the list's own category.
func codeCategory(lc *policy.ListConfig, codes []netip.Addr) (string, float64) {
	type rule struct {
		span     uint64
		key      string
		match    func(netip.Addr) bool
		category string
		weight   float64
	}
	var rules []rule
	for key, v := range lc.Codes {
		r := rule{key: key, category: lc.Category, weight: lc.Weight}
		switch v := v.(type) {
		case string:
			r.category = v
		case map[string]any:
			if c, ok := v["category"].(string); ok {
				r.category = c
			}
			switch w := v["weight"].(type) {
			case int64:
				r.weight = float64(w)
			case float64:
				r.weight = w
			}
		}
		switch {
		case strings.HasPrefix(key, "&"):
			n, err := strconv.ParseUint(strings.TrimSpace(key[1:]), 0, 8)
			if err != nil {
				continue
			}
			mask := byte(n)
			r.span = math.MaxUint64 - 256 + uint64(popcount(mask))
			r.match = func(a netip.Addr) bool { return a.Is4() && a.As4()[3]&mask != 0 }
		case strings.Contains(key, "/"):
			p, err := netip.ParsePrefix(key)
			if err != nil {
				continue
			}
			p = p.Masked()
			r.span = 1 << (32 - p.Bits())
			r.match = p.Contains
		case strings.Contains(key, "-"):
			a, b, _ := strings.Cut(key, "-")
			lo, err1 := netip.ParseAddr(strings.TrimSpace(a))
			hi, err2 := netip.ParseAddr(strings.TrimSpace(b))
			if err1 != nil || err2 != nil || !lo.Is4() || !hi.Is4() {
				continue
			}
			r.span = uint64(u32(hi)-u32(lo)) + 1
			r.match = func(a netip.Addr) bool { return !a.Less(lo) && !hi.Less(a) }
		default:
			c, err := netip.ParseAddr(key)
			if err != nil {
				continue
			}
			r.span = 1
			r.match = func(a netip.Addr) bool { return a == c }
		}
		rules = append(rules, r)
	}
	slices.SortFunc(rules, func(a, b rule) int {
		if a.span != b.span {
			if a.span < b.span {
				return -1
			}
			return 1
		}
		return strings.Compare(a.key, b.key)
	})
	// Each code takes its most specific rule; of the codes, the one with
	// the largest absolute weight wins (the first on a tie).
	category, weight := lc.Category, lc.Weight
	for i, c := range codes {
		cat, w := lc.Category, lc.Weight
		for _, r := range rules {
			if r.match(c.Unmap()) {
				cat, w = r.category, r.weight
				break
			}
		}
		if i == 0 || math.Abs(w) > math.Abs(weight) {
			category, weight = cat, w
		}
	}
	return category, weight
}

func popcount(b byte) int {
	n := 0
	for ; b != 0; b &= b - 1 {
		n++
	}
	return n
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
