package cache

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/blmilter/blmilter/internal/testkit"
)

// fakeClock drives entry expiry in tests without sleeping.
type fakeClock struct{ t atomic.Int64 }

func (f *fakeClock) now() int64              { return f.t.Load() }
func (f *fakeClock) advance(d time.Duration) { f.t.Add(int64(d)) }

func newTestCache[K comparable, V any](t *testing.T, opts Options) (*Cache[K, V], *fakeClock) {
	t.Helper()
	c := New[K, V](opts)
	clk := &fakeClock{}
	clk.t.Store(1)
	c.now = clk.now
	return c, clk
}

func addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

func TestClamp(t *testing.T) {
	tests := []struct {
		name               string
		ttl, minTTL, maxTT time.Duration
		want               time.Duration
	}{
		{"inside", 5 * time.Minute, time.Minute, time.Hour, 5 * time.Minute},
		{"zero raised to min", 0, time.Minute, time.Hour, time.Minute},
		{"negative raised to min", -time.Second, time.Minute, time.Hour, time.Minute},
		{"above max", 48 * time.Hour, time.Minute, time.Hour, time.Hour},
		{"no max", 48 * time.Hour, time.Minute, 0, 48 * time.Hour},
		{"min wins when crossed", 10 * time.Second, time.Minute, time.Second, time.Minute},
		{"at bounds", time.Hour, time.Minute, time.Hour, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Clamp(tt.ttl, tt.minTTL, tt.maxTT); got != tt.want {
				t.Errorf("Clamp(%v, %v, %v) = %v, want %v", tt.ttl, tt.minTTL, tt.maxTT, got, tt.want)
			}
		})
	}
}

func TestExpiry(t *testing.T) {
	tests := []struct {
		name    string
		ttl     time.Duration
		after   time.Duration
		wantHit bool
	}{
		{"fresh", 10 * time.Second, 0, true},
		{"just before expiry", 10 * time.Second, 10*time.Second - 1, true},
		{"at expiry", 10 * time.Second, 10 * time.Second, false},
		{"long after", 10 * time.Second, time.Hour, false},
		{"huge ttl does not overflow", time.Duration(1<<63 - 1), 100 * 24 * time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, clk := newTestCache[netip.Addr, string](t, Options{Size: 10})
			ip := addr(1)
			c.Set(ip, "listed", tt.ttl)
			clk.advance(tt.after)
			v, ok := c.Get(ip)
			if ok != tt.wantHit {
				t.Fatalf("Get after %v: hit=%v, want %v", tt.after, ok, tt.wantHit)
			}
			if ok && v != "listed" {
				t.Errorf("Get = %q, want %q", v, "listed")
			}
			if !ok && c.Len() != 0 {
				t.Errorf("expired entry still held after Get: Len = %d", c.Len())
			}
		})
	}
}

func TestSetNonPositiveTTLDropsValue(t *testing.T) {
	for _, ttl := range []time.Duration{0, -time.Second} {
		t.Run(ttl.String(), func(t *testing.T) {
			c, _ := newTestCache[string, int](t, Options{Size: 10})
			c.Set("k", 1, time.Minute)
			c.Set("k", 2, ttl)
			if v, ok := c.Get("k"); ok {
				t.Errorf("Get = %d after Set with ttl %v, want miss", v, ttl)
			}
		})
	}
}

