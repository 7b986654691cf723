package store

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// snapshot is the listings as the mail path sees them: for each prefix
// length in use, a map from the masked address to the listing. A lookup
// masks the address to each length, longest first, and takes the first
// listing that has not expired, so an expired /32 falls through to a live
// /24 without waiting for a rebuild. There are at most 33 (IPv4) or 129
// (IPv6) lengths and real lists use a handful, so this is a few map probes
// on integer keys and no allocation.
type snapshot struct {
	v4   []level4
	v6   []level6
	all  map[netip.Prefix]*Listing // every live listing, to diff snapshots
	next time.Time                 // earliest expiry in the future; zero: none
	gen  int64                     // meta.listings_gen it was built from
	now  func() time.Time          // the store's clock
}

type level4 struct {
	bits int
	mask uint32
	m    map[uint32]*entry
}

type key6 struct{ hi, lo uint64 }

type level6 struct {
	bits int
	mask key6
	m    map[key6]*entry
}

type entry struct {
	l       Listing
	expires int64 // Unix milliseconds; 0: never
	// selfRemovable: the only listing of its addresses, one its owner may
	// remove under the store's SelfService rule with quota left (as of
	// the snapshot's build).
	selfRemovable bool
	// firstRefused is when a refusal by this listing was first deferred
	// (Unix milliseconds; 0: never): set here at once, written to the
	// database by the writer.
	firstRefused atomic.Int64
}

func mask4(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}

func mask6(bits int) key6 {
	switch {
	case bits == 0:
		return key6{}
	case bits <= 64:
		return key6{hi: ^uint64(0) << (64 - bits)}
	case bits == 128:
		return key6{hi: ^uint64(0), lo: ^uint64(0)}
	default:
		return key6{hi: ^uint64(0), lo: ^uint64(0) << (128 - bits)}
	}
}

func addr4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addr6(a netip.Addr) key6 {
	b := a.As16()
	return key6{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func newSnapshot(ls []Listing, gen int64, now time.Time, clock func() time.Time) *snapshot {
	s := &snapshot{all: make(map[netip.Prefix]*Listing, len(ls)), gen: gen, now: clock}
	v4 := map[int]*level4{}
	v6 := map[int]*level6{}
	for i := range ls {
		l := &ls[i]
		e := &entry{l: *l}
		if l.FirstRefused != nil {
			e.firstRefused.Store(millis(*l.FirstRefused))
		}
		if l.ExpiresAt != nil {
			if !l.ExpiresAt.After(now) {
				continue
			}
			e.expires = millis(*l.ExpiresAt)
			if s.next.IsZero() || l.ExpiresAt.Before(s.next) {
				s.next = *l.ExpiresAt
			}
		}
		p, bits := l.Prefix.Masked(), l.Prefix.Bits()
		if p.Addr().Is4() {
			lv := v4[bits]
			if lv == nil {
				lv = &level4{bits: bits, mask: mask4(bits), m: map[uint32]*entry{}}
				v4[bits] = lv
			}
			lv.m[addr4(p.Addr())] = e
		} else {
			lv := v6[bits]
			if lv == nil {
				lv = &level6{bits: bits, mask: mask6(bits), m: map[key6]*entry{}}
				v6[bits] = lv
			}
			lv.m[addr6(p.Addr())] = e
		}
		s.all[p] = &e.l
	}
	for _, lv := range v4 {
		s.v4 = append(s.v4, *lv)
	}
	for _, lv := range v6 {
		s.v6 = append(s.v6, *lv)
	}
	slices.SortFunc(s.v4, func(a, b level4) int { return b.bits - a.bits })
	slices.SortFunc(s.v6, func(a, b level6) int { return b.bits - a.bits })
	return s
}

// markSelfRemovable sets each entry's selfRemovable: rule covers it, its
// prefix had fewer than rule.Quota self-service removals (used), and no
// shorter listing contains it. It carries over the first deferral of a
// listing period that old knew and the database does not yet.
func (s *snapshot) markSelfRemovable(rule SelfService, used map[string]int, old *snapshot) {
	for _, lv := range s.v4 {
		for _, e := range lv.m {
			s.mark(e, rule, used, old)
		}
	}
	for _, lv := range s.v6 {
		for _, e := range lv.m {
			s.mark(e, rule, used, old)
		}
	}
}

func (s *snapshot) mark(e *entry, rule SelfService, used map[string]int, old *snapshot) {
	if e.firstRefused.Load() == 0 && old != nil {
		if o, ok := old.exact(e.l.Prefix); ok && o.l.ID == e.l.ID && o.l.ListedAt.Equal(e.l.ListedAt) {
			e.firstRefused.Store(o.firstRefused.Load())
		}
	}
	if !rule.Covers(e.l) || used[e.l.Prefix.String()] >= rule.Quota {
		return
	}
	p := e.l.Prefix
	if p.Bits() > 0 {
		if _, ok := s.lookupShorter(p); ok {
			return
		}
	}
	e.selfRemovable = true
}

// exact finds the entry of exactly p.
func (s *snapshot) exact(p netip.Prefix) (*entry, bool) {
	if p.Addr().Is4() {
		for i := range s.v4 {
			if s.v4[i].bits == p.Bits() {
				e, ok := s.v4[i].m[addr4(p.Addr())]
				return e, ok
			}
		}
		return nil, false
	}
	for i := range s.v6 {
		if s.v6[i].bits == p.Bits() {
			e, ok := s.v6[i].m[addr6(p.Addr())]
			return e, ok
		}
	}
	return nil, false
}

// lookupShorter finds a listing shorter than p that contains it, expired
// or not.
func (s *snapshot) lookupShorter(p netip.Prefix) (*entry, bool) {
	a := p.Addr()
	if a.Is4() {
		k := addr4(a)
		for i := range s.v4 {
			if lv := &s.v4[i]; lv.bits < p.Bits() {
				if e, ok := lv.m[k&lv.mask]; ok {
					return e, true
				}
			}
		}
		return nil, false
	}
	k := addr6(a)
	for i := range s.v6 {
		if lv := &s.v6[i]; lv.bits < p.Bits() {
			if e, ok := lv.m[key6{k.hi & lv.mask.hi, k.lo & lv.mask.lo}]; ok {
				return e, true
			}
		}
	}
	return nil, false
}

// lookup finds the longest live listing that contains ip.
func (s *snapshot) lookup(ip netip.Addr) (*entry, bool) {
	ip = ip.Unmap()
	var now int64
	live := func(e *entry) bool {
		if e.expires == 0 {
			return true
		}
		if now == 0 {
			now = s.now().UnixMilli()
		}
		return now < e.expires
	}
	switch {
	case ip.Is4():
		a := addr4(ip)
		for i := range s.v4 {
			if e, ok := s.v4[i].m[a&s.v4[i].mask]; ok && live(e) {
				return e, true
			}
		}
	case ip.Is6():
		a := addr6(ip)
		for i := range s.v6 {
			lv := &s.v6[i]
			if e, ok := lv.m[key6{a.hi & lv.mask.hi, a.lo & lv.mask.lo}]; ok && live(e) {
				return e, true
			}
		}
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
