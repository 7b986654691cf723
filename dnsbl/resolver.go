package dnsbl

import (
	"context"
	"errors"
	"fmt"
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
	tcp   *dns.Client
	// preferred is the index of the server that last gave a usable
	// answer; queries start there, so a dead first server costs one
	// timeout share once, not on every lookup.
	preferred atomic.Uint32

	mu      sync.Mutex
	flights map[flightKey]*flight
}

// flightKey is one DNS question; names are compared as built (lower-case
// labels of the address, the zone as configured).
type flightKey struct {
	name  string
	qtype uint16
}

// flight is one question being asked; everyone asking the same question
// meanwhile waits for its answer instead of sending another packet.
type flight struct {
	done chan struct{}
	resp *dns.Msg
	err  error
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
		c = &client{tcp: &dns.Client{Net: "tcp"}, flights: map[flightKey]*flight{}}
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
// returns within q.Timeout (or the resolver's timeout) and ctx.
func (r *Resolver) Lookup(ctx context.Context, q Query) Result {
	start := time.Now()
	res := r.lookup(ctx, q)
	res.Duration = time.Since(start)
	return res
}

func (r *Resolver) lookup(ctx context.Context, q Query) Result {
	name, timeout, err := r.prepare(q)
	if err != nil {
		return Result{Status: Error, Err: err}
	}
	deadline := lookupDeadline(ctx, timeout)
	resp, err := r.query(ctx, deadline, name, dns.TypeA)
	if err != nil {
		return Result{Status: Error, Err: err}
	}
	res := classify(resp)
	if res.Status == Listed && !q.NoTXT {
		// The reason is a courtesy: without it the listing stands.
		if txt, err := r.query(ctx, deadline, name, dns.TypeTXT); err == nil {
			res.Reason = reasonText(txt)
		}
	}
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

// prepare checks q and returns the name to ask and the lookup's timeout.
func (r *Resolver) prepare(q Query) (name string, timeout time.Duration, err error) {
	if !q.IP.IsValid() {
		return "", 0, errors.New("dnsbl: invalid IP address")
	}
	ip := q.IP
	if !q.KeepMapped {
		ip = ip.Unmap()
	}
	var buf [160]byte
	name = string(appendName(buf[:0], ip, q.Zone))
	if z := trimDot(q.Zone); z == "" {
		return "", 0, errors.New("dnsbl: empty zone")
	} else if _, ok := dns.IsDomainName(name); !ok || len(name) > 254 {
		return "", 0, errors.New("dnsbl: zone is not a valid domain name")
	}
	timeout = q.Timeout
	if timeout <= 0 {
		timeout = r.timeout
	}
	return name, timeout, nil
}

// Reason asks for the TXT record under q's name: the text a list gives
// for a listing. It is the second half of a Lookup without NoTXT, for a
// caller that decides on the A answer at once and wants the reason later,
// away from the mail it was deciding about. ttl is how long the text may
// be kept: the lowest TTL of the TXT records, or the negative TTL when
// there are none (reason is then "").
func (r *Resolver) Reason(ctx context.Context, q Query) (reason string, ttl time.Duration, err error) {
	name, timeout, err := r.prepare(q)
	if err != nil {
		return "", 0, err
	}
	resp, err := r.query(ctx, lookupDeadline(ctx, timeout), name, dns.TypeTXT)
	if err != nil {
		return "", 0, err
	}
	first := true
	for _, rr := range resp.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			if d := time.Duration(t.Hdr.Ttl) * time.Second; first || d < ttl {
				ttl, first = d, false
			}
		}
	}
	if first {
		ttl = negativeTTL(resp)
	}
	return reasonText(resp), ttl, nil
}