func TestEvictionCounting(t *testing.T) {
	c, _ := newTestCache[int, int](t, Options{Size: 3, Shards: 1})
	for i := range 3 {
		c.Set(i, i, time.Minute)
	}
	// Touch 0 so that 1 is the least recently used.
	if _, ok := c.Get(0); !ok {
		t.Fatal("Get(0) missed")
	}
	c.Set(3, 3, time.Minute)
	if _, ok := c.Get(1); ok {
		t.Error("least recently used key 1 survived a full cache")
	}
	for _, k := range []int{0, 2, 3} {
		if _, ok := c.Get(k); !ok {
			t.Errorf("key %d evicted, want kept", k)
		}
	}
	if st := c.Stats(); st.Evictions != 1 || st.Entries != 3 {
		t.Errorf("after one eviction: %+v, want Evictions 1, Entries 3", st)
	}

	// An expired entry at the cold end makes room without counting as an
	// eviction: nothing useful was lost.
	c2, clk2 := newTestCache[int, int](t, Options{Size: 2, Shards: 1})
	c2.Set(1, 1, time.Second)
	c2.Set(2, 2, time.Hour)
	clk2.advance(2 * time.Second)
	c2.Set(3, 3, time.Hour)
	if st := c2.Stats(); st.Evictions != 0 || st.Entries != 2 {
		t.Errorf("expired entry replaced: %+v, want Evictions 0, Entries 2", st)
	}
	for _, k := range []int{2, 3} {
		if _, ok := c2.Get(k); !ok {
			t.Errorf("key %d lost, want kept", k)
		}
	}
}

func TestSizeBoundAcrossShards(t *testing.T) {
	c, _ := newTestCache[netip.Addr, int](t, Options{Size: 1000, Shards: 8})
	for i := range 10_000 {
		c.Set(addr(i), i, time.Minute)
	}
	// Each shard holds ceil(Size/Shards).
	if n := c.Len(); n > 1000 || n < 900 {
		t.Errorf("Len = %d after 10000 Sets into Size 1000, want about 1000 and never more", n)
	}
	if st := c.Stats(); st.Evictions != uint64(10_000-st.Entries) {
		t.Errorf("Evictions = %d, want %d (every Set beyond capacity evicts one)", st.Evictions, 10_000-st.Entries)
	}
}

func TestStatsHitsMisses(t *testing.T) {
	c, clk := newTestCache[string, int](t, Options{Size: 10})
	c.Get("a") // miss: absent
	c.Set("a", 1, time.Second)
	c.Get("a") // hit
	c.Get("a") // hit
	clk.advance(time.Second)
	c.Get("a") // miss: expired
	want := Stats{Hits: 2, Misses: 2, Evictions: 0, Entries: 0}
	if got := c.Stats(); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestRemoveAndPurge(t *testing.T) {
	tests := []struct {
		name string
		op   func(c *Cache[string, int])
		want map[string]bool // key -> still present
	}{
		{"remove one", func(c *Cache[string, int]) { c.Remove("b") }, map[string]bool{"a": true, "b": false, "c": true}},
		{"remove absent", func(c *Cache[string, int]) { c.Remove("zz") }, map[string]bool{"a": true, "b": true, "c": true}},
		{"purge", func(c *Cache[string, int]) { c.Purge() }, map[string]bool{"a": false, "b": false, "c": false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newTestCache[string, int](t, Options{Size: 100, Shards: 4})
			for i, k := range []string{"a", "b", "c"} {
				c.Set(k, i, time.Minute)
			}
			tt.op(c)
			n := 0
			for k, want := range tt.want {
				if _, ok := c.Get(k); ok != want {
					t.Errorf("%s present = %v, want %v", k, ok, want)
				}
				if want {
					n++
				}
			}
			if c.Len() != n {
				t.Errorf("Len = %d, want %d", c.Len(), n)
			}
			// The cache still works afterwards.
			c.Set("d", 4, time.Minute)
			if v, ok := c.Get("d"); !ok || v != 4 {
				t.Errorf("Get(d) after %s = %d, %v", tt.name, v, ok)
			}
		})
	}
}

func TestLoadCachesAndReportsCached(t *testing.T) {
	c, clk := newTestCache[netip.Addr, string](t, Options{Size: 10})
	var loads atomic.Int32
	load := func(context.Context) (string, time.Duration, error) {
		loads.Add(1)
		return "clean", time.Minute, nil
	}
	ctx := context.Background()
	ip := addr(7)
	for i, want := range []bool{false, true, true} {
		v, cached, err := c.Load(ctx, ip, load)
		if err != nil || v != "clean" || cached != want {
			t.Fatalf("Load #%d = %q, cached=%v, %v; want clean, cached=%v", i, v, cached, err, want)
		}
	}
	clk.advance(time.Minute)
	if _, cached, _ := c.Load(ctx, ip, load); cached {
		t.Error("Load after expiry reported cached")
	}
	if n := loads.Load(); n != 2 {
		t.Errorf("load called %d times, want 2", n)
	}
	if st := c.Stats(); st.Hits != 2 || st.Misses != 2 {
		t.Errorf("Stats = %+v, want 2 hits 2 misses", st)
	}
}

func TestLoadNotStored(t *testing.T) {
	boom := errors.New("SERVFAIL")
	tests := []struct {
		name string
		ttl  time.Duration
		err  error
	}{
		{"error", time.Minute, boom},
		{"zero ttl", 0, nil},
		{"negative ttl", -time.Second, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newTestCache[string, int](t, Options{Size: 10})
			var loads atomic.Int32
			load := func(context.Context) (int, time.Duration, error) {
				return int(loads.Add(1)), tt.ttl, tt.err
			}
			for i := 1; i <= 2; i++ {
				v, cached, err := c.Load(context.Background(), "k", load)
				if !errors.Is(err, tt.err) || cached || v != i {
					t.Fatalf("Load #%d = %d, cached=%v, err=%v; want %d, false, %v", i, v, cached, err, i, tt.err)
				}
			}
			if c.Len() != 0 {
				t.Errorf("Len = %d, want nothing stored", c.Len())
			}
		})
	}
}

