package dnsbl

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// resolvConf is where NewResolver finds the system's servers.
const resolvConf = "/etc/resolv.conf"

// udpSize is the EDNS0 buffer size advertised (the DNS Flag Day 2020
// value): large enough for any TXT reason, small enough not to fragment.
const udpSize = 1232

// Resolver sends DNS list queries to a fixed set of recursive servers. It
// is safe for concurrent use. Resolvers with the same servers share their
// sockets and their queries in flight (see client), so building a new one
// on every reload costs nothing.
type Resolver struct {
	servers []string // host:port
	timeout time.Duration
	c       *client
}

// client is what every Resolver for one list of servers shares.
type client struct {
	pools []*udpPool // one per server, in order
	// preferred is the index of the server that last gave a usable
	// answer; queries start there, so a dead first server costs one
	// timeout share once, not on every lookup.
	preferred atomic.Uint32
	next      atomic.Uint32 // the socket slot of the next batch: they take turns

	mu      sync.Mutex
	flights map[flightKey]*flight

	zones  sync.Map // zone -> zoneName
	nzones atomic.Int32
}

// flightKey is one DNS question; names (in wire form) are compared as
// built (lower-case labels of the address, the zone as configured).
type flightKey struct {
	wire  string
	qtype uint16
}

// flight is one question being asked; every lookup asking the same
// question meanwhile waits for its answer instead of sending another
// packet. The asking call lands it; the waiting calls get an event.
type flight struct {
	key    flightKey
	landed bool
	subs   []*call // the calls waiting for it
}

// fly makes c the asker of its question, and reports true, unless the
// question is in flight already: then c waits for that flight.
func (cl *client) fly(c *call) bool {
	key := flightKey{c.wire, c.qtype}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if f := cl.flights[key]; f != nil {
		f.subs = append(f.subs, c)
		c.f, c.owner = f, false
		return false
	}
	f := &flight{key: key}
	cl.flights[key] = f
	c.f, c.owner = f, true
	return true
}

// leave takes c off the flight it waits for. It reports false when the
// flight has landed already: its event for c is on the way.
func (cl *client) leave(c *call) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	f := c.f
	if f == nil || f.landed {
		return false
	}
	for i, s := range f.subs {
		if s == c {
			f.subs = append(f.subs[:i], f.subs[i+1:]...)
			break
		}
	}
	c.f = nil
	return true
}

// land ends flight f with its answer, for every call waiting for it. The
// answer is shared, so nobody may modify it.
func (cl *client) land(f *flight, m *msg, err error) {
	cl.mu.Lock()
	if f.landed {
		cl.mu.Unlock()
		return
	}
	f.landed = true
	if cl.flights[f.key] == f {
		delete(cl.flights, f.key)
	}
	subs := f.subs
	f.subs = nil
	cl.mu.Unlock()
	for _, c := range subs {
		// Never blocks: a call has one event coming at a time, and its
		// batch's channel has room for one per call.
		c.b.events <- event{c: c, m: m, err: err, flight: true}
	}
}

var clients struct {
	sync.Mutex
	m map[string]*client
}

// clientFor returns the shared client for servers, in this order.
func clientFor(servers []string) *client {
	key := strings.Join(servers, " ")
	clients.Lock()
	defer clients.Unlock()
	if clients.m == nil {
		clients.m = map[string]*client{}
	}
	c := clients.m[key]
	if c == nil {
		c = &client{flights: map[flightKey]*flight{}}
		for _, s := range servers {
			c.pools = append(c.pools, poolFor(s))
		}
		clients.m[key] = c
	}
	return c
}

// NewResolver returns a resolver that asks servers ("192.0.2.53",
// "192.0.2.53:5353", "::1", "[::1]:53", "unbound:53"; port 53 unless
// given), or the nameservers of /etc/resolv.conf when servers is empty.
// timeout is the time a lookup may take when its Query gives none; it must
// be positive (the caller gives it: [dns] timeout, whose default is the
// config's, so mail never waits for resolv.conf's 5 s).
func NewResolver(servers []string, timeout time.Duration) (*Resolver, error) {
	return newResolver(servers, timeout, resolvConf)
}

