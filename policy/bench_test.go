package policy_test

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/dnsbl"
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

// BenchmarkBytesPerEntry fills the verdict cache with 1M client addresses
// through the engine's own scoring, with a real mix: one third listed (by
// one or two of three lists, with several codes), the rest clean, and for
// every listing its TXT text fetched into the text cache as a refusal
// would. It reports the heap the cache, the shared results and the texts
// hold per client. Run it with -benchtime=1x; the figure, not the time, is
// the result.
func BenchmarkBytesPerEntry(b *testing.B) {
	const n = 1_000_000
	s := dnstest.Start(b)
	e := newEngine(b, s, fmt.Sprintf("[cache]\nsize = %d\n", n+n/8)+threeListsConfig, policy.Deps{})
	codes := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.4"), netip.MustParseAddr("127.0.0.10")}
	lists := 0
	for _, l := range e.Lists() {
		if l.Kind == policy.KindDNS && l.IPv4 {
			lists++
		}
	}
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		res := make([]dnsbl.Result, lists)
		for i := range n {
			ip := netip.AddrFrom4([4]byte{byte(10 + i>>24), byte(i >> 16), byte(i >> 8), byte(i)})
			listed := i%3 == 0
			for k := range res {
				res[k] = dnsbl.Result{Status: dnsbl.NotListed, TTL: time.Hour}
				if listed && (k == 0 || (k == 1 && i%2 == 0)) {
					res[k] = dnsbl.Result{Status: dnsbl.Listed, Codes: codes[i%len(codes) : i%len(codes)+1], TTL: time.Hour,
						Reason: "Listed, see https://lists.example/query/ip/" + ip.String()}
				}
			}
			e.SetAnswers(ip, res)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := e.CacheStats().Entries; got != n {
			b.Fatalf("entries = %d, want %d", got, n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/entry")
		runtime.KeepAlive(e)
	}
}

// BenchmarkCheckCold is the cold path: every check a new client IP, three
// DNS lists, half the clients listed. It reports checks/s and the p50, p99
// and max time of a check. With one list answering after 250 ms, a check
// should take that list's time and next to nothing more: the texts are not
// fetched and the other lists are asked in parallel.
func BenchmarkCheckCold(b *testing.B) {
	for _, bb := range []struct {
		name  string
		delay time.Duration
	}{
		{"lists-at-once", 0},
		{"one-list-at-250ms", 250 * time.Millisecond},
	} {
		b.Run(bb.name, func(b *testing.B) {
			s := dnstest.Start(b)
			// Clients in 10.0.0.0/8 are listed, those in 11.0.0.0/8 are not.
			s.SetZone("10.zen.test", dnstest.Answer{A: []string{"127.0.0.4"}, TXT: []string{"exploited host"}, TTL: 3600})
			if bb.delay > 0 {
				s.SetZone("two.test", dnstest.Answer{Rcode: dns.RcodeNameError, Delay: bb.delay})
			}
			e := newEngine(b, s, "[policy]\ndeadline = \"2s\"\n"+threeListsConfig, policy.Deps{})
			var next atomic.Uint32
			var mu sync.Mutex
			var took []time.Duration
			const workers = 64 // sessions waiting on DNS
			b.SetParallelism(workers / runtime.GOMAXPROCS(0))
			var started atomic.Int64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				// Sessions arrive independently, not in waves: stagger
				// the workers over one slow answer's time.
				time.Sleep(time.Duration(started.Add(1)) * bb.delay / workers)
				var mine []time.Duration
				for pb.Next() {
					n := next.Add(1)
					ip := netip.AddrFrom4([4]byte{10 + byte(n%2), byte(n >> 16), byte(n >> 8), byte(n)})
					v := e.Check(context.Background(), ip)
					if v.Cached || len(v.Errors) > 0 {
						b.Errorf("check %s: %+v", ip, v)
						return
					}
					mine = append(mine, v.Duration)
				}
				mu.Lock()
				took = append(took, mine...)
				mu.Unlock()
			})
			b.StopTimer()
			slices.Sort(took)
			q := func(p float64) float64 {
				return float64(took[min(len(took)-1, int(p*float64(len(took))))]) / float64(time.Millisecond)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checks/s")
			b.ReportMetric(q(0.50), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(q(1), "max-ms")
		})
	}
}