// classify turns a NOERROR or NXDOMAIN answer to an A query into a Result.
func classify(resp *dns.Msg) Result {
	if resp.Rcode == dns.RcodeNameError {
		return Result{Status: NotListed, TTL: negativeTTL(resp)}
	}
	var codes, blocked, outside []netip.Addr
	minTTL := uint32(0)
	first := true
	for _, rr := range resp.Answer {
		a, ok := rr.(*dns.A)
		if !ok {
			continue // a CNAME on the way, or DNSSEC records
		}
		ip, ok := netip.AddrFromSlice(a.A.To4())
		if !ok {
			continue
		}
		if ttl := a.Hdr.Ttl; first || ttl < minTTL {
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
func negativeTTL(resp *dns.Msg) time.Duration {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return 0
}

// maxReason bounds a TXT reason, which ends up in logs and on pages.
const maxReason = 512

// reasonText joins the TXT records of an answer with a space; the strings
// of one record are concatenated, as a long text is split at 255 bytes.
func reasonText(resp *dns.Msg) string {
	var b strings.Builder
	for _, rr := range resp.Answer {
		t, ok := rr.(*dns.TXT)
		if !ok {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		for _, s := range t.Txt {
			unescape(&b, s)
		}
	}
	return printable(b.String())
}

// unescape undoes miekg/dns's presentation escapes in a TXT string: \"
// and \\ become the character, \DDD the byte.
func unescape(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 10, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i+1])
		i++
	}
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

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

// query asks the servers for name/qtype, or waits for the same question
// if it is in flight already (asked by any Resolver with the same
// servers): one packet, however many lookups want the answer. The answer
// is shared, so callers must not modify it.
//
// The flight runs under the context and deadline of the lookup that
// started it. A lookup that joined it and has time left when it ended
// without an answer (its starter's time was shorter, or its starter went
// away) asks again.
func (r *Resolver) query(ctx context.Context, deadline time.Time, name string, qtype uint16) (*dns.Msg, error) {
	c := r.c
	key := flightKey{name, qtype}
	for {
		c.mu.Lock()
		f := c.flights[key]
		if f == nil {
			f = &flight{done: make(chan struct{})}
			c.flights[key] = f
			c.mu.Unlock()
			f.resp, f.err = r.ask(ctx, deadline, name, qtype)
			c.mu.Lock()
			delete(c.flights, key)
			c.mu.Unlock()
			close(f.done)
			return f.resp, f.err
		}
		c.mu.Unlock()
		if err := r.join(ctx, deadline, f, qtype); err != nil {
			return nil, err
		}
		ended := errors.Is(f.err, ErrTimeout) || errors.Is(f.err, context.Canceled)
		if f.err == nil || !ended || ctx.Err() != nil || time.Until(deadline) < minRetry {
			return f.resp, f.err
		}
	}
}

// join waits for f, or until the lookup's own time is up.
func (r *Resolver) join(ctx context.Context, deadline time.Time, f *flight, qtype uint16) error {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.Canceled) {
			return fmt.Errorf("dnsbl: lookup canceled: %w", ctx.Err())
		}
	case <-t.C:
	}
	return fmt.Errorf("%w (waiting for the same %s query in flight)", ErrTimeout, dns.TypeToString[qtype])
}

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

// ask asks the servers for name/qtype until one gives a usable answer
// (NOERROR or NXDOMAIN, matching the question). After a timeout, SERVFAIL,
// REFUSED, another error rcode or a network error it tries the next server;
// each attempt gets an equal share of the time left, so a silent server
// cannot use up the time of the ones after it. A mismatched answer over
// TCP, or answer records for another name, are not retried: they are
// returned as ErrMismatch. (Over UDP a datagram for another question is
// dropped and the attempt keeps waiting; see transport.go.)
func (r *Resolver) ask(ctx context.Context, deadline time.Time, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(udpSize, false)

	c := r.c
	n := len(r.servers)
	// One server is asked twice: a lost UDP packet is the commonest
	// failure, and a second server is not there to cover it.
	attempts := max(n, 2)
	first := int(c.preferred.Load()) % n
	start := time.Now()
	over := func() bool { return ctx.Err() != nil || !time.Now().Before(deadline) }
	var err error
	tries := 0
	for i := range attempts {
		if over() {
			break
		}
		idx := (first + i) % n
		share := time.Until(deadline) / time.Duration(attempts-i)
		var resp *dns.Msg
		resp, err = r.exchange(ctx, time.Now().Add(share), m, idx)
		tries++
		if err == nil {
			err = check(resp, name, qtype)
		}
		if err == nil {
			switch resp.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
				if idx != first {
					c.preferred.Store(uint32(idx))
				}
				return resp, nil
			case dns.RcodeServerFailure:
				err = ErrServFail
			case dns.RcodeRefused:
				err = ErrRefused
			default:
				err = fmt.Errorf("dnsbl: server answered %s", dns.RcodeToString[resp.Rcode])
			}
		}
		if errors.Is(err, ErrMismatch) {
			break
		}
	}
	if over() && !errors.Is(err, ErrMismatch) {
		// The lookup's time ran out, whatever the last attempt said.
		return nil, lookupEnded(ctx, tries, time.Since(start), qtype)
	}
	return nil, fmt.Errorf("%w (%s query, %d attempt(s) in %v)",
		err, dns.TypeToString[qtype], tries, time.Since(start).Round(time.Millisecond))
}