func newResolver(servers []string, timeout time.Duration, conf string) (*Resolver, error) {
	var addrs []string
	if len(servers) == 0 {
		cc, err := dns.ClientConfigFromFile(conf)
		if err != nil {
			return nil, fmt.Errorf("dnsbl: no servers configured and reading %s: %w", conf, err)
		}
		for _, s := range cc.Servers {
			a, err := serverAddr(s, cc.Port)
			if err != nil {
				return nil, fmt.Errorf("dnsbl: nameserver in %s: %w", conf, err)
			}
			addrs = append(addrs, a)
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("dnsbl: no servers configured and no nameserver in %s", conf)
		}
	} else {
		for _, s := range servers {
			a, err := serverAddr(s, "53")
			if err != nil {
				return nil, fmt.Errorf("dnsbl: server %q: %w", s, err)
			}
			addrs = append(addrs, a)
		}
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("dnsbl: the lookup timeout must be positive, got %v", timeout)
	}
	return &Resolver{servers: addrs, timeout: timeout, c: clientFor(addrs)}, nil
}

// serverAddr turns "host", "host:port", an IPv6 literal with or without
// brackets, or "[v6]:port" into a dialable host:port.
func serverAddr(s, defaultPort string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty address")
	}
	if defaultPort == "" {
		defaultPort = "53"
	}
	// A bare IPv6 literal ("::1", "fe80::1%eth0") has colons but no port.
	if ip, err := netip.ParseAddr(s); err == nil {
		return net.JoinHostPort(ip.String(), defaultPort), nil
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		ip, err := netip.ParseAddr(s[1 : len(s)-1])
		if err != nil {
			return "", fmt.Errorf("bad IPv6 address: %w", err)
		}
		return net.JoinHostPort(ip.String(), defaultPort), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(s, ":") {
			return "", fmt.Errorf("want host, host:port or [IPv6]:port: %w", err)
		}
		host, port = s, defaultPort
	}
	if host == "" {
		return "", errors.New("missing host")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("bad port %q", port)
	}
	return net.JoinHostPort(host, port), nil
}

// Servers returns the host:port addresses the resolver asks, in order.
func (r *Resolver) Servers() []string { return slices.Clone(r.servers) }

// Lookup asks q.Zone about q.IP and classifies the answer. It never
// returns a Listed status for an answer that is a list error, and it
// returns within q.Timeout (or the resolver's timeout) and ctx. It is a
// Batch of one.
func (r *Resolver) Lookup(ctx context.Context, q Query) Result {
	b := r.start(ctx, time.Time{}, []Query{q}, kindLookup)
	defer b.Close()
	_, res, _ := b.Next(time.Time{})
	return res
}

