// Package cache keeps recent lookup answers in memory: a sharded LRU with a
// lifetime per entry (the DNS TTL of the answer), a bounded size, hit, miss
// and eviction counters, and at most one load in flight per key so that
// concurrent checks of one IP share one DNS query. A "not listed" answer
// is an entry like any other, kept for the negative TTL its caller gives.
//
// Each shard is a hashicorp/golang-lru/v2 simplelru behind its own mutex;
// keys are spread over the shards by hash, so a hit only contends with
// other operations on the same shard. The cache runs no goroutines of its
// own: expired entries are dropped when they are read or when their shard
// needs room, loads run on the caller's goroutine, and the clock that
// expires entries is refreshed by a one-shot timer only while the cache is
// in use.
package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Shards are kept at least this large when the count is automatic, so a
// small cache stays close to one exact LRU.
const minShardSize = 128

// maxShards bounds the automatic shard count on very large machines.
const maxShards = 256

// Options configure a Cache.
type Options struct {
	// Size is the most entries the cache holds; it must be positive (the
	// caller gives it: [cache] size for the engine's cache, so the one
	// default is the config's). Each shard holds Size/Shards (rounded up), so eviction is LRU per
	// shard, not across the whole cache.
	Size int
	// Shards is the number of independently locked parts, rounded up to
	// a power of two. 0 picks one from GOMAXPROCS and Size.
	Shards int
}

// Stats are the cache's counters since it was made.
type Stats struct {
	Hits      uint64 // Get or Load answered from the cache
	Misses    uint64 // not present or expired
	Evictions uint64 // live entries pushed out to make room
	Entries   int    // entries held now (expired ones count until dropped)
}

// ErrLoadPanicked is what callers waiting on a load get when the load
// function panicked; the panic itself goes on up the loading goroutine.
var ErrLoadPanicked = errors.New("cache: load panicked")

type entry[V any] struct {
	v   V
	exp int64 // clock value at which the entry expires
}

// call is one load in flight; waiters block on done.
type call[V any] struct {
	done chan struct{}
	v    V
	ttl  time.Duration
	err  error
	// leaderCanceled: the load failed because the loading caller's own
	// context ended; waiters whose context is still live load again
	// rather than inherit someone else's cancellation.
	leaderCanceled bool
	// forgotten (guarded by the shard mutex): Remove or Purge ran while
	// the load was in flight, so its answer may predate the change and
	// must not be stored.
	forgotten bool
}

type shard[K comparable, V any] struct {
	mu        sync.Mutex
	lru       *simplelru.LRU[K, entry[V]]
	inflight  map[K]*call[V]
	hits      atomic.Uint64
	misses    atomic.Uint64
	evictions atomic.Uint64
	// Keep neighbouring shards' locks and counters off this cache line
	// pair (adjacent-line prefetch makes 128 the useful unit).
	_ [128 - 48]byte
}

// Cache is a TTL-aware sharded LRU. The zero value is not usable; use New.
// All methods are safe for concurrent use.
type Cache[K comparable, V any] struct {
	shards   []shard[K, V]
	shift    uint // hash >> shift selects the shard
	perShard int
	hash     func(K) uint64
	clk      *coarseClock
	now      func() int64 // tests replace the clock; nil: clk
}

// clockTick bounds how far the cache's clock may lag behind real time, and
// so how long past its TTL an entry may be served. DNS TTLs are seconds to
// hours (and min_ttl keeps them at a minute by default), so a tenth of a
// second does not matter; not reading the system clock on every hit does.
const clockTick = 100 * time.Millisecond

// coarseClock is a monotonic clock read from memory. A read that finds it
// older than clockTick reads the system clock and arms a one-shot timer
// that marks it old again after clockTick; an idle cache has no timer
// pending and nothing running.
type coarseClock struct {
	epoch time.Time
	now   atomic.Int64 // nanoseconds since epoch
	fresh atomic.Bool  // now is less than clockTick old
	timer *time.Timer
}

func newCoarseClock() *coarseClock {
	k := &coarseClock{epoch: time.Now()}
	// The closure holds the clock, not the cache, so a pending timer
	// never keeps a dropped cache alive.
	k.timer = time.AfterFunc(time.Hour, func() { k.fresh.Store(false) })
	k.timer.Stop()
	return k
}

func (k *coarseClock) read() int64 {
	if k.fresh.Load() {
		return k.now.Load()
	}
	now := int64(time.Since(k.epoch))
	// Never move back: a reader that read the system clock earlier may
	// get here after one that read it later.
	for old := k.now.Load(); now > old && !k.now.CompareAndSwap(old, now); {
		old = k.now.Load()
	}
	// Only the reader that marks the clock fresh arms the timer, and the
	// flag is cleared only when the timer fires, so the timer is never
	// reset while pending.
	if k.fresh.CompareAndSwap(false, true) {
		k.timer.Reset(clockTick)
	}
	return now
}

