package policy

import (
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"
)

// CodeRule maps a DNS list's answer codes to a category and weight. Parse
// its key with ParseCode, then set Category and Weight.
type CodeRule struct {
	Category string
	Weight   float64

	key    string
	lo, hi netip.Addr // exact, range and CIDR rules
	mask   byte       // bitmask rules: last octet AND mask != 0
	span   uint64     // addresses covered, for ordering; bitmask rules sort last
}

// Key is the code as written: "127.0.0.2", "127.0.0.4-127.0.0.7",
// "127.0.0.0/24" or "&4".
func (r CodeRule) Key() string { return r.key }

var (
	loopback8  = netip.MustParsePrefix("127.0.0.0/8")
	errorCodes = netip.MustParsePrefix("127.255.255.0/24")
)

// ParseCode parses an answer code key: an address ("127.0.0.2"), a range
// ("127.0.0.4-127.0.0.7"), a network ("127.0.0.0/24") or a bitmask of the
// last octet ("&4"). Codes lie in 127.0.0.0/8 and outside 127.255.255.0/24,
// where lists answer errors. The rule has no category or weight yet.
func ParseCode(s string) (CodeRule, error) {
	r := CodeRule{key: s}
	inRange := func(a netip.Addr) error {
		if !a.Is4() || !loopback8.Contains(a) {
			return fmt.Errorf("%s is outside 127.0.0.0/8, where list answers are", a)
		}
		if errorCodes.Contains(a) {
			return fmt.Errorf("%s is in 127.255.255.0/24, which lists use for errors (never a listing)", a)
		}
		return nil
	}
	switch {
	case strings.HasPrefix(s, "&"):
		n, err := strconv.ParseUint(strings.TrimSpace(s[1:]), 0, 8)
		if err != nil || n == 0 {
			return r, fmt.Errorf("bitmask %q must be &N with N from 1 to 255", s)
		}
		r.mask = byte(n)
		r.span = math.MaxUint64 - 256 + uint64(bits.OnesCount8(r.mask))
		return r, nil
	case strings.Contains(s, "/"):
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return r, fmt.Errorf("%q is not a network: %w", s, err)
		}
		if !pfx.Addr().Is4() || pfx.Bits() < 8 || !loopback8.Contains(pfx.Addr()) {
			return r, fmt.Errorf("network %s must lie inside 127.0.0.0/8", s)
		}
		pfx = pfx.Masked()
		r.lo = pfx.Addr()
		r.span = 1 << (32 - pfx.Bits())
		r.hi = addOffset(r.lo, uint32(r.span-1))
		return r, nil
	case strings.Contains(s, "-"):
		a, b, _ := strings.Cut(s, "-")
		lo, err1 := netip.ParseAddr(strings.TrimSpace(a))
		hi, err2 := netip.ParseAddr(strings.TrimSpace(b))
		if err1 != nil || err2 != nil {
			return r, fmt.Errorf("range %q must be two addresses such as \"127.0.0.4-127.0.0.7\"", s)
		}
		if err := inRange(lo); err != nil {
			return r, err
		}
		if err := inRange(hi); err != nil {
			return r, err
		}
		if hi.Less(lo) {
			return r, fmt.Errorf("range %q ends before it starts", s)
		}
		r.lo, r.hi = lo, hi
		r.span = uint64(u32(hi)-u32(lo)) + 1
		return r, nil
	default:
		a, err := netip.ParseAddr(s)
		if err != nil {
			return r, fmt.Errorf("%q is not an answer code: use an address, a range a-b, a network a/n or a bitmask &N", s)
		}
		if err := inRange(a); err != nil {
			return r, err
		}
		r.lo, r.hi, r.span = a, a, 1
		return r, nil
	}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addOffset(a netip.Addr, n uint32) netip.Addr {
	v := u32(a) + n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (r *CodeRule) matches(code netip.Addr) bool {
	code = code.Unmap()
	if !code.Is4() || r.span == 0 {
		return false
	}
	if r.mask != 0 {
		return code.As4()[3]&r.mask != 0
	}
	return !code.Less(r.lo) && !r.hi.Less(code)
}

// codeMatch is the outcome of mapping a list's answer codes.
type codeMatch struct {
	code     netip.Addr
	category string
	weight   float64
}

// mostSpecific returns the rule that matches code and covers the fewest
// addresses (exact codes, then the smallest range or network, then the
// bitmask with the fewest bits; equal ones by key), or nil.
func mostSpecific(rules []CodeRule, code netip.Addr) *CodeRule {
	var best *CodeRule
	for i := range rules {
		r := &rules[i]
		if !r.matches(code) {
			continue
		}
		if best == nil || r.span < best.span || r.span == best.span && r.key < best.key {
			best = r
		}
	}
	return best
}

// match maps a list's answer codes to one category and weight. Each code
// takes the most specific rule that matches it; of several codes, the one
// with the largest absolute weight names the hit. A code no rule matches
// is still a listing, with the list's own category and weight: the list
// said "listed", and a new code a list starts to use should not silently
// let clients in. An admin who wants a code ignored maps it to weight 0.
func (l *List) match(codes []netip.Addr) codeMatch {
	var best codeMatch
	for i, c := range codes {
		m := codeMatch{code: c, category: l.Category, weight: l.Weight}
		if r := mostSpecific(l.Codes, c); r != nil {
			m.category, m.weight = r.Category, r.Weight
		}
		if i == 0 || math.Abs(m.weight) > math.Abs(best.weight) {
			best = m
		}
	}
	if len(codes) == 0 {
		best = codeMatch{category: l.Category, weight: l.Weight}
	}
	return best
}

// Match reports what the list makes of a DNS answer's codes: the code that
// names the hit, its category and its weight.
func (l *List) Match(codes []netip.Addr) (code netip.Addr, category string, weight float64) {
	m := l.match(codes)
	return m.code, m.category, m.weight
}