// lookupDeadline is when a lookup with this timeout must end: timeout from
// now, or ctx's deadline if that comes first. The lookup carries it along
// with ctx (which only tells of cancellation then) instead of deriving a
// context for it: a context with a timer per lookup costs more than the
// rest of the lookup's bookkeeping.
func lookupDeadline(ctx context.Context, timeout time.Duration) time.Time {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

// prepare checks q, writes the name to ask into wire (in wire form) and
// returns its length and the lookup's timeout.
func (r *Resolver) prepare(q Query, wire *[255]byte) (n int, timeout time.Duration, err error) {
	if !q.IP.IsValid() {
		return 0, 0, errors.New("dnsbl: invalid IP address")
	}
	ip := q.IP
	if !q.KeepMapped {
		ip = ip.Unmap()
	}
	z := trimDot(q.Zone)
	if z == "" {
		return 0, 0, errors.New("dnsbl: empty zone")
	}
	zw, ok := r.c.zoneWire(z)
	b := appendAddressWire(wire[:0], ip)
	// The name as text is the address's labels, each with its dot (as
	// long as they are in wire form), the zone and the root's dot: at
	// most 254 bytes.
	if !ok || len(b)+len(z)+1 > 254 || len(b)+len(zw) > len(wire) {
		return 0, 0, errors.New("dnsbl: zone is not a valid domain name")
	}
	n = len(b) + copy(wire[len(b):], zw)
	timeout = q.Timeout
	if timeout <= 0 {
		timeout = r.timeout
	}
	return n, timeout, nil
}

// appendAddressWire appends the labels of ip's query name (see
// appendName) in wire form: each label after its length, no root.
func appendAddressWire(dst []byte, ip netip.Addr) []byte {
	start := len(dst)
	dst = append(dst, 0) // the first label's length, set below
	dst = appendName(dst, ip, "")
	// "4.3.2.1.": each dot becomes the length of the label after it, and
	// the last one goes (the zone comes after).
	at := start
	for i := start + 1; i < len(dst); i++ {
		if dst[i] == '.' {
			dst[at] = byte(i - at - 1)
			at = i
		}
	}
	return dst[:len(dst)-1]
}

// maxZones bounds the zones whose wire form a client keeps: the lists'
// zones, and those a caller asks about now and then.
const maxZones = 256

// zoneWire returns zone (without its trailing dot) in wire form, with
// the root label, and whether it is a valid domain name. A list's zone
// is the same on every lookup, so it is checked and packed once.
func (cl *client) zoneWire(zone string) (string, bool) {
	if v, ok := cl.zones.Load(zone); ok {
		z := v.(zoneName)
		return z.wire, z.ok
	}
	var z zoneName
	fqdn := zone + "."
	if _, ok := dns.IsDomainName(fqdn); ok {
		var buf [256]byte
		if n, err := dns.PackDomainName(fqdn, buf[:], 0, nil, false); err == nil {
			z = zoneName{wire: string(buf[:n]), ok: true}
		}
	}
	if cl.nzones.Add(1) <= maxZones {
		cl.zones.Store(zone, z)
	}
	return z.wire, z.ok
}

// zoneName is a zone checked and packed by zoneWire.
type zoneName struct {
	wire string
	ok   bool
}

// Reason asks for the TXT record under q's name: the text a list gives
// for a listing. It is the second half of a Lookup without NoTXT, for a
// caller that decides on the A answer at once and wants the reason later,
// away from the mail it was deciding about. ttl is how long the text may
// be kept: the lowest TTL of the TXT records, or the negative TTL when
// there are none (reason is then "").
func (r *Resolver) Reason(ctx context.Context, q Query) (reason string, ttl time.Duration, err error) {
	res := r.Reasons(ctx, []Query{q})[0]
	return res.Reason, res.TTL, res.Err
}

// textTTL is how long the text of a TXT answer may be kept: the lowest
// TTL of its TXT records, or the negative TTL when there are none.
func textTTL(m *msg) time.Duration {
	var ttl time.Duration
	first := true
	for _, rr := range m.answer {
		if rr.rtype == dns.TypeTXT {
			if d := time.Duration(rr.ttl) * time.Second; first || d < ttl {
				ttl, first = d, false
			}
		}
	}
	if first {
		ttl = negativeTTL(m)
	}
	return ttl
}

// classify turns a NOERROR or NXDOMAIN answer to an A query into a Result.
func classify(resp *msg) Result {
	if resp.rcode == dns.RcodeNameError {
		return Result{Status: NotListed, TTL: negativeTTL(resp)}
	}
	var codes, blocked, outside []netip.Addr
	minTTL := uint32(0)
	first := true
	for _, rr := range resp.answer {
		if rr.rtype != dns.TypeA || !rr.hasA {
			continue // a CNAME on the way, or DNSSEC records
		}
		ip := netip.AddrFrom4(rr.a)
		if ttl := rr.ttl; first || ttl < minTTL {
			minTTL, first = ttl, false
		}
		b := ip.As4()
		switch {
		case b[0] != 127:
			outside = append(outside, ip)
		case b[1] == 255 && b[2] == 255:
			blocked = append(blocked, ip)
		default:
			codes = append(codes, ip)
		}
	}
	// Any error code makes the whole answer an error, even when listing
	// codes come with it. A list that answers 127.255.255.x is saying it
	// did not really look the address up for us, and an address outside
	// 127/8 means something between us and the list rewrites answers; in
	// both cases the other records of the same answer are no more
	// trustworthy, and a wrong listing rejects legitimate mail, while a
	// list error only costs one list's opinion.
	var err error
	if len(blocked) > 0 {
		err = blockedError(blocked)
	}
	if len(outside) > 0 {
		e := fmt.Errorf("%w: %s (a resolver that rewrites NXDOMAIN, or a zone that is not a block list)",
			ErrNotLoopback, joinAddrs(outside))
		if err != nil {
			e = fmt.Errorf("%w; %w", err, e)
		}
		err = e
	}
	if err != nil {
		return Result{Status: Error, Err: err}
	}
	if len(codes) == 0 {
		// NODATA: the name exists (for example with a TXT record only),
		// but the list does not list the address.
		return Result{Status: NotListed, TTL: negativeTTL(resp)}
	}
	slices.SortFunc(codes, netip.Addr.Compare)
	codes = slices.Compact(codes)
	return Result{Status: Listed, Codes: codes, TTL: time.Duration(minTTL) * time.Second}
}

// blockedError explains 127.255.255.0/24 answers, with what Spamhaus says
// each of its codes means, since those are the ones seen in practice.
func blockedError(codes []netip.Addr) error {
	var b strings.Builder
	for i, ip := range codes {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(ip.String())
		switch ip.As4()[3] {
		case 252:
			b.WriteString(" (Spamhaus: typing error in the list's zone name)")
		case 254:
			b.WriteString(" (Spamhaus: query through a public/open resolver)")
		case 255:
			b.WriteString(" (Spamhaus: excessive number of queries)")
		}
	}
	return fmt.Errorf("%w: %s: list refuses this resolver (public/open resolver or query limit); use your own recursive resolver or the list's paid/registered access",
		ErrResolverBlocked, b.String())
}

func joinAddrs(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ", ")
}