// blockingLoad counts calls and holds each until release is closed.
type blockingLoad struct {
	calls   atomic.Int32
	release chan struct{}
	value   string
}

func (b *blockingLoad) load(ctx context.Context) (string, time.Duration, error) {
	b.calls.Add(1)
	select {
	case <-b.release:
		return b.value, time.Minute, nil
	case <-ctx.Done():
		return "", 0, ctx.Err()
	}
}

func TestLoadSharedByConcurrentCallers(t *testing.T) {
	const callers = 200
	c, _ := newTestCache[netip.Addr, string](t, Options{Size: 100})
	bl := &blockingLoad{release: make(chan struct{}), value: "listed"}
	ip := addr(42)

	type result struct {
		v      string
		cached bool
		err    error
	}
	results := make(chan result, callers)
	for range callers {
		go func() {
			v, cached, err := c.Load(context.Background(), ip, bl.load)
			results <- result{v, cached, err}
		}()
	}
	// Every caller has counted its miss, and a miss is counted under the
	// same lock that registers the load, so all of them are now sharing
	// the one load in flight.
	testkit.WaitFor(t, "all callers to miss", 5*time.Second, func() error { return testkit.Unless(c.Stats().Misses == callers, "not yet") })
	close(bl.release)
	for range callers {
		r := <-results
		if r.err != nil || r.v != "listed" || r.cached {
			t.Errorf("caller got %q, cached=%v, %v; want listed from the shared load", r.v, r.cached, r.err)
		}
	}
	if n := bl.calls.Load(); n != 1 {
		t.Errorf("load ran %d times for %d concurrent callers, want 1", n, callers)
	}
	if v, ok := c.Get(ip); !ok || v != "listed" {
		t.Errorf("Get after shared load = %q, %v", v, ok)
	}
}

func TestLoadManyKeysConcurrently(t *testing.T) {
	const keys, perKey = 50, 20
	c, _ := newTestCache[netip.Addr, int](t, Options{Size: 1000})
	var loads [keys]atomic.Int32
	start := make(chan struct{})
	var wg sync.WaitGroup
	for k := range keys {
		for range perKey {
			wg.Go(func() {
				<-start
				v, _, err := c.Load(context.Background(), addr(k), func(context.Context) (int, time.Duration, error) {
					loads[k].Add(1)
					time.Sleep(time.Millisecond) // keep the load in flight while others arrive
					return k, time.Minute, nil
				})
				if err != nil || v != k {
					t.Errorf("Load(%d) = %d, %v", k, v, err)
				}
			})
		}
	}
	close(start)
	wg.Wait()
	for k := range keys {
		if n := loads[k].Load(); n != 1 {
			t.Errorf("key %d loaded %d times, want 1", k, n)
		}
	}
}

