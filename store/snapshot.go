package store

import (
	"encoding/binary"
	"iter"
	"maps"
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
	next time.Time // earliest expiry in the future; zero: none
	gen  int64     // meta.listings_gen it was built from
	// gone is meta.listings_gone it was built from: a row deleted or moved
	// to another prefix leaves no row of a newer generation behind, so a
	// change of it makes the next rebuild read every row.
	gone int64
	now  func() time.Time // the store's clock
	// rule and used decide which listings their owners may remove
	// (selfRemovable): the self-service rule, and the self-service
	// removals per prefix within its window, as of the build.
	rule SelfService
	used map[netip.Prefix]int
}

// level holds the listings of one prefix length, keyed by their masked
// address.
type level[K comparable] struct {
	bits int
	mask K
	m    map[K]*entry
}

type key6 struct{ hi, lo uint64 }

type (
	level4 = level[uint32]
	level6 = level[key6]
)

// entry is one listing in a snapshot. A snapshot derived from another
// shares the entries of the listings that did not change; only
// firstRefused ever changes in an entry.
type entry struct {
	l       Listing
	expires int64 // Unix milliseconds; 0: never
	// firstRefused is when a refusal by this listing was first deferred
	// (Unix milliseconds; 0: never): set here at once, written to the
	// database by the writer.
	firstRefused atomic.Int64
}

// newEntry makes e l's entry. A listing period that old (if any) knew to
// have deferred a refusal keeps that deferral, which the database may not
// have yet.
func newEntry(e *entry, l *Listing, old *snapshot) {
	e.l = *l
	if l.ExpiresAt != nil {
		e.expires = millis(*l.ExpiresAt)
	}
	if l.FirstRefused != nil {
		e.firstRefused.Store(millis(*l.FirstRefused))
	} else if old != nil {
		e.carryDeferral(old)
	}
}

func (e *entry) carryDeferral(old *snapshot) {
	if o, ok := old.exact(e.l.Prefix); ok && o.l.ID == e.l.ID && o.l.ListedAt.Equal(e.l.ListedAt) {
		e.firstRefused.Store(o.firstRefused.Load())
	}
}

