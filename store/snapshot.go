package store

import (
	"net/netip"
	"slices"
	"time"
)

// snapshot is the listings as the mail path sees them: for each prefix
// length in use, a map from masked prefix to listing. A lookup masks the
// address to each length, longest first, and takes the first listing that
// has not expired, so an expired /32 falls through to a live /24 without
// waiting for a rebuild. There are at most 33 (IPv4) or 129 (IPv6) lengths
// and real lists use a handful, so this is a few map probes and no
// allocation.
type snapshot struct {
	v4, v6 []level
	all    map[netip.Prefix]*Listing // every live listing, to diff snapshots
	next   time.Time                 // earliest expiry in the future; zero: none
	gen    int64                     // meta.listings_gen it was built from
}

type level struct {
	bits int
	m    map[netip.Prefix]*entry
}

type entry struct {
	l       Listing
	expires int64 // Unix nanoseconds; 0: never
}

func newSnapshot(ls []Listing, gen int64, now time.Time) *snapshot {
	s := &snapshot{all: make(map[netip.Prefix]*Listing, len(ls)), gen: gen}
	v4 := map[int]map[netip.Prefix]*entry{}
	v6 := map[int]map[netip.Prefix]*entry{}
	for i := range ls {
		l := &ls[i]
		e := &entry{l: *l}
		if l.ExpiresAt != nil {
			if !l.ExpiresAt.After(now) {
				continue
			}
			e.expires = nanos(*l.ExpiresAt)
			if s.next.IsZero() || l.ExpiresAt.Before(s.next) {
				s.next = *l.ExpiresAt
			}
		}
		byLen := v6
		if l.Prefix.Addr().Is4() {
			byLen = v4
		}
		m := byLen[l.Prefix.Bits()]
		if m == nil {
			m = map[netip.Prefix]*entry{}
			byLen[l.Prefix.Bits()] = m
		}
		m[l.Prefix] = e
		s.all[l.Prefix] = &e.l
	}
	s.v4 = levels(v4)
	s.v6 = levels(v6)
	return s
}

func levels(byLen map[int]map[netip.Prefix]*entry) []level {
	out := make([]level, 0, len(byLen))
	for bits, m := range byLen {
		out = append(out, level{bits: bits, m: m})
	}
	slices.SortFunc(out, func(a, b level) int { return b.bits - a.bits })
	return out
}

// lookup finds the longest live listing that contains ip.
func (s *snapshot) lookup(ip netip.Addr) (*entry, bool) {
	ip = ip.Unmap()
	var ls []level
	switch {
	case ip.Is4():
		ls = s.v4
	case ip.Is6():
		ls = s.v6
		ip = ip.WithZone("")
	default:
		return nil, false
	}
	var now int64
	for i := range ls {
		p, err := ip.Prefix(ls[i].bits)
		if err != nil {
			continue
		}
		e, ok := ls[i].m[p]
		if !ok {
			continue
		}
		if e.expires != 0 {
			if now == 0 {
				now = time.Now().UnixNano()
			}
			if now >= e.expires {
				continue
			}
		}
		return e, true
	}
	return nil, false
}

// diff lists the prefixes whose listing appeared, vanished or changed
// between a and b.
func diff(a, b *snapshot) []netip.Prefix {
	var out []netip.Prefix
	for p, la := range a.all {
		lb, ok := b.all[p]
		if !ok || !sameListing(la, lb) {
			out = append(out, p)
		}
	}
	for p := range b.all {
		if _, ok := a.all[p]; !ok {
			out = append(out, p)
		}
	}
	return out
}

func sameListing(a, b *Listing) bool {
	if a.ID != b.ID || a.Category != b.Category || a.Reason != b.Reason || !a.ListedAt.Equal(b.ListedAt) {
		return false
	}
	if (a.ExpiresAt == nil) != (b.ExpiresAt == nil) {
		return false
	}
	return a.ExpiresAt == nil || a.ExpiresAt.Equal(*b.ExpiresAt)
}