func TestLoadWaiterHonoursOwnContext(t *testing.T) {
	c, _ := newTestCache[string, string](t, Options{Size: 10})
	bl := &blockingLoad{release: make(chan struct{}), value: "v"}

	leader := make(chan error, 1)
	go func() {
		_, _, err := c.Load(context.Background(), "k", bl.load)
		leader <- err
	}()
	testkit.WaitFor(t, "the load to start", 5*time.Second, func() error { return testkit.Unless(bl.calls.Load() == 1, "not yet") })

	ctx, cancel := context.WithCancel(context.Background())
	waiter := make(chan error, 1)
	go func() {
		_, _, err := c.Load(ctx, "k", bl.load)
		waiter <- err
	}()
	testkit.WaitFor(t, "the waiter to miss", 5*time.Second, func() error { return testkit.Unless(c.Stats().Misses == 2, "not yet") })
	cancel()
	select {
	case err := <-waiter:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled waiter got %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled waiter still blocked on someone else's load")
	}

	// The load itself goes on for its own caller and is stored.
	close(bl.release)
	if err := <-leader; err != nil {
		t.Errorf("leader: %v", err)
	}
	if v, ok := c.Get("k"); !ok || v != "v" {
		t.Errorf("Get = %q, %v; want the finished load stored", v, ok)
	}
	if n := bl.calls.Load(); n != 1 {
		t.Errorf("load ran %d times, want 1", n)
	}
}

func TestLoadLeaderCancelledWaiterLoadsAgain(t *testing.T) {
	c, _ := newTestCache[string, string](t, Options{Size: 10})
	bl := &blockingLoad{release: make(chan struct{}), value: "v"}

	ctx, cancel := context.WithCancel(context.Background())
	leader := make(chan error, 1)
	go func() {
		_, _, err := c.Load(ctx, "k", bl.load)
		leader <- err
	}()
	testkit.WaitFor(t, "the load to start", 5*time.Second, func() error { return testkit.Unless(bl.calls.Load() == 1, "not yet") })

	waiter := make(chan string, 1)
	go func() {
		v, _, err := c.Load(context.Background(), "k", bl.load)
		if err != nil {
			v = "error: " + err.Error()
		}
		waiter <- v
	}()
	testkit.WaitFor(t, "the waiter to miss", 5*time.Second, func() error { return testkit.Unless(c.Stats().Misses == 2, "not yet") })
	cancel()
	if err := <-leader; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled leader got %v, want context.Canceled", err)
	}
	// The waiter must not inherit the leader's cancellation: it loads anew.
	testkit.WaitFor(t, "the waiter's own load", 5*time.Second, func() error { return testkit.Unless(bl.calls.Load() == 2, "not yet") })
	close(bl.release)
	if v := <-waiter; v != "v" {
		t.Errorf("waiter got %q, want v from its own load", v)
	}
}

func TestLoadResultDroppedAfterRemoveOrPurge(t *testing.T) {
	tests := []struct {
		name string
		op   func(c *Cache[string, string])
	}{
		{"remove", func(c *Cache[string, string]) { c.Remove("k") }},
		{"purge", func(c *Cache[string, string]) { c.Purge() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newTestCache[string, string](t, Options{Size: 10})
			old := &blockingLoad{release: make(chan struct{}), value: "before"}
			done := make(chan string, 1)
			go func() {
				v, _, _ := c.Load(context.Background(), "k", old.load)
				done <- v
			}()
			testkit.WaitFor(t, "the load to start", 5*time.Second, func() error { return testkit.Unless(old.calls.Load() == 1, "not yet") })
			tt.op(c)

			// A Load after the invalidation does not join the old load.
			fresh := &blockingLoad{release: make(chan struct{}), value: "after"}
			close(fresh.release)
			if v, cached, err := c.Load(context.Background(), "k", fresh.load); v != "after" || cached || err != nil {
				t.Errorf("Load after %s = %q, %v, %v; want a fresh load", tt.name, v, cached, err)
			}

			close(old.release)
			if v := <-done; v != "before" {
				t.Errorf("old caller got %q, want its own result", v)
			}
			if v, _ := c.Get("k"); v != "after" {
				t.Errorf("cached %q, want the load made after %s (the older one must not overwrite it)", v, tt.name)
			}
		})
	}
}