// carryDeferrals keeps in s the first deferrals that old knew of the same
// listing periods and the database did not have when s was read.
func (s *snapshot) carryDeferrals(old *snapshot) {
	for _, lv := range s.v4 {
		for _, e := range lv.m {
			if e.firstRefused.Load() == 0 {
				e.carryDeferral(old)
			}
		}
	}
	for _, lv := range s.v6 {
		for _, e := range lv.m {
			if e.firstRefused.Load() == 0 {
				e.carryDeferral(old)
			}
		}
	}
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

// newSnapshot builds a snapshot of ls, the live listings, from scratch.
func newSnapshot(ls []Listing, gen int64, now time.Time, clock func() time.Time) *snapshot {
	s := &snapshot{gen: gen, now: clock}
	// Counted first, so each length's map is made once at its size; the
	// entries are one allocation.
	var n4 [33]int
	var n6 [129]int
	for i := range ls {
		if l := &ls[i]; !l.Expired(now) {
			if l.Prefix.Addr().Is4() {
				n4[l.Prefix.Bits()]++
			} else {
				n6[l.Prefix.Bits()]++
			}
		}
	}
	var (
		v4 [33]*level4
		v6 [129]*level6
	)
	for bits, n := range n4 {
		if n > 0 {
			v4[bits] = &level4{bits: bits, mask: mask4(bits), m: make(map[uint32]*entry, n)}
		}
	}
	for bits, n := range n6 {
		if n > 0 {
			v6[bits] = &level6{bits: bits, mask: mask6(bits), m: make(map[key6]*entry, n)}
		}
	}
	entries := make([]entry, len(ls))
	for i := range ls {
		l := &ls[i]
		if l.Expired(now) {
			continue
		}
		e := &entries[i]
		newEntry(e, l, nil)
		if l.ExpiresAt != nil && (s.next.IsZero() || l.ExpiresAt.Before(s.next)) {
			s.next = *l.ExpiresAt
		}
		p, bits := l.Prefix.Masked(), l.Prefix.Bits()
		if p.Addr().Is4() {
			v4[bits].m[addr4(p.Addr())] = e
		} else {
			v6[bits].m[addr6(p.Addr())] = e
		}
	}
	// Longest first.
	for bits := len(v4) - 1; bits >= 0; bits-- {
		if v4[bits] != nil {
			s.v4 = append(s.v4, *v4[bits])
		}
	}
	for bits := len(v6) - 1; bits >= 0; bits-- {
		if v6[bits] != nil {
			s.v6 = append(s.v6, *v6[bits])
		}
	}
	return s
}

// derive is the snapshot after old when only the listings of the prefixes
// in touched may have changed, fresh being those among them that are live
// now, and listings of old may have expired by now. It copies only the
// maps of the prefix lengths that changed, shares everything else with
// old, entries of unchanged listings included, and changes nothing old's
// readers see. It also returns the prefixes whose listing expired.
//
// The next expiry it keeps may be too early (a listing that would have
// expired first was changed or removed); the watcher then wakes for
// nothing and the rebuild it makes finds the true one.
func (old *snapshot) derive(fresh []Listing, touched []netip.Prefix, gen int64, now time.Time) (*snapshot, []netip.Prefix) {
	s := &snapshot{next: old.next, gen: gen, gone: old.gone, now: old.now}
	// The maps of the lengths s no longer shares with old.
	own4 := map[int]map[uint32]*entry{}
	own6 := map[int]map[key6]*entry{}
	map4 := func(bits int) map[uint32]*entry { return ownMap(own4, old.v4, bits) }
	map6 := func(bits int) map[key6]*entry { return ownMap(own6, old.v6, bits) }
	remove := func(p netip.Prefix) {
		if p.Addr().Is4() {
			delete(map4(p.Bits()), addr4(p.Addr()))
		} else {
			delete(map6(p.Bits()), addr6(p.Addr()))
		}
	}
	var expired []netip.Prefix
	if !old.next.IsZero() && !now.Before(old.next) {
		// Some listing expired: find which, and the next expiry anew.
		s.next = time.Time{}
		for e := range old.entries() {
			switch l := &e.l; {
			case l.ExpiresAt == nil:
			case l.Expired(now):
				remove(l.Prefix)
				expired = append(expired, l.Prefix)
			case s.next.IsZero() || l.ExpiresAt.Before(s.next):
				s.next = *l.ExpiresAt
			}
		}
	}
	for _, p := range touched {
		if _, ok := old.exact(p); ok {
			remove(p)
		}
	}
	entries := make([]entry, len(fresh))
	for i := range fresh {
		l := &fresh[i]
		e := &entries[i]
		newEntry(e, l, old)
		if l.ExpiresAt != nil && (s.next.IsZero() || l.ExpiresAt.Before(s.next)) {
			s.next = *l.ExpiresAt
		}
		p := l.Prefix.Masked()
		if p.Addr().Is4() {
			map4(p.Bits())[addr4(p.Addr())] = e
		} else {
			map6(p.Bits())[addr6(p.Addr())] = e
		}
	}
	s.v4 = mergeLevels(old.v4, own4, mask4)
	s.v6 = mergeLevels(old.v6, own6, mask6)
	return s, expired
}

// ownMap returns the map of prefix length bits that a derived snapshot
// owns (own), copying old's on first use: the maps of the lengths that
// did not change stay shared.
func ownMap[K comparable](own map[int]map[K]*entry, old []level[K], bits int) map[K]*entry {
	if m, ok := own[bits]; ok {
		return m
	}
	m := map[K]*entry{}
	for _, lv := range old {
		if lv.bits == bits {
			m = maps.Clone(lv.m)
		}
	}
	own[bits] = m
	return m
}

// mergeLevels is a derived snapshot's levels: old's, with the maps in own
// in place of theirs, then the lengths old did not have; the empty ones
// left out, the longest first. It empties own.
func mergeLevels[K comparable](old []level[K], own map[int]map[K]*entry, mask func(int) K) []level[K] {
	var out []level[K]
	for _, lv := range old {
		if m, ok := own[lv.bits]; ok {
			lv.m = m
			delete(own, lv.bits)
		}
		if len(lv.m) > 0 {
			out = append(out, lv)
		}
	}
	for bits, m := range own { // lengths old did not have
		if len(m) > 0 {
			out = append(out, level[K]{bits: bits, mask: mask(bits), m: m})
		}
	}
	slices.SortFunc(out, func(a, b level[K]) int { return b.bits - a.bits })
	return out
}

// selfRemovable reports whether e is a listing its owner may remove under
// the snapshot's rule, with quota left, and the only one of its addresses:
// no shorter listing contains it.
func (s *snapshot) selfRemovable(e *entry) bool {
	if !s.rule.Covers(e.l) || s.used[e.l.Prefix] >= s.rule.Quota {
		return false
	}
	if p := e.l.Prefix; p.Bits() > 0 {
		if _, ok := s.lookupShorter(p); ok {
			return false
		}
	}
	return true
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

// entries yields every entry of s, expired or not.
func (s *snapshot) entries() iter.Seq[*entry] {
	return func(yield func(*entry) bool) {
		for _, lv := range s.v4 {
			for _, e := range lv.m {
				if !yield(e) {
					return
				}
			}
		}
		for _, lv := range s.v6 {
			for _, e := range lv.m {
				if !yield(e) {
					return
				}
			}
		}
	}
}

// len is the number of entries of s.
func (s *snapshot) len() int {
	n := 0
	for _, lv := range s.v4 {
		n += len(lv.m)
	}
	for _, lv := range s.v6 {
		n += len(lv.m)
	}
	return n
}

// diff lists the prefixes whose listing appeared, vanished or changed
// between a and b.
func diff(a, b *snapshot) []netip.Prefix {
	var out []netip.Prefix
	for ea := range a.entries() {
		if eb, ok := b.exact(ea.l.Prefix); !ok || !sameListing(&ea.l, &eb.l) {
			out = append(out, ea.l.Prefix)
		}
	}
	for eb := range b.entries() {
		if _, ok := a.exact(eb.l.Prefix); !ok {
			out = append(out, eb.l.Prefix)
		}
	}
	return out
}

// diffOf is diff for a rebuild that knows the only prefixes whose listing
// may have changed.
func diffOf(a, b *snapshot, maybe []netip.Prefix) []netip.Prefix {
	seen := make(map[netip.Prefix]bool, len(maybe))
	var out []netip.Prefix
	for _, p := range maybe {
		if seen[p] {
			continue
		}
		seen[p] = true
		ea, inA := a.exact(p)
		eb, inB := b.exact(p)
		if inA != inB || inA && !sameListing(&ea.l, &eb.l) {
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
