package zone

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// Stats are the server's counters since New, for metrics.
type Stats struct {
	Serial        uint32
	UDPQueries    uint64 // datagrams read
	TCPQueries    uint64 // messages read over TCP
	Listed        uint64 // answers with the A or TXT of a listing
	NXDomain      uint64
	NoData        uint64
	Refused       uint64 // names outside the zone
	Truncated     uint64 // UDP answers cut to the header: the client retries over TCP
	FormErr       uint64 // malformed or unsupported queries answered FORMERR or NOTIMP
	Dropped       uint64 // datagrams not answered: too short, or not a query
	Panics        uint64 // queries dropped by a panic
	AXFR          uint64
	IXFR          uint64 // IXFR answers with changes (IXFRFull of them sent the whole zone)
	IXFRFull      uint64
	XFRRefused    uint64 // transfers refused: not from a transfer network, or unsigned
	XFRFailed     uint64 // transfers cut off while sending
	TSIGRefused   uint64 // queries with a TSIG that did not verify
	TCPRefused    uint64 // connections closed at once: over the limits
	NotifyAcked   uint64
	NotifyGivenUp uint64 // NOTIFYs never acknowledged after every retry
}

type stats struct {
	udpQueries, tcpQueries                       atomic.Uint64
	listed, nxdomain, nodata, refused, truncated atomic.Uint64
	formErr, dropped, panics                     atomic.Uint64
	axfr, ixfr, ixfrFull, xfrRefused, xfrFailed  atomic.Uint64
	tsigRefused, tcpRefused                      atomic.Uint64
	notifyAcked, notifyGivenUp                   atomic.Uint64
}

func (s *stats) count(r reply) {
	switch {
	case r.rcode == dns.RcodeRefused:
		s.refused.Add(1)
	case r.rcode == dns.RcodeNameError:
		s.nxdomain.Add(1)
	case r.a != nil || r.txt != nil:
		s.listed.Add(1)
	case r.negSOA:
		s.nodata.Add(1)
	}
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Serial:     s.Serial(),
		UDPQueries: c.udpQueries.Load(), TCPQueries: c.tcpQueries.Load(),
		Listed: c.listed.Load(), NXDomain: c.nxdomain.Load(), NoData: c.nodata.Load(), Refused: c.refused.Load(),
		Truncated: c.truncated.Load(), FormErr: c.formErr.Load(), Dropped: c.dropped.Load(), Panics: c.panics.Load(),
		AXFR: c.axfr.Load(), IXFR: c.ixfr.Load(), IXFRFull: c.ixfrFull.Load(),
		XFRRefused: c.xfrRefused.Load(), XFRFailed: c.xfrFailed.Load(), TSIGRefused: c.tsigRefused.Load(),
		TCPRefused: c.tcpRefused.Load(), NotifyAcked: c.notifyAcked.Load(), NotifyGivenUp: c.notifyGivenUp.Load(),
	}
}

// limitListener closes connections beyond a total and a per-address
// limit as soon as they are accepted, so one client cannot hold them all.
type limitListener struct {
	net.Listener
	total, perIP int
	stats        *stats

	mu   sync.Mutex
	open int
	byIP map[netip.Addr]int
}

func newLimitListener(l net.Listener, total, perIP int, st *stats) *limitListener {
	return &limitListener{Listener: l, total: total, perIP: perIP, stats: st, byIP: map[netip.Addr]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteAddr(c.RemoteAddr())
		l.mu.Lock()
		if l.open >= l.total || l.byIP[ip] >= l.perIP {
			l.mu.Unlock()
			l.stats.tcpRefused.Add(1)
			c.Close()
			continue
		}
		l.open++
		l.byIP[ip]++
		l.mu.Unlock()
		return &limitConn{Conn: c, l: l, ip: ip}, nil
	}
}

type limitConn struct {
	net.Conn
	l    *limitListener
	ip   netip.Addr
	once sync.Once
}

func (c *limitConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		if c.l.byIP[c.ip]--; c.l.byIP[c.ip] == 0 {
			delete(c.l.byIP, c.ip)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