// New makes a cache. It panics if opts.Size is not positive: a cache
// without room is a caller's mistake, not something to guess a size for.
func New[K comparable, V any](opts Options) *Cache[K, V] {
	size := opts.Size
	if size <= 0 {
		panic(fmt.Sprintf("cache: Options.Size must be positive, got %d", size))
	}
	n := shardCount(size, opts.Shards)
	seed := maphash.MakeSeed()
	c := &Cache[K, V]{
		shards:   make([]shard[K, V], n),
		shift:    uint(64 - bits.TrailingZeros(uint(n))),
		perShard: (size + n - 1) / n,
		// maphash.Comparable does not allocate for the keys used here
		// (netip.Addr, strings and structs of them; see the tests).
		hash: func(k K) uint64 { return maphash.Comparable(seed, k) },
		clk:  newCoarseClock(),
	}
	for i := range c.shards {
		c.shards[i].lru = newLRU[K, V](c.perShard)
	}
	return c
}

func newLRU[K comparable, V any](size int) *simplelru.LRU[K, entry[V]] {
	l, err := simplelru.NewLRU[K, entry[V]](size, nil)
	if err != nil {
		// Only a non-positive size fails, and size is at least 1 here.
		panic(fmt.Sprintf("cache: %v", err))
	}
	return l
}

// shardCount returns a power of two.
func shardCount(size, want int) int {
	if want > 0 {
		return 1 << bits.Len(uint(want-1))
	}
	// Several shards per P keep two goroutines on different keys from
	// meeting on one lock most of the time.
	n := 1 << bits.Len(uint(4*runtime.GOMAXPROCS(0)-1))
	for n > 1 && (n > maxShards || size/n < minShardSize) {
		n /= 2
	}
	return n
}

func (c *Cache[K, V]) shardFor(key K) *shard[K, V] {
	return &c.shards[c.shardIndex(key)]
}

func (c *Cache[K, V]) shardIndex(key K) uint64 {
	return c.hash(key) >> c.shift & uint64(len(c.shards)-1)
}

func (c *Cache[K, V]) clock() int64 {
	if c.now != nil {
		return c.now()
	}
	return c.clk.read()
}

// expiry returns the clock value at which an entry stored now for ttl ends.
func expiry(now int64, ttl time.Duration) int64 {
	if int64(ttl) > math.MaxInt64-now {
		return math.MaxInt64
	}
	return now + int64(ttl)
}

// Get returns the live value for key. Expired entries are misses and are
// dropped.
func (c *Cache[K, V]) Get(key K) (V, bool) {
	s := c.shardFor(key)
	now := c.clock()
	s.mu.Lock()
	e, ok := s.lru.Get(key)
	if ok {
		if e.exp > now {
			s.mu.Unlock()
			s.hits.Add(1)
			return e.v, true
		}
		s.lru.Remove(key)
	}
	s.mu.Unlock()
	s.misses.Add(1)
	var zero V
	return zero, false
}

// Peek returns the live value for key, like Get, but counts only a hit:
// a caller that goes on to Load after a miss has the miss counted there,
// once. It never waits for a load in flight.
func (c *Cache[K, V]) Peek(key K) (V, bool) {
	s := c.shardFor(key)
	now := c.clock()
	s.mu.Lock()
	if e, ok := s.lru.Get(key); ok && e.exp > now {
		s.mu.Unlock()
		s.hits.Add(1)
		return e.v, true
	}
	s.mu.Unlock()
	var zero V
	return zero, false
}

// Set stores v for ttl. A ttl <= 0 stores nothing and drops any value held
// for key, since the caller has said the answer must not be reused.
func (c *Cache[K, V]) Set(key K, v V, ttl time.Duration) {
	s := c.shardFor(key)
	now := c.clock()
	s.mu.Lock()
	if ttl <= 0 {
		s.lru.Remove(key)
	} else {
		c.add(s, key, v, now, ttl)
	}
	s.mu.Unlock()
}

// add stores an entry; s.mu must be held.
func (c *Cache[K, V]) add(s *shard[K, V], key K, v V, now int64, ttl time.Duration) {
	if s.lru.Len() >= c.perShard && !s.lru.Contains(key) {
		// Room is needed: an expired entry at the cold end goes first and
		// is not an eviction of anything still useful.
		if _, old, ok := s.lru.GetOldest(); ok && old.exp <= now {
			s.lru.RemoveOldest()
		}
	}
	if s.lru.Add(key, entry[V]{v: v, exp: expiry(now, ttl)}) {
		s.evictions.Add(1)
	}
}

