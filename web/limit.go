package web

import (
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiter keeps one token bucket per client network. The map is bounded:
// when it is full, idle buckets go first, and if every bucket is busy the
// oldest half goes, so a flood of source addresses costs memory only up to
// max entries.
type limiter struct {
	every rate.Limit
	burst int
	max   int
	now   func() time.Time

	mu      sync.Mutex
	clients map[netip.Prefix]*bucket
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newLimiter(r rate.Limit, burst, max int, now func() time.Time) *limiter {
	if burst < 1 {
		burst = 1
	}
	return &limiter{every: r, burst: burst, max: max, now: now, clients: map[netip.Prefix]*bucket{}}
}

// clientKey groups a client: one IPv4 address, or one IPv6 /64 (a single
// host usually owns a whole /64 and could otherwise rotate through it).
func clientKey(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

// setLimit changes the rate and burst; a change starts every client
// afresh (it is rare: a reload).
func (l *limiter) setLimit(r rate.Limit, burst int) {
	burst = max(burst, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.every == r && l.burst == burst {
		return
	}
	l.every, l.burst = r, burst
	clear(l.clients)
}

// allow takes one token for the client, reporting whether it had one.
func (l *limiter) allow(ip netip.Addr) bool {
	k := clientKey(ip)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.clients[k]
	if !ok {
		if len(l.clients) >= l.max {
			l.evict(now)
		}
		b = &bucket{lim: rate.NewLimiter(l.every, l.burst)}
		l.clients[k] = b
	}
	b.seen = now
	return b.lim.AllowN(now, 1)
}

// evict drops buckets that have refilled (forgetting them changes nothing),
// then, if that freed too little, the least recently seen half.
func (l *limiter) evict(now time.Time) {
	for k, b := range l.clients {
		if b.lim.TokensAt(now) >= float64(l.burst) {
			delete(l.clients, k)
		}
	}
	if len(l.clients) < l.max*3/4 {
		return
	}
	var cutoff time.Time
	{
		times := make([]time.Time, 0, len(l.clients))
		for _, b := range l.clients {
			times = append(times, b.seen)
		}
		cutoff = median(times)
	}
	for k, b := range l.clients {
		if !b.seen.After(cutoff) {
			delete(l.clients, k)
		}
	}
}

func median(ts []time.Time) time.Time {
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	return ts[len(ts)/2]
}

// exhausted reports whether the client has no token left now, without
// taking one.
func (l *limiter) exhausted(ip netip.Addr) bool {
	k := clientKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.clients[k]
	return ok && b.lim.TokensAt(l.now()) < 1
}

func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}

// remoteIP is the client address of r. The service answers the client that
// connected; behind a reverse proxy every client shares the proxy's bucket.
func remoteIP(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.IPv4Unspecified()
	}
	return ip.WithZone("").Unmap()
}