// exchange sends m to server idx over UDP, and again over TCP if the UDP
// answer is truncated, waiting until deadline at most. It returns a
// classified error: ErrTimeout, or a network error without the server's
// address.
func (r *Resolver) exchange(ctx context.Context, deadline time.Time, m *dns.Msg, idx int) (*dns.Msg, error) {
	resp, err := r.c.pools[idx].exchange(ctx, deadline, m)
	if err == nil && resp.Truncated {
		resp, err = exchangeTCP(ctx, deadline, r.c.tcp, m, r.servers[idx])
	}
	if err != nil {
		return nil, netError(err)
	}
	return resp, nil
}

// longAgo is a deadline in the past, to wake a blocked read.
var longAgo = time.Unix(1, 0)

// exchangeTCP is one query over a new TCP connection, for an answer too
// large for UDP. It is dns.Client's exchange, except that the attempt's
// deadline is set on the connection (no context per attempt), and
// cancelling ctx, not only its deadline, ends a read that is waiting.
func exchangeTCP(ctx context.Context, deadline time.Time, c *dns.Client, m *dns.Msg, server string) (*dns.Msg, error) {
	// A TCP connect can hang, unlike a UDP "dial"; keep it to the
	// attempt's time (truncated answers are rare, so is this context).
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	conn, err := c.DialContext(dctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(longAgo) })
	defer stop()
	if err := conn.WriteMsg(m); err != nil {
		return nil, err
	}
	resp, err := conn.ReadMsg()
	if err != nil {
		return nil, err
	}
	if resp.Id != m.Id {
		return nil, fmt.Errorf("%w: id %d, sent %d", ErrMismatch, resp.Id, m.Id)
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

// check verifies that resp answers the question name/qtype/IN: the
// question section, and every answer record owned by name or by a CNAME
// target reached from it. miekg/dns has already matched the id.
func check(resp *dns.Msg, name string, qtype uint16) error {
	if !resp.Response {
		return fmt.Errorf("%w: not a response", ErrMismatch)
	}
	if len(resp.Question) == 0 && resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		// Some servers send REFUSED or FORMERR without the question;
		// such an answer carries no data, only its rcode.
		return nil
	}
	if len(resp.Question) != 1 {
		return fmt.Errorf("%w: %d questions in the answer", ErrMismatch, len(resp.Question))
	}
	q := resp.Question[0]
	if !strings.EqualFold(q.Name, name) || q.Qtype != qtype || q.Qclass != dns.ClassINET {
		return fmt.Errorf("%w: answer is for another name, type or class", ErrMismatch)
	}
	var buf [4]string
	owners := append(buf[:0], name)
	owned := func(n string) bool {
		for _, o := range owners {
			if strings.EqualFold(o, n) {
				return true
			}
		}
		return false
	}
	// Follow CNAMEs whatever their order in the section; bounded, as each
	// pass adds at least one owner or stops.
	for range len(resp.Answer) {
		added := false
		for _, rr := range resp.Answer {
			if c, ok := rr.(*dns.CNAME); ok && owned(c.Hdr.Name) && !owned(c.Target) {
				owners = append(owners, c.Target)
				added = true
			}
		}
		if !added {
			break
		}
	}
	for _, rr := range resp.Answer {
		h := rr.Header()
		if !owned(h.Name) || h.Class != dns.ClassINET {
			return fmt.Errorf("%w: answer record for another name", ErrMismatch)
		}
	}
	return nil
}