// Load returns the cached value for key or, on a miss, calls load and
// caches what it returns for the ttl it returns. Concurrent Loads of one key
// share a single call of load: the first caller runs it on its own
// goroutine with its own ctx, the others wait for it or for their own ctx to
// end. A load that fails because the loading caller's ctx ended is retried
// by waiters whose ctx is still live. Errors, and values with ttl <= 0, are
// handed to every waiting caller but not stored.
//
// cached reports whether v came from the cache rather than from a load
// made for this call (shared or not).
func (c *Cache[K, V]) Load(ctx context.Context, key K, load func(ctx context.Context) (V, time.Duration, error)) (v V, cached bool, err error) {
	s := c.shardFor(key)
	counted := false
	for {
		now := c.clock()
		s.mu.Lock()
		if e, ok := s.lru.Get(key); ok {
			if e.exp > now {
				s.mu.Unlock()
				if !counted {
					s.hits.Add(1)
				}
				return e.v, true, nil
			}
			s.lru.Remove(key)
		}
		if !counted {
			s.misses.Add(1)
			counted = true
		}
		if cl, ok := s.inflight[key]; ok {
			s.mu.Unlock()
			select {
			case <-cl.done:
				if cl.leaderCanceled && ctx.Err() == nil {
					continue
				}
				return cl.v, false, cl.err
			case <-ctx.Done():
				var zero V
				return zero, false, ctx.Err()
			}
		}
		cl := &call[V]{done: make(chan struct{})}
		if s.inflight == nil {
			s.inflight = make(map[K]*call[V])
		}
		s.inflight[key] = cl
		s.mu.Unlock()
		c.run(ctx, s, key, cl, load)
		return cl.v, false, cl.err
	}
}

// run calls load for the in-flight call cl and publishes its result, also
// when load panics so that waiters are never left blocked.
func (c *Cache[K, V]) run(ctx context.Context, s *shard[K, V], key K, cl *call[V], load func(ctx context.Context) (V, time.Duration, error)) {
	returned := false
	defer func() {
		if !returned {
			var zero V
			cl.v, cl.err = zero, ErrLoadPanicked
		}
		now := c.clock()
		s.mu.Lock()
		if s.inflight[key] == cl {
			delete(s.inflight, key)
		}
		if returned && cl.err == nil && cl.ttl > 0 && !cl.forgotten {
			c.add(s, key, cl.v, now, cl.ttl)
		}
		s.mu.Unlock()
		close(cl.done)
	}()
	cl.v, cl.ttl, cl.err = load(ctx)
	if cl.err != nil && ctx.Err() != nil {
		cl.leaderCanceled = true
	}
	returned = true
}

// Remove drops key. A load of key in flight still answers its callers but
// its result is not stored, so nothing older than the Remove survives it.
func (c *Cache[K, V]) Remove(key K) {
	s := c.shardFor(key)
	s.mu.Lock()
	s.lru.Remove(key)
	if cl, ok := s.inflight[key]; ok {
		cl.forgotten = true
		delete(s.inflight, key)
	}
	s.mu.Unlock()
}

// Purge drops every entry, and keeps loads in flight from storing their
// results. The counters are kept.
func (c *Cache[K, V]) Purge() {
	for i := range c.shards {
		s := &c.shards[i]
		// A fresh LRU rather than emptying the old one: Go maps do not
		// shrink, and a purge is when memory should come back.
		l := newLRU[K, V](c.perShard)
		s.mu.Lock()
		s.lru = l
		for k, cl := range s.inflight {
			cl.forgotten = true
			delete(s.inflight, k)
		}
		s.mu.Unlock()
	}
}

// Len returns the number of entries held, including expired ones that
// have not been dropped yet.
func (c *Cache[K, V]) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}

// Stats returns the counters and the current number of entries.
func (c *Cache[K, V]) Stats() Stats {
	var st Stats
	for i := range c.shards {
		s := &c.shards[i]
		st.Hits += s.hits.Load()
		st.Misses += s.misses.Load()
		st.Evictions += s.evictions.Load()
	}
	st.Entries = c.Len()
	return st
}

// Clamp bounds a TTL to [minTTL, maxTTL]; a maxTTL <= 0 means no upper
// bound, and minTTL wins if the two cross. Callers clamp DNS TTLs with the
// configured min_ttl and max_ttl so that a TTL of 0 does not defeat the
// cache and a week-long one does not pin a stale answer.
func Clamp(ttl, minTTL, maxTTL time.Duration) time.Duration {
	if maxTTL > 0 && ttl > maxTTL {
		ttl = maxTTL
	}
	if ttl < minTTL {
		ttl = minTTL
	}
	return ttl
}
