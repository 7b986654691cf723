package policy

import (
	"encoding/binary"
	"math"
	"sync"
)

// Most clients have one of a handful of DNS results: clean everywhere, or
// listed by the same lists with the same codes. The verdict cache holds
// one entry per client IP, up to [cache] size of them, so results keeps
// one copy of each such result and every entry points at it: a cache entry
// costs the cache's own bookkeeping and no result of its own. Results with
// errors (their texts name timings) or with TXT texts (Inspect's, per IP)
// are not shared.

// maxSharedResults bounds the distinct results kept; past it, new ones are
// simply not shared.
const maxSharedResults = 1024

// results is the engine's table of shared results; the zero value is ready.
type results struct {
	mu sync.RWMutex
	m  map[string]*dnsResult
}

// share returns the shared copy of r when it has one (or r becomes it),
// else r itself.
func (rs *results) share(r *dnsResult) *dnsResult {
	if len(r.errors) > 0 {
		return r
	}
	if len(r.hits) == 0 {
		return emptyResult
	}
	var buf [256]byte
	key := buf[:0]
	for _, h := range r.hits {
		if h.Reason != "" {
			return r
		}
		key = appendHitKey(key, h)
	}
	rs.mu.RLock()
	s, ok := rs.m[string(key)]
	rs.mu.RUnlock()
	if ok {
		return s
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if s, ok := rs.m[string(key)]; ok {
		return s
	}
	if len(rs.m) >= maxSharedResults {
		return r
	}
	if rs.m == nil {
		rs.m = map[string]*dnsResult{}
	}
	rs.m[string(key)] = r
	return r
}

// appendHitKey appends everything a hit holds but its text, unambiguously.
func appendHitKey(b []byte, h Hit) []byte {
	b = binary.AppendUvarint(b, uint64(len(h.List)))
	b = append(b, h.List...)
	b = binary.AppendUvarint(b, uint64(len(h.Category)))
	b = append(b, h.Category...)
	code := h.Code.As16()
	b = append(b, byte(h.Code.BitLen()/8)) // invalid, IPv4 and IPv6 apart
	b = append(b, code[:]...)
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(h.Weight))
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(h.ListWeight))
	var flags byte
	if h.DryRun {
		flags |= 1
	}
	if h.Degraded {
		flags |= 2
	}
	return append(b, flags)
}
