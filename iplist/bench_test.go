package iplist

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

// list100k is shaped like a real local list: mostly single addresses,
// some /24s and a few wider networks, IPv4 and IPv6, spread over the
// whole address space.
func list100k(r *rand.Rand) []Entry {
	entries := make([]Entry, 100_000)
	for i := range entries {
		var p netip.Prefix
		if i%5 == 0 {
			var b [16]byte
			b[0], b[1] = 0x20, byte(r.UintN(256))
			for j := 2; j < 16; j++ {
				b[j] = byte(r.UintN(256))
			}
			bits := []int{128, 128, 64, 48}[r.IntN(4)]
			p, _ = netip.AddrFrom16(b).Prefix(bits)
		} else {
			a := netip.AddrFrom4([4]byte{byte(1 + r.IntN(223)), byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256))})
			bits := []int{32, 32, 32, 32, 32, 32, 24, 24, 16, 8}[r.IntN(10)]
			p, _ = a.Prefix(bits)
		}
		entries[i] = Entry{Prefix: p, Category: "spam-source"}
	}
	return entries
}

// queries mixes listed and unlisted addresses.
func queries(r *rand.Rand, entries []Entry, v6 bool) []netip.Addr {
	qs := make([]netip.Addr, 0, 4096)
	for len(qs) < cap(qs) {
		e := entries[r.IntN(len(entries))]
		if e.Prefix.Addr().Is6() != v6 {
			continue
		}
		qs = append(qs, randomQuery(r, []Entry{e}))
	}
	return qs
}

func benchLookup(b *testing.B, v6 bool) {
	r := rand.New(rand.NewPCG(100, 100))
	entries := list100k(r)
	l := Build(entries)
	qs := queries(r, entries, v6)
	hits := 0
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := l.Lookup(qs[i&4095]); ok {
			hits++
		}
		i++
	}
	b.ReportMetric(float64(hits)/float64(i), "hit-ratio")
}

func BenchmarkLookup100k(b *testing.B)   { benchLookup(b, false) }
func BenchmarkLookup100kV6(b *testing.B) { benchLookup(b, true) }

func BenchmarkLookup100kParallel(b *testing.B) {
	r := rand.New(rand.NewPCG(100, 100))
	entries := list100k(r)
	l := Build(entries)
	qs := queries(r, entries, false)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.Lookup(qs[i&4095])
			i += 7
		}
	})
}

func BenchmarkParse100k(b *testing.B) {
	r := rand.New(rand.NewPCG(100, 100))
	var sb strings.Builder
	for _, e := range list100k(r) {
		fmt.Fprintf(&sb, "%s %s # added by hand\n", e.Prefix, e.Category)
	}
	text := sb.String()
	b.ReportAllocs()
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		if _, err := Parse(strings.NewReader(text), "bench"); err != nil {
			b.Fatal(err)
		}
	}
}
