package testkit

import (
	"math/rand/v2"
	"net/netip"
	"slices"
)

// ListingPrefixes returns n distinct prefixes the way a real block list's
// listings look: mostly single IPv4 addresses (70%), /24s (15%) and a few
// shorter IPv4 networks (5%), IPv6 addresses (5%) and IPv6 networks of /48
// to /64 (5%). Nothing is in 127.0.0.0/8, where the RFC 5782 test points
// are. The same seed gives the same prefixes.
func ListingPrefixes(n int, seed uint64) []netip.Prefix {
	rng := rand.New(rand.NewPCG(seed, 7))
	firstOctet := func() byte {
		o := 1 + rng.IntN(222) // 1..223 without 127
		if o >= 127 {
			o++
		}
		return byte(o)
	}
	seen := make(map[netip.Prefix]bool, n)
	out := make([]netip.Prefix, 0, n)
	for len(out) < n {
		var p netip.Prefix
		switch r := rng.IntN(100); {
		case r < 70:
			p = netip.PrefixFrom(netip.AddrFrom4([4]byte{firstOctet(), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))}), 32)
		case r < 85:
			p, _ = netip.AddrFrom4([4]byte{firstOctet(), byte(rng.IntN(256)), byte(rng.IntN(256)), 0}).Prefix(24)
		case r < 90:
			p, _ = netip.AddrFrom4([4]byte{firstOctet(), byte(rng.IntN(256)), byte(rng.IntN(256)), 0}).Prefix(20 + rng.IntN(4))
		case r < 95:
			b := [16]byte{0x2a, 0x02}
			for i := 2; i < 16; i++ {
				b[i] = byte(rng.IntN(256))
			}
			p = netip.PrefixFrom(netip.AddrFrom16(b), 128)
		default:
			b := [16]byte{0x2a, 0x02, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))}
			p, _ = netip.AddrFrom16(b).Prefix(48 + 4*rng.IntN(5))
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// Boundaries are the addresses where answers about prefixes may change:
// the first and last address of each prefix and the addresses just
// outside it, with also, sorted and without repeats. A test compares
// two servers' answers at these.
func Boundaries(prefixes []netip.Prefix, also ...netip.Addr) []netip.Addr {
	out := slices.Clone(also)
	for _, p := range prefixes {
		first := p.Masked().Addr()
		b := first.AsSlice()
		for i := p.Bits(); i < len(b)*8; i++ {
			b[i/8] |= 0x80 >> (i % 8)
		}
		last, _ := netip.AddrFromSlice(b)
		out = append(out, first, last)
		if prev := first.Prev(); prev.IsValid() {
			out = append(out, prev)
		}
		if next := last.Next(); next.IsValid() {
			out = append(out, next)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
