// Package iplist answers "is this IP on a local list, and under which
// entry?": an immutable set of IPv4 and IPv6 prefixes, each with a category
// and a comment, looked up by longest prefix match.
//
// A List is built once and then only read. Prefixes either nest or are
// disjoint, so the whole address space can be cut into ranges that each
// belong to exactly one innermost prefix (or to none); Build computes those
// ranges and Lookup finds the range holding an address by binary search.
// That costs a few dozen nanoseconds with 100k entries and never allocates.
package iplist

import (
	"cmp"
	"net/netip"
	"slices"
)

// Entry is one line of a list.
type Entry struct {
	Prefix   netip.Prefix // masked; IPv4 never in IPv4-mapped IPv6 form
	Category string       // may be empty: the list's own category applies
	Comment  string
}

// List is an immutable longest-prefix-match list. The zero value and a nil
// *List are empty lists.
type List struct {
	entries []Entry // distinct prefixes, ordered by address then length
	v4      table4
	v6      table6
}

// Build makes a list from entries. Prefixes are masked and IPv4-mapped
// IPv6 prefixes unmapped; invalid ones are skipped. When one prefix is
// given more than once, the last entry wins, so a line appended to a file
// overrides an earlier one.
func Build(entries []Entry) *List {
	type item struct {
		Entry
		order int
	}
	items := make([]item, 0, len(entries))
	for i, e := range entries {
		p, ok := Canonical(e.Prefix)
		if !ok {
			continue
		}
		e.Prefix = p
		items = append(items, item{e, i})
	}
	// By family, then start address, then shorter (enclosing) prefixes
	// first: the order the range sweep needs.
	slices.SortFunc(items, func(a, b item) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()); c != 0 {
			return c
		}
		return cmp.Compare(a.order, b.order)
	})
	l := &List{entries: make([]Entry, 0, len(items))}
	for i, it := range items {
		if i+1 < len(items) && items[i+1].Prefix == it.Prefix {
			continue // a later duplicate follows and wins
		}
		l.entries = append(l.entries, it.Entry)
	}
	l.build()
	return l
}

// Canonical masks p, drops an IPv6 zone and unmaps IPv4-mapped IPv6
// prefixes of /96 or longer (those that lie wholly inside ::ffff:0:0/96),
// as the lists hold them and the site's zone publishes them; false for an
// invalid prefix.
func Canonical(p netip.Prefix) (netip.Prefix, bool) {
	if !p.IsValid() {
		return netip.Prefix{}, false
	}
	a := p.Addr().WithZone("")
	bits := p.Bits()
	if a.Is4In6() && bits >= 96 {
		a, bits = a.Unmap(), bits-96
	}
	p, err := a.Prefix(bits)
	return p, err == nil
}

// Lookup returns the most specific entry whose prefix contains ip.
// IPv4-mapped IPv6 addresses are looked up as IPv4.
func (l *List) Lookup(ip netip.Addr) (Entry, bool) {
	if l == nil {
		return Entry{}, false
	}
	var i int32
	switch {
	case ip.Is4():
		i = l.v4.find(ip)
	case ip.Is4In6():
		i = l.v4.find(ip.Unmap())
	case ip.Is6():
		i = l.v6.find(ip)
	default:
		return Entry{}, false
	}
	if i < 0 {
		return Entry{}, false
	}
	return l.entries[i], true
}

// Contains reports whether any entry covers ip.
func (l *List) Contains(ip netip.Addr) bool {
	_, ok := l.Lookup(ip)
	return ok
}

// Len returns the number of distinct prefixes.
func (l *List) Len() int {
	if l == nil {
		return 0
	}
	return len(l.entries)
}

// Entries returns a copy of the entries, ordered by address.
func (l *List) Entries() []Entry {
	if l == nil {
		return nil
	}
	return slices.Clone(l.entries)
}

// build cuts each family's address space into ranges owned by one entry.
func (l *List) build() {
	n4, _ := slices.BinarySearchFunc(l.entries, true, func(e Entry, _ bool) int {
		if e.Prefix.Addr().Is4() {
			return -1
		}
		return 1
	})
	v4, v6 := make([]span, 0, n4), make([]span, 0, len(l.entries)-n4)
	for i, e := range l.entries {
		s := span{lo: fromAddr(e.Prefix.Addr()), idx: int32(i)}
		hostBits := e.Prefix.Addr().BitLen() - e.Prefix.Bits()
		s.hi = s.lo.or(u128max.shr(uint(128 - hostBits)))
		if e.Prefix.Addr().Is4() {
			v4 = append(v4, s)
		} else {
			v6 = append(v6, s)
		}
	}
	r4 := sweep(v4, u128{lo: 1<<32 - 1})
	l.v4.r = make([]range4, len(r4))
	for i, r := range r4 {
		l.v4.r[i] = range4{start: uint32(r.start.lo), idx: r.idx}
	}
	l.v4.first16 = index16(len(r4), func(i int) uint32 { return uint32(r4[i].start.lo >> 16) })
	l.v6.r = sweep(v6, u128max)
	l.v6.first16 = index16(len(l.v6.r), func(i int) uint32 { return uint32(l.v6.r[i].start.hi >> 48) })
}

