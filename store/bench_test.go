package store

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit/benchcpu"
)

// benchStore has n listings: host listings in 10.0.0.0/8, /24 networks in
// 172.16.0.0/12, and IPv6 /48s and hosts.
func benchStore(b *testing.B, n int) *Store {
	b.Helper()
	s := openTest(b, Options{PollInterval: -1})
	ctx := context.Background()
	tx, err := s.db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	now := millis(time.Now())
	for i := range n {
		var p string
		switch i % 4 {
		case 0:
			p = fmt.Sprintf("10.%d.%d.%d/32", i>>16&255, i>>8&255, i&255)
		case 1:
			p = fmt.Sprintf("172.%d.%d.0/24", 16+i>>16&15, i>>8&255)
		case 2:
			p = fmt.Sprintf("2001:db8:%x::/48", i&0xffff)
		case 3:
			p = fmt.Sprintf("2001:db9::%x:%x/128", i>>16, i&0xffff)
		}
		if _, err := tx.Exec(`INSERT OR IGNORE INTO listings (prefix, category, listed_at) VALUES (?, 'zombie', ?)`,
			netip.MustParsePrefix(p).Masked().String(), now); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	if err := s.refresh(ctx); err != nil {
		b.Fatal(err)
	}
	return s
}

func BenchmarkLookup(b *testing.B) {
	s := benchStore(b, 100000)
	for _, tc := range []struct{ name, ip string }{
		{"v4-host-hit", "10.0.0.4"},
		{"v4-network-hit", "172.16.0.77"},
		{"v4-miss", "192.0.2.1"},
		{"v6-hit", "2001:db8:5::1"},
		{"v6-miss", "2001:dba::1"},
	} {
		ip := netip.MustParseAddr(tc.ip)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.Lookup(ip)
			}
		})
	}
	b.Run("parallel", func(b *testing.B) {
		ip := netip.MustParseAddr("172.16.0.77")
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				s.Lookup(ip)
			}
		})
	})
}

func BenchmarkCreateRequest(b *testing.B) {
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	}
	b.Run("serial", func(b *testing.B) {
		s := openTest(b, Options{PollInterval: -1})
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.7", Email: "owner@example.org", Reason: "fixed"}); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("parallel", func(b *testing.B) {
		s := openTest(b, Options{PollInterval: -1})
		ctx := context.Background()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.7", Email: "owner@example.org", Reason: "fixed"}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		report(b)
	})
}

// BenchmarkRecordDecision is the mail path's cost: a non-blocking enqueue.
func BenchmarkRecordDecision(b *testing.B) {
	s := openTest(b, Options{PollInterval: -1})
	d := sampleDecision("bench", time.Now())
	b.ReportAllocs()
	for b.Loop() {
		s.RecordDecision(d)
	}
}

// BenchmarkDecisionWriter is what the writer sustains: decisions recorded
// and written in its batched transactions, waiting for it every 1024 so
// none is dropped.
func BenchmarkDecisionWriter(b *testing.B) {
	s := openTest(b, Options{PollInterval: -1})
	d := sampleDecision("", time.Now())
	refs := make([]string, 1024)
	for i := range refs {
		refs[i] = fmt.Sprint("bench-", i)
	}
	i := 0
	for b.Loop() {
		d.Ref = refs[i%len(refs)]
		i++
		s.RecordDecision(d)
		if i%len(refs) == 0 {
			s.Flush()
		}
	}
	s.Flush()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
	if n := s.DroppedDecisions(); n > 0 {
		b.Fatalf("%d dropped", n)
	}
}

// BenchmarkDeferState is what delist-and-deliver adds to a reject by the
// site's list on the mail path: a lookup in memory, no allocation.
func BenchmarkDeferState(b *testing.B) {
	s := benchStore(b, 100000)
	s.SetSelfService(SelfService{Categories: []string{"zombie"}, Quota: 2, Window: 90 * 24 * time.Hour})
	ip := netip.MustParseAddr("10.0.0.4")
	if ok, _ := s.DeferState(ip); !ok {
		b.Fatal("not self-removable")
	}
	b.ReportAllocs()
	for b.Loop() {
		s.DeferState(ip)
	}
}

// BenchmarkRecordTrapHit is one trap hit that extends a listing: one
// transaction with its fsync.
func BenchmarkRecordTrapHit(b *testing.B) {
	s := openTest(b, Options{PollInterval: -1})
	ctx := context.Background()
	r := TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64}
	i := 0
	for b.Loop() {
		i++
		if _, err := s.RecordTrapHit(ctx, TrapHit{IP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8 & 7), byte(i)}), HELO: "bot.example", Trap: "t@example.org"}, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRebuild is a change of one of 100,000 listings (the write with
// its fsync included) and the rebuild of the snapshot after it, as a write
// through the store or the poll of another process's change does it.
func BenchmarkRebuild(b *testing.B) {
	s := benchStore(b, 100000)
	ctx := context.Background()
	cpu := benchcpu.Start()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := s.db.Exec(`UPDATE listings SET reason = ? WHERE prefix = '10.0.0.4/32'`, fmt.Sprint("changed ", i)); err != nil {
			b.Fatal(err)
		}
		if err := s.refresh(ctx); err != nil {
			b.Fatal(err)
		}
	}
	cpu.Report(b, "rebuild")
	if l, _ := s.ListingFor(netip.MustParseAddr("10.0.0.4")); l.Reason != fmt.Sprint("changed ", i) {
		b.Fatalf("the snapshot has reason %q", l.Reason)
	}
}

// BenchmarkTrapFlood is a botnet hitting the traps from many addresses at
// once: 64 goroutines, as many RCPTs in flight, each recording a hit of an
// address of its own that lists it, against a store holding 100,000
// listings. Each call returns once the snapshot shows its listing. Reported:
// hits per second, the CPU time of a hit, and the median and 99th
// percentile of a call's latency.
func BenchmarkTrapFlood(b *testing.B) {
	const workers = 64
	s := benchStore(b, 100000)
	ctx := context.Background()
	r := TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64}
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	lat := make([]time.Duration, b.N)
	cpu := benchcpu.Start()
	b.ResetTimer()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				// 198.18.0.0/15, which the bench store does not list.
				ip := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)})
				start := time.Now()
				out, err := s.RecordTrapHit(ctx, TrapHit{IP: ip, HELO: "bot.example", Trap: "t@example.org"}, r)
				lat[i] = time.Since(start)
				if err != nil {
					b.Error(err)
					return
				}
				if _, ok := s.ListingFor(ip); !ok || !out.Listed {
					b.Errorf("%s: not listed when the hit returned", ip)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu.Report(b, "hit")
	b.ReportMetric(float64(s.rebuilds.ended)/float64(b.N), "rebuilds/hit")
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ms-p99")
}

// BenchmarkHistory is the history of one address among many, as the
// status page asks for it.
func BenchmarkHistory(b *testing.B) {
	s := openTest(b, Options{PollInterval: -1})
	ctx := context.Background()
	r := TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64}
	for i := range 2000 {
		if _, err := s.RecordTrapHit(ctx, TrapHit{Time: time.Now().Add(-time.Duration(i) * time.Minute), IP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), HELO: "bot.example", Trap: "t@example.org"}, r); err != nil {
			b.Fatal(err)
		}
	}
	ip := netip.MustParseAddr("198.18.3.7")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.History(ctx, ip, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}
