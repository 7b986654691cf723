package dnsbl

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit/benchcpu"
)

// BenchmarkLookup asks the in-process DNS server about one address at a
// time: the cost of one lookup end to end, server included.
func BenchmarkLookup(b *testing.B) {
	s := dnstest.Start(b)
	listed := netip.MustParseAddr("192.0.2.2")
	s.Set(QueryName(listed, zone), dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{"listed"}})
	r := newTestResolver(b, 2*time.Second, s.Addr)
	for _, bb := range []struct {
		name string
		q    Query
		want Status
	}{
		{"clean", Query{Zone: zone, IP: netip.MustParseAddr("192.0.2.1")}, NotListed},
		{"listed", Query{Zone: zone, IP: listed, NoTXT: true}, Listed},
		{"listed+txt", Query{Zone: zone, IP: listed}, Listed},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu := benchcpu.Start()
			for b.Loop() {
				if res := r.Lookup(context.Background(), bb.q); res.Status != bb.want {
					b.Fatalf("Lookup = %v, %v", res.Status, res.Err)
				}
			}
			cpu.Report(b, "lookup")
		})
	}
}

// BenchmarkLookupParallel is the mail path under load: many sessions at
// once, every lookup about another address (a cold cache), so nothing is
// shared between them but the resolver.
func BenchmarkLookupParallel(b *testing.B) {
	for _, bb := range []struct {
		name   string
		listed bool
	}{
		{"clean", false},
		{"listed", true},
	} {
		b.Run(bb.name, func(b *testing.B) {
			s := dnstest.Start(b)
			want := NotListed
			if bb.listed {
				s.SetZone(zone, dnstest.Answer{A: []string{"127.0.0.2"}})
				want = Listed
			}
			r := newTestResolver(b, 2*time.Second, s.Addr)
			var next atomic.Uint32
			b.ReportAllocs()
			b.SetParallelism(8) // sessions waiting on DNS, not CPU-bound workers
			b.ResetTimer()
			cpu := benchcpu.Start()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := next.Add(1)
					ip := netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
					if res := r.Lookup(context.Background(), Query{Zone: zone, IP: ip, NoTXT: true}); res.Status != want {
						b.Errorf("Lookup(%s) = %v, %v", ip, res.Status, res.Err)
						return
					}
				}
			})
			cpu.Report(b, "lookup")
		})
	}
}