// negativeTTL is how long NXDOMAIN or NODATA may be cached: per RFC 2308
// section 5 the lower of the SOA record's TTL and its MINIMUM field, or 0
// when the answer carries no SOA.
func negativeTTL(resp *msg) time.Duration {
	if resp.hasSOA {
		return time.Duration(min(resp.soaTTL, resp.soaMin)) * time.Second
	}
	return 0
}

// maxReason bounds a TXT reason, which ends up in logs and on pages.
const maxReason = 512

// reasonText joins the TXT records of an answer with a space; the strings
// of one record are concatenated, as a long text is split at 255 bytes.
func reasonText(resp *msg) string {
	var b []byte
	for _, rr := range resp.answer {
		if rr.rtype != dns.TypeTXT {
			continue
		}
		if len(b) > 0 {
			b = append(b, ' ')
		}
		b = append(b, rr.txt...)
	}
	return printable(string(b))
}

// printable makes a list's text safe to log and show: valid UTF-8, control
// characters (CR, LF, NUL...) as spaces, trimmed, at most maxReason bytes.
func printable(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > maxReason {
		cut := maxReason
		for cut > 0 && !isRuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

func isRuneStart(c byte) bool { return c&0xc0 != 0x80 }

// minRetry is the least time left for which a lookup asks again after
// the query it joined ended without an answer.
const minRetry = 50 * time.Millisecond

// lookupEnded is the error of a lookup whose context or time ended.
func lookupEnded(ctx context.Context, tries int, took time.Duration, qtype uint16) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("dnsbl: lookup canceled: %w", ctx.Err())
	}
	return fmt.Errorf("%w (%s query, %d attempt(s) in %v)", ErrTimeout, dns.TypeToString[qtype], tries, took.Round(time.Millisecond))
}