func TestLoadPanicReleasesWaiters(t *testing.T) {
	c, _ := newTestCache[string, int](t, Options{Size: 10})
	started := make(chan struct{})
	release := make(chan struct{})
	leader := make(chan any, 1)
	go func() {
		defer func() { leader <- recover() }()
		c.Load(context.Background(), "k", func(context.Context) (int, time.Duration, error) {
			close(started)
			<-release
			panic("resolver bug")
		})
	}()
	<-started
	waiter := make(chan error, 1)
	go func() {
		_, _, err := c.Load(context.Background(), "k", func(context.Context) (int, time.Duration, error) {
			return 1, time.Minute, nil
		})
		waiter <- err
	}()
	testkit.WaitFor(t, "the waiter to miss", 5*time.Second, func() error { return testkit.Unless(c.Stats().Misses == 2, "not yet") })
	close(release)
	if p := <-leader; p != "resolver bug" {
		t.Errorf("leader recovered %v, want the load's panic to reach it", p)
	}
	select {
	case err := <-waiter:
		if !errors.Is(err, ErrLoadPanicked) {
			t.Errorf("waiter got %v, want ErrLoadPanicked", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter blocked forever after the load panicked")
	}
	// Nothing is left in flight.
	v, _, err := c.Load(context.Background(), "k", func(context.Context) (int, time.Duration, error) { return 2, time.Minute, nil })
	if err != nil || v != 2 {
		t.Errorf("Load after panic = %d, %v", v, err)
	}
}

func TestConcurrentMixedUse(t *testing.T) {
	// Run under -race: every operation at once on overlapping keys.
	const size = 500
	c := New[netip.Addr, int](Options{Size: size})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 5000 {
				ip := addr((i * (g + 1)) % 2000)
				switch i % 7 {
				case 0:
					c.Set(ip, i, time.Duration(i%3)*time.Second)
				case 1:
					c.Remove(ip)
				case 2:
					c.Load(context.Background(), ip, func(context.Context) (int, time.Duration, error) {
						return i, time.Minute, nil
					})
				case 3:
					if i%1000 == 3 {
						c.Purge()
					}
				default:
					c.Get(ip)
				}
			}
		})
	}
	wg.Wait()
	if n := c.Len(); n > size+len(c.shards) {
		t.Errorf("Len = %d, beyond Size %d", n, size)
	}
}

func TestShardSize(t *testing.T) {
	// The padding in shard assumes this size; a change to its fields
	// must change the padding too, or shards share cache lines again.
	if n := unsafe.Sizeof(shard[netip.Addr, *int]{}); n != 128 {
		t.Errorf("shard is %d bytes, want 128", n)
	}
}

// A cache without a size is the caller's mistake: New says so rather than
// picking a size of its own, which would be a second default beside the
// config's [cache] size.
func TestNewNeedsSize(t *testing.T) {
	for _, size := range []int{0, -1} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			defer func() {
				if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "Size must be positive") {
					t.Errorf("New with Size %d: panic %v, want one naming Size", size, p)
				}
			}()
			New[int, int](Options{Size: size})
		})
	}
}

func TestShardCount(t *testing.T) {
	tests := []struct {
		size, want, wantShards int
	}{
		{size: 1000, want: 1, wantShards: 1},
		{size: 1000, want: 3, wantShards: 4},
		{size: 1000, want: 16, wantShards: 16},
		{size: 10, want: 0, wantShards: 1}, // tiny caches stay one exact LRU
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("size%d_shards%d", tt.size, tt.want), func(t *testing.T) {
			c := New[int, int](Options{Size: tt.size, Shards: tt.want})
			if len(c.shards) != tt.wantShards {
				t.Errorf("%d shards, want %d", len(c.shards), tt.wantShards)
			}
		})
	}
	c := New[int, int](Options{Size: 1 << 20})
	if n := len(c.shards); n < 1 || n&(n-1) != 0 || n > maxShards {
		t.Errorf("automatic shard count %d, want a power of two in [1, %d]", n, maxShards)
	}
}

