package zone

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
	"sort"
	"strconv"
)

// The tree holds the names of the zone below the apex, the records a
// secondary would hold: each node its own A+TXT (an address, or a name that
// stops a wildcard above it) and its wildcard child's A+TXT. The builder
// derives it from the listings (see the package comment for why it has the
// names it has); queries, transfers, IXFR differences and exports all walk
// the same tree, so they cannot disagree.

// sym is a label of a name in the tree: 0..255 are the decimal labels
// "0".."255" (IPv4 octets, and the IPv6 nibbles 0..9), symA..symA+5 the
// nibbles "a".."f". Any other label is not in the tree.
type sym = uint16

const symA sym = 256

func nibbleSym(n uint) sym {
	if n < 10 {
		return sym(n)
	}
	return symA + sym(n-10)
}

func symNibble(s sym) (uint, bool) {
	switch {
	case s < 10:
		return uint(s), true
	case s >= symA && s < symA+6:
		return uint(s-symA) + 10, true
	}
	return 0, false
}

// appendSym appends the label text of s.
func appendSym(b []byte, s sym) []byte {
	if s >= symA {
		return append(b, byte('a'+s-symA))
	}
	return strconv.AppendUint(b, uint64(s), 10)
}

// parseSym reads a label in wire form, any case. Decimal labels with a
// leading zero are not the labels of an address, so not in the tree.
func parseSym(l []byte) (sym, bool) {
	switch len(l) {
	case 1:
		c := l[0] | 0x20 // lower case; digits are unchanged
		switch {
		case c >= '0' && c <= '9':
			return sym(c - '0'), true
		case c >= 'a' && c <= 'f':
			return symA + sym(c-'a'), true
		}
	case 2, 3:
		if l[0] == '0' {
			return 0, false
		}
		v := 0
		for _, c := range l {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		if v <= 255 {
			return sym(v), true
		}
	}
	return 0, false
}

// rdata is the A and TXT of a listed name. txt is the raw text (no
// escapes), at most 255 bytes; empty: no TXT record.
type rdata struct {
	a   [4]byte
	txt string
}

// tnode is a name in the tree. own and wild index tree.data (-1: none);
// the children are edges[first:first+n], ordered by label.
type tnode struct {
	own, wild int32
	first     uint32
	n         uint16
}

type tedge struct {
	s    sym
	node int32
}

// tree is one build of the zone's names; never changed once built.
type tree struct {
	nodes []tnode
	edges []tedge
	data  []rdata
	root  int32
}

// child returns the child of n labelled s, or -1.
func (t *tree) child(n int32, s sym) int32 {
	nd := &t.nodes[n]
	e := t.edges[nd.first : nd.first+uint32(nd.n)]
	lo, hi := 0, len(e)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if e[m].s < s {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(e) && e[lo].s == s {
		return e[lo].node
	}
	return -1
}

// kids returns n's child edges.
func (t *tree) kids(n int32) []tedge {
	nd := &t.nodes[n]
	return t.edges[nd.first : nd.first+uint32(nd.n)]
}

// rdataAt returns the rdata at i, nil for -1.
func (t *tree) rdataAt(i int32) *rdata {
	if i < 0 {
		return nil
	}
	return &t.data[i]
}

// records counts the owner names with records: each has an A and, with a
// text, a TXT.
func (t *tree) records() (names, rrs int) {
	count := func(i int32) {
		if i >= 0 {
			names++
			rrs++
			if t.data[i].txt != "" {
				rrs++
			}
		}
	}
	for i := range t.nodes {
		count(t.nodes[i].own)
		count(t.nodes[i].wild)
	}
	return names, rrs
}

// walk calls fn for every node, parents before children, children in
// label order, with the labels from the top of the zone down to the node.
// A false return skips the node's children.
func (t *tree) walk(fn func(path []sym, n *tnode) bool) {
	var path []sym
	var visit func(n int32)
	visit = func(n int32) {
		if !fn(path, &t.nodes[n]) {
			return
		}
		for _, e := range t.kids(n) {
			path = append(path, e.s)
			visit(e.node)
			path = path[:len(path)-1]
		}
	}
	visit(t.root)
}

// Building.

// u128 is an address as a number aligned to the top: IPv4 addresses in
// the top 32 bits, so a label's bits are at the same place in both families.
type u128 struct{ hi, lo uint64 }

func fromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{hi: uint64(binary.BigEndian.Uint32(b[:])) << 32}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (u u128) compare(v u128) int {
	if c := cmp.Compare(u.hi, v.hi); c != 0 {
		return c
	}
	return cmp.Compare(u.lo, v.lo)
}

// field returns the n bits (n is 4 or 8) at pos from the top; pos is a
// multiple of n, so a field never straddles the halves.
func (u u128) field(pos, n uint) uint {
	if pos < 64 {
		return uint(u.hi>>(64-pos-n)) & (1<<n - 1)
	}
	return uint(u.lo>>(128-pos-n)) & (1<<n - 1)
}

func (u u128) withField(pos, n, v uint) u128 {
	if pos < 64 {
		sh := 64 - pos - n
		u.hi = u.hi&^((1<<n-1)<<sh) | uint64(v)<<sh
		return u
	}
	sh := 128 - pos - n
	u.lo = u.lo&^((1<<n-1)<<sh) | uint64(v)<<sh
	return u
}

// hostMask is the mask of the bits after the first bits.
func hostMask(bits int) u128 {
	switch {
	case bits <= 0:
		return u128{^uint64(0), ^uint64(0)}
	case bits < 64:
		return u128{^uint64(0) >> bits, ^uint64(0)}
	case bits < 128:
		return u128{0, ^uint64(0) >> (bits - 64)}
	}
	return u128{}
}

func (u u128) lastIn(bits int) u128 {
	m := hostMask(bits)
	return u128{u.hi | m.hi, u.lo | m.lo}
}

func (u u128) masked(bits int) u128 {
	m := hostMask(bits)
	return u128{u.hi &^ m.hi, u.lo &^ m.lo}
}

// enode is a listing (or a test point that must stay unlisted, d = -1)
// with the listings nested in it.
type enode struct {
	a    u128
	bits int
	d    int32
	kids []*enode

	// while compiling, and for the rbldnsd export
	prefix     netip.Prefix
	rd         rdata
	hole, test bool
	order      int // position in the input: the last of duplicates wins
}

func (e *enode) contains(a u128, bits int) bool {
	return e.bits <= bits && a.masked(e.bits) == e.a
}

// family is how one address family's names are laid out.
type family struct {
	step  int // bits per label
	depth int // labels of a full address
}

var (
	fam4 = family{step: 8, depth: 4}
	fam6 = family{step: 4, depth: 32}
)

// forest nests the entries of one family. entries must be sorted by
// address, then length, without duplicates.
func forest(entries []*enode) []*enode {
	var roots, stack []*enode
	for _, e := range entries {
		for len(stack) > 0 && !stack[len(stack)-1].contains(e.a, e.bits) {
			stack = stack[:len(stack)-1]
		}
		if len(stack) == 0 {
			roots = append(roots, e)
		} else {
			top := stack[len(stack)-1]
			top.kids = append(top.kids, e)
		}
		stack = append(stack, e)
	}
	return roots
}

// prune drops the entries that say what the entry around them says (the
// same interned data, or unlisted where nothing encloses them): they change
// no answer and would only add names.
func prune(list []*enode, around int32) []*enode {
	var out []*enode
	for _, e := range list {
		e.kids = prune(e.kids, e.d)
		if e.d == around {
			out = append(out, e.kids...)
		} else {
			out = append(out, e)
		}
	}
	return out
}

// side is one family's view of a node: the network it stands for, what
// the addresses in it answer unless an inner listing says otherwise, and
// the outermost listings inside it.
type side struct {
	ok  bool // the node's labels are a valid prefix in this family
	a   u128
	amb int32
	in  []*enode
}

// sub finds what of list (sorted, disjoint) concerns the network a/bits:
// the entry containing it, or else the entries inside it.
func sub(list []*enode, a u128, bits int) (*enode, []*enode) {
	i := sort.Search(len(list), func(i int) bool { return list[i].a.compare(a) >= 0 })
	if i < len(list) && list[i].a == a && list[i].bits <= bits {
		return list[i], nil
	}
	if i > 0 && list[i-1].contains(a, bits) {
		return list[i-1], nil
	}
	last := a.lastIn(bits)
	j := i + sort.Search(len(list)-i, func(k int) bool { return list[i+k].a.compare(last) > 0 })
	return nil, list[i:j]
}

// child is the side of the child labelled x (an octet or a nibble).
func (s *side) child(f family, depth int, x uint) side {
	a := s.a.withField(uint(depth*f.step), uint(f.step), x)
	bits := (depth + 1) * f.step
	amb, in := s.amb, s.in
	for {
		cont, inside := sub(in, a, bits)
		if cont == nil {
			return side{ok: true, a: a, amb: amb, in: inside}
		}
		amb, in = cont.d, cont.kids
	}
}

// appendChildren appends the labels (octets or nibbles) of the children
// that inner listings touch, or of every child.
func (s *side) appendChildren(dst []uint16, f family, depth int, all bool) []uint16 {
	if all {
		for x := range 1 << f.step {
			dst = append(dst, uint16(x))
		}
		return dst
	}
	pos := uint(depth * f.step)
	childBits := (depth + 1) * f.step
	last := -1
	for _, e := range s.in {
		x := int(e.a.field(pos, uint(f.step)))
		n := 1
		if e.bits < childBits {
			n = 1 << (childBits - e.bits)
		}
		for k := max(x, last+1); k < x+n; k++ {
			dst = append(dst, uint16(k))
		}
		last = max(last, x+n-1)
	}
	return dst
}

func hasHole(list []*enode) bool {
	for _, e := range list {
		if e.d < 0 || hasHole(e.kids) {
			return true
		}
	}
	return false
}

type builder struct {
	t       *tree
	pending []tedge  // the edges of the nodes being built, innermost last
	labels  []uint16 // the child labels of the nodes being built
}

// node builds the node at depth with the given family views and returns
// its index, or -1 when the name need not exist.
func (b *builder) node(depth int, v4, v6 side) int32 {
	own, wild := int32(-1), int32(-1)
	if v4.ok && depth == fam4.depth {
		own = v4.amb
	}
	if v6.ok && depth == fam6.depth {
		own = v6.amb
	}
	has4 := v4.ok && depth < fam4.depth
	has6 := v6.ok && depth < fam6.depth
	switch {
	// Where the labels are IPv4 too, the wildcard answers for IPv4: an
	// IPv6 wildcard here would match IPv4 addresses.
	case has4:
		wild = v4.amb
		// A wildcard above an unlisted address would list it: name the
		// listed ones one by one instead.
		if wild >= 0 && depth == fam4.depth-1 && hasHole(v4.in) {
			wild = -1
		}
	case has6:
		wild = v6.amb
		if wild >= 0 && depth == fam6.depth-1 && hasHole(v6.in) {
			wild = -1
		}
	}

	// The children to visit: where a listing inside makes a difference,
	// and every child of a family whose addresses the wildcard does not
	// answer for (they need names of their own to stop it).
	mark := len(b.labels)
	if has4 {
		b.labels = v4.appendChildren(b.labels, fam4, depth, wild != v4.amb)
	}
	mid := len(b.labels)
	if has6 {
		b.labels = v6.appendChildren(b.labels, fam6, depth, wild != v6.amb)
		for i := mid; i < len(b.labels); i++ {
			b.labels[i] = nibbleSym(uint(b.labels[i]))
		}
	}
	end := len(b.labels)

	edgeMark := len(b.pending)
	i, j := mark, mid
	for i < mid || j < end {
		var s sym
		switch {
		case j == end || i < mid && b.labels[i] < b.labels[j]:
			s = b.labels[i]
			i++
		case i == mid || b.labels[j] < b.labels[i]:
			s = b.labels[j]
			j++
		default:
			s = b.labels[i]
			i++
			j++
		}
		// A digit label continues both families.
		var c4, c6 side
		if has4 && s <= 255 {
			c4 = v4.child(fam4, depth, uint(s))
		}
		if n, ok := symNibble(s); has6 && ok {
			c6 = v6.child(fam6, depth, n)
		}
		idx := b.node(depth+1, c4, c6)
		if idx < 0 && wild >= 0 {
			// Nothing is listed below, but the wildcard would answer
			// there: a name with the wildcard's records stops it.
			idx = b.add(tnode{own: wild, wild: -1}, nil)
		}
		if idx >= 0 {
			b.pending = append(b.pending, tedge{s: s, node: idx})
		}
	}
	b.labels = b.labels[:mark]
	idx := int32(-1)
	if kids := b.pending[edgeMark:]; own >= 0 || wild >= 0 || len(kids) > 0 {
		idx = b.add(tnode{own: own, wild: wild}, kids)
	}
	b.pending = b.pending[:edgeMark]
	return idx
}

func (b *builder) add(n tnode, kids []tedge) int32 {
	n.first = uint32(len(b.t.edges))
	n.n = uint16(len(kids))
	b.t.edges = append(b.t.edges, kids...)
	b.t.nodes = append(b.t.nodes, n)
	return int32(len(b.t.nodes) - 1)
}

// buildTree builds the tree from the entries of both families. Each list
// is sorted by address, then length, without duplicates; d indexes data.
func buildTree(e4, e6 []*enode, data []rdata) *tree {
	b := &builder{t: &tree{data: data}}
	rootSide := func(entries []*enode) side {
		list := prune(forest(entries), -1)
		if len(list) == 1 && list[0].bits == 0 {
			return side{ok: true, amb: list[0].d, in: list[0].kids}
		}
		return side{ok: true, amb: -1, in: list}
	}
	root := b.node(0, rootSide(e4), rootSide(e6))
	if root < 0 {
		root = b.add(tnode{own: -1, wild: -1}, nil)
	}
	b.t.root = root
	return b.t
}

// sortEntries orders one family's entries by address, then length. Of
// entries with the same prefix a test point wins, else the last one given.
func sortEntries(es []*enode) []*enode {
	slices.SortFunc(es, func(x, y *enode) int {
		if c := x.a.compare(y.a); c != 0 {
			return c
		}
		if c := cmp.Compare(x.bits, y.bits); c != 0 {
			return c
		}
		return cmp.Compare(x.order, y.order)
	})
	out := es[:0]
	for _, e := range es {
		if n := len(out); n > 0 && out[n-1].a == e.a && out[n-1].bits == e.bits {
			if !out[n-1].test {
				out[n-1] = e
			}
			continue
		}
		out = append(out, e)
	}
	return out
}