// How a lookup asks (see Batch): the servers in turn, starting with the
// preferred one, until one gives a usable answer (NOERROR or NXDOMAIN,
// matching the question). After a timeout, SERVFAIL, REFUSED, another
// error rcode or a network error it tries the next server; each attempt
// gets an equal share of the time left, so a silent server cannot use up
// the time of the ones after it, and one server is asked twice: a lost UDP
// packet is the commonest failure, and a second server is not there to
// cover it. A truncated UDP answer is asked again over TCP within the same
// attempt. A mismatched answer over TCP, or answer records for another
// name, are not retried: they are returned as ErrMismatch. (Over UDP a
// datagram for another question is dropped and the attempt keeps waiting;
// see transport.go.)

// longAgo is a deadline in the past, to wake a blocked read.
var longAgo = time.Unix(1, 0)

// exchangeTCP is one query over a new TCP connection, for an answer too
// large for UDP: query is the packed query, and the answer must carry its
// ID. The attempt's deadline is set on the connection, and cancelling ctx,
// not only its deadline, ends a read that is waiting.
func exchangeTCP(ctx context.Context, deadline time.Time, query []byte, server string) (*msg, error) {
	// A TCP connect can hang, unlike a UDP "dial"; keep it to the
	// attempt's time (truncated answers are rare, so is this context).
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(longAgo) })
	defer stop()
	out := make([]byte, 2, 2+len(query))
	binary.BigEndian.PutUint16(out, uint16(len(query)))
	if _, err := conn.Write(append(out, query...)); err != nil {
		return nil, err
	}
	var n [2]byte
	if _, err := io.ReadFull(conn, n[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(n[:]))
	if _, err := io.ReadFull(conn, b); err != nil {
		return nil, err
	}
	resp, ok := unpack(b)
	if !ok {
		return nil, errBadMessage
	}
	if id := binary.BigEndian.Uint16(query); resp.id != id {
		return nil, fmt.Errorf("%w: id %d, sent %d", ErrMismatch, resp.id, id)
	}
	return resp, nil
}

func netError(err error) error {
	if errors.Is(err, ErrMismatch) {
		return err
	}
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		return ErrTimeout
	}
	// net.OpError's text names the server's address; keep only the cause.
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	return fmt.Errorf("dnsbl: network error: %w", err)
}

// check verifies that resp answers the question wire/qtype/IN: the
// question section, and every answer record owned by the name or by a
// CNAME target reached from it. The ID is matched already.
func check(resp *msg, wire string, qtype uint16) error {
	if !resp.response {
		return fmt.Errorf("%w: not a response", ErrMismatch)
	}
	if resp.questions == 0 && resp.rcode != dns.RcodeSuccess && resp.rcode != dns.RcodeNameError {
		// Some servers send REFUSED or FORMERR without the question;
		// such an answer carries no data, only its rcode.
		return nil
	}
	if resp.questions != 1 {
		return fmt.Errorf("%w: %d questions in the answer", ErrMismatch, resp.questions)
	}
	if !equalFold(resp.qname, wire) || resp.qtype != qtype || resp.qclass != dns.ClassINET {
		return fmt.Errorf("%w: answer is for another name, type or class", ErrMismatch)
	}
	var buf [4]string
	owners := append(buf[:0], wire)
	owned := func(n string) bool {
		for _, o := range owners {
			if equalFold(o, n) {
				return true
			}
		}
		return false
	}
	// Follow CNAMEs whatever their order in the section; bounded, as each
	// pass adds at least one owner or stops.
	for range len(resp.answer) {
		added := false
		for _, rr := range resp.answer {
			if rr.rtype == dns.TypeCNAME && owned(rr.name) && !owned(rr.target) {
				owners = append(owners, rr.target)
				added = true
			}
		}
		if !added {
			break
		}
	}
	for _, rr := range resp.answer {
		if !owned(rr.name) || rr.class != dns.ClassINET {
			return fmt.Errorf("%w: answer record for another name", ErrMismatch)
		}
	}
	return nil
}