func TestKeysSpreadOverShards(t *testing.T) {
	// IPv4 clients often share their upper octets; they must still spread.
	c := New[netip.Addr, int](Options{Size: 1 << 20, Shards: 16})
	counts := make([]int, len(c.shards))
	for i := range 16_000 {
		counts[c.shardIndex(addr(i))]++
	}
	for i, n := range counts {
		if n < 500 || n > 1500 {
			t.Errorf("shard %d got %d of 16000 keys, want about 1000", i, n)
		}
	}
}

func TestGetHitDoesNotAllocate(t *testing.T) {
	tests := []struct {
		name string
		get  func() bool
	}{
		{"netip.Addr", func() func() bool {
			c := New[netip.Addr, *int](Options{Size: 100})
			ip := netip.MustParseAddr("2001:db8::1")
			c.Set(ip, new(int), time.Minute)
			return func() bool { _, ok := c.Get(ip); return ok }
		}()},
		{"struct of string and netip.Addr", func() func() bool {
			type key struct {
				zone string
				ip   netip.Addr
			}
			c := New[key, *int](Options{Size: 100})
			k := key{"zen.example.org", netip.MustParseAddr("192.0.2.1")}
			c.Set(k, new(int), time.Minute)
			return func() bool { _, ok := c.Get(k); return ok }
		}()},
		{"string", func() func() bool {
			c := New[string, *int](Options{Size: 100})
			c.Set("zen.example.org", new(int), time.Minute)
			return func() bool { _, ok := c.Get("zen.example.org"); return ok }
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !tt.get() {
				t.Fatal("Get missed")
			}
			if n := testing.AllocsPerRun(100, func() { tt.get() }); n != 0 {
				t.Errorf("Get hit allocates %.1f times, want 0", n)
			}
		})
	}
}

func TestCoarseClockKeepsUp(t *testing.T) {
	k := newCoarseClock()
	var maxLag time.Duration
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		got := k.read()
		lag := time.Since(k.epoch) - time.Duration(got)
		maxLag = max(maxLag, lag)
		time.Sleep(time.Millisecond)
	}
	// clockTick plus room for a late timer on a busy machine; a clock
	// that stopped would lag by the whole loop.
	if maxLag > clockTick+500*time.Millisecond {
		t.Errorf("clock lagged real time by %v, want about %v at most", maxLag, clockTick)
	}
}

func TestExpiryWithRealClock(t *testing.T) {
	c := New[string, int](Options{Size: 10})
	c.Set("a", 1, 50*time.Millisecond)
	if _, ok := c.Get("a"); !ok {
		t.Fatal("fresh entry missed")
	}
	testkit.WaitFor(t, "the entry to expire", 5*time.Second, func() error { _, ok := c.Get("a"); return testkit.Unless(!ok, "not yet") })
}

func TestNoGoroutinesStarted(t *testing.T) {
	before := runtime.NumGoroutine()
	c := New[string, int](Options{Size: 100})
	c.Set("a", 1, time.Millisecond)
	c.Load(context.Background(), "b", func(context.Context) (int, time.Duration, error) { return 1, time.Minute, nil })
	// The clock's timer runs its function on a goroutine of its own for a
	// moment when it fires; past that, nothing is left running.
	time.Sleep(3 * clockTick)
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("goroutines %d -> %d: the cache must not start any", before, after)
	}
}

func TestPeekCountsOnlyHits(t *testing.T) {
	c, clk := newTestCache[netip.Addr, string](t, Options{Size: 10})
	if _, ok := c.Peek(addr(1)); ok {
		t.Fatal("Peek of an empty cache found a value")
	}
	c.Set(addr(1), "listed", time.Minute)
	if v, ok := c.Peek(addr(1)); !ok || v != "listed" {
		t.Fatalf("Peek = %q, %v", v, ok)
	}
	clk.advance(time.Minute)
	if _, ok := c.Peek(addr(1)); ok {
		t.Fatal("Peek returned an expired value")
	}
	if st := c.Stats(); st.Hits != 1 || st.Misses != 0 {
		t.Errorf("Stats = %+v, want 1 hit and no miss", st)
	}
}