// span is one prefix as an inclusive address range, for the sweep.
type span struct {
	lo, hi u128
	idx    int32
}

// sweep turns prefixes sorted by (start, length) into the start of each
// range of addresses and the entry owning it (-1: none). The first range
// always starts at address 0, so every address falls in some range; last
// is the family's highest address.
func sweep(spans []span, last u128) []range6 {
	// Each prefix opens a range and closes one at most.
	out := make([]range6, 1, 2*len(spans)+1)
	out[0].idx = -1
	emit := func(start u128, idx int32) {
		n := len(out) - 1
		if out[n].start == start {
			out[n].idx = idx // an inner prefix starting where its parent does
			if n > 0 && out[n-1].idx == idx {
				out = out[:n]
			}
			return
		}
		if out[n].idx == idx {
			return
		}
		out = append(out, range6{start: start, idx: idx})
	}
	var stack []span
	// pop closes the innermost open prefix: the addresses after it
	// belong to the prefix enclosing it, if any.
	pop := func() {
		top := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if top.hi == last {
			return
		}
		owner := int32(-1)
		if len(stack) > 0 {
			owner = stack[len(stack)-1].idx
		}
		emit(top.hi.add1(), owner)
	}
	for _, s := range spans {
		for len(stack) > 0 && stack[len(stack)-1].hi.less(s.lo) {
			pop()
		}
		emit(s.lo, s.idx)
		stack = append(stack, s)
	}
	for len(stack) > 0 {
		pop()
	}
	return out
}

// A range runs from its start to the next range's start and belongs to
// entry idx (-1: to none). The start and the owner sit side by side so the
// last step of a search reads one cache line.
type range4 struct {
	start uint32
	idx   int32
}

type range6 struct {
	start u128
	idx   int32
}

// Below this many ranges a plain binary search is as fast and the 256 KiB
// index is not worth it.
const index16Min = 1024

// index16 maps the top 16 bits h of an address to the ranges that can
// hold it: [first16[h]-1, first16[h+1]), where top(i) is the top 16 bits
// of range i's start. It turns a search over all ranges into one over the
// few that share those bits.
func index16(n int, top func(i int) uint32) []uint32 {
	if n < index16Min {
		return nil
	}
	first16 := make([]uint32, 1<<16+1)
	j := 0
	for h := range uint32(1 << 16) {
		for j < n && top(j) < h {
			j++
		}
		first16[h] = uint32(j)
	}
	first16[1<<16] = uint32(n)
	return first16
}

// window returns the index range [lo, lo+n) to search for an address with
// top bits h. The range holding it starts at or before the first range of
// its /16 (range 0 starts at address 0), so the window opens one earlier.
func window(first16 []uint32, h uint32, total int) (lo, n int) {
	if first16 == nil {
		return 0, total
	}
	lo = int(first16[h])
	if lo > 0 {
		lo--
	}
	return lo, int(first16[h+1]) - lo
}

type table4 struct {
	r       []range4
	first16 []uint32
}

func (t *table4) find(ip netip.Addr) int32 {
	if len(t.r) == 0 {
		return -1
	}
	b := ip.As4()
	x := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	lo, n := window(t.first16, x>>16, len(t.r))
	// The last range in the window starting at or before x.
	s := t.r[lo : lo+n]
	for len(s) > 1 {
		half := len(s) / 2
		if s[half].start <= x {
			s = s[half:]
		} else {
			s = s[:half]
		}
	}
	return s[0].idx
}

type table6 struct {
	r       []range6
	first16 []uint32
}

func (t *table6) find(ip netip.Addr) int32 {
	if len(t.r) == 0 {
		return -1
	}
	x := fromAddr(ip)
	lo, n := window(t.first16, uint32(x.hi>>48), len(t.r))
	s := t.r[lo : lo+n]
	for len(s) > 1 {
		half := len(s) / 2
		if !x.less(s[half].start) {
			s = s[half:]
		} else {
			s = s[:half]
		}
	}
	return s[0].idx
}

// u128 is an address as a number; IPv4 addresses use the low 32 bits.
type u128 struct{ hi, lo uint64 }

var u128max = u128{^uint64(0), ^uint64(0)}

func fromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])}
	}
	b := a.As16()
	var u u128
	for i := range 8 {
		u.hi = u.hi<<8 | uint64(b[i])
		u.lo = u.lo<<8 | uint64(b[i+8])
	}
	return u
}

func (u u128) less(v u128) bool { return u.hi < v.hi || u.hi == v.hi && u.lo < v.lo }
func (u u128) or(v u128) u128   { return u128{u.hi | v.hi, u.lo | v.lo} }

func (u u128) add1() u128 {
	if u.lo == ^uint64(0) {
		return u128{u.hi + 1, 0}
	}
	return u128{u.hi, u.lo + 1}
}

// shr shifts right by n (0..128).
func (u u128) shr(n uint) u128 {
	switch {
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{0, u.hi >> (n - 64)}
	case n == 0:
		return u
	}
	return u128{u.hi >> n, u.lo>>n | u.hi<<(64-n)}
}
