package policy_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/policy"
)

// benchEngine has the default ZEN list plus a file list, the usual shape.
func benchEngine(b *testing.B) (*policy.Engine, *dnstest.Server) {
	s := dnstest.Start(b)
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, TTL: 3600})
	return newEngine(b, s, zenConfig, policy.Deps{}), s
}

func BenchmarkCheckCached(b *testing.B) {
	e, _ := benchEngine(b)
	ip := netip.MustParseAddr("192.0.2.1")
	ctx := context.Background()
	if v := e.Check(ctx, ip); v.Action != policy.ActionAccept {
		b.Fatalf("verdict: %+v", v)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if v := e.Check(ctx, ip); !v.Cached {
				b.Fatal("not cached")
			}
		}
	})
}

func BenchmarkCheckCachedListed(b *testing.B) {
	e, _ := benchEngine(b)
	ip := netip.MustParseAddr("192.0.2.7")
	ctx := context.Background()
	if v := e.Check(ctx, ip); v.Action != policy.ActionReject {
		b.Fatalf("verdict: %+v", v)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if v := e.Check(ctx, ip); !v.Cached || v.Action != policy.ActionReject {
				b.Fatal("not cached")
			}
		}
	})
}

func BenchmarkCheckCachedManyIPs(b *testing.B) {
	e, _ := benchEngine(b)
	ctx := context.Background()
	ips := make([]netip.Addr, 1024)
	for i := range ips {
		ips[i] = netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		e.Check(ctx, ips[i])
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			e.Check(ctx, ips[i&1023])
			i++
		}
	})
}

func BenchmarkReply(b *testing.B) {
	e, _ := benchEngine(b)
	v := e.Check(context.Background(), netip.MustParseAddr("192.0.2.7"))
	b.ReportAllocs()
	for b.Loop() {
		e.Reply(&v)
	}
}
