package web

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// ReverseDNS is what the PTR records of an IP say about it.
type ReverseDNS struct {
	Names   []PTRName `json:"names"`
	Generic bool      `json:"generic"`         // at least one name looks generic or residential
	Error   string    `json:"error,omitempty"` // the lookup failed (not: no PTR record)
}

// PTRName is one PTR name and what we found out about it.
type PTRName struct {
	Name             string   `json:"name"`
	ForwardConfirmed bool     `json:"forward_confirmed"` // the name resolves back to the IP
	Generic          bool     `json:"generic"`
	GenericBecause   []string `json:"generic_because,omitempty"`
}

// newResolver builds a resolver that asks the servers of the [dns] section,
// so the lookup page sees what the filter's resolver sees. With no servers
// configured it uses the system's.
func newResolver(cfg *Settings) (*net.Resolver, time.Duration) {
	timeout := cfg.DNSTimeout
	var servers []string
	for _, s := range cfg.DNSServers {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(strings.Trim(s, "[]"), "53")
		}
		servers = append(servers, s)
	}
	if len(servers) == 0 {
		return &net.Resolver{PreferGo: true}, timeout
	}
	var next atomic.Uint32
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			// Spread over the configured servers; the Go resolver retries,
			// so a dead server costs one attempt, not the lookup.
			s := servers[int(next.Add(1)-1)%len(servers)]
			var d net.Dialer
			return d.DialContext(ctx, network, s)
		},
	}, timeout
}

// rdnsTTL is how long a reverse DNS result is reused: long enough that a
// page reloaded or asked by many does not ask again, short enough that a
// fixed PTR record shows soon. Failures are not kept.
const rdnsTTL = 2 * time.Minute

type rdnsResolver struct {
	cfg     *Settings
	r       *net.Resolver
	timeout time.Duration
}

// reverse returns the reverse DNS of ip through a small cache, asking the
// servers of cfg's [dns] section.
func (s *Server) reverse(ctx context.Context, cfg *Settings, ip netip.Addr) ReverseDNS {
	res := s.rdns.Load()
	if res == nil || res.cfg != cfg {
		// A reload brought a new config: new servers, and forget what the
		// old ones said.
		r, timeout := newResolver(cfg)
		res = &rdnsResolver{cfg: cfg, r: r, timeout: timeout}
		s.rdns.Store(res)
		s.rdnsCache.Purge()
	}
	v, _, _ := s.rdnsCache.Load(ctx, ip, func(ctx context.Context) (ReverseDNS, time.Duration, error) {
		rev := lookupReverse(ctx, res.r, res.timeout, ip)
		if rev.Error != "" {
			return rev, 0, nil
		}
		return rev, rdnsTTL, nil
	})
	return v
}

// lookupReverse finds the PTR names of ip, checks that each resolves back to
// ip and judges whether it looks generic.
func lookupReverse(ctx context.Context, r *net.Resolver, timeout time.Duration, ip netip.Addr) ReverseDNS {
	ctx, cancel := context.WithTimeout(ctx, 2*timeout)
	defer cancel()
	var out ReverseDNS
	names, err := r.LookupAddr(ctx, ip.String())
	if err != nil {
		var dnsErr *net.DNSError
		if ok := asDNSError(err, &dnsErr); ok && dnsErr.IsNotFound {
			return out
		}
		out.Error = "the reverse DNS lookup failed"
		return out
	}
	if len(names) > 5 {
		names = names[:5]
	}
	for _, n := range names {
		n = strings.TrimSuffix(n, ".")
		p := PTRName{Name: n}
		addrs, err := r.LookupNetIP(ctx, "ip", n)
		if err == nil {
			for _, a := range addrs {
				if a.Unmap() == ip {
					p.ForwardConfirmed = true
				}
			}
		}
		p.GenericBecause = genericReasons(n, ip)
		p.Generic = len(p.GenericBecause) > 0
		out.Generic = out.Generic || p.Generic
		out.Names = append(out.Names, p)
	}
	return out
}

func asDNSError(err error, target **net.DNSError) bool {
	for err != nil {
		if e, ok := err.(*net.DNSError); ok {
			*target = e
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// genericWords mark a name as generic on their own: providers use them for
// address pools of their customers.
var genericWords = map[string]bool{
	"dsl": true, "adsl": true, "vdsl": true, "xdsl": true, "sdsl": true,
	"dynamic": true, "dyn": true, "dynip": true, "pool": true, "dhcp": true,
	"cable": true, "ppp": true, "pppoe": true, "dial": true, "dialup": true,
	"dialin": true, "client": true, "clients": true, "broadband": true,
	"bb": true, "cust": true, "customer": true, "residential": true,
	"resident": true, "dip": true, "ftth": true, "fttx": true, "wireless": true,
	"mobile": true, "cpe": true,
}

// weakWords mark a name as generic only together with the IP's digits:
// "static-192-0-2-7.example.net" is a provider's generic name for a static
// address, "host.example.org" is not.
var weakWords = map[string]bool{
	"static": true, "host": true, "ip": true, "user": true, "unassigned": true,
	"addr": true, "ptr": true, "rev": true, "reverse": true, "in-addr": true,
}

// genericReasons says why a PTR name looks like a provider's generic name
// for a customer address rather than the name of a mail server; nil when it
// does not.
func genericReasons(name string, ip netip.Addr) []string {
	name = strings.ToLower(name)
	// Judge only the labels the owner of the address chose: the registered
	// domain (the last two labels) is the provider's and tells nothing.
	labels := strings.Split(name, ".")
	if len(labels) > 2 {
		labels = labels[:len(labels)-2]
	}
	host := strings.Join(labels, ".")

	var why []string
	digits := ipInName(host, ip)
	if digits {
		why = append(why, "it contains the IP address's digits")
	}
	seen := map[string]bool{}
	for _, tok := range splitLetters(host) {
		if seen[tok] {
			continue
		}
		seen[tok] = true
		if genericWords[tok] || (digits && weakWords[tok]) {
			why = append(why, fmt.Sprintf("it contains the word %q", tok))
		}
	}
	return why
}

// splitLetters returns the runs of letters in s ("adsl-12.pool3" → adsl, pool).
func splitLetters(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r < 'a' || r > 'z' })
}

// ipInName reports whether host spells the IP: for IPv4 at least three of
// its octets as separate numbers in any order and with any separator, all
// four run together (zero-padded or not), or the address in hex; for IPv6
// the last 32 bits in hex.
func ipInName(host string, ip netip.Addr) bool {
	compact := strings.Map(func(r rune) rune {
		if (r >= '0' && r <= '9') || (r >= 'a' && r <= 'f') {
			return r
		}
		return -1
	}, host)
	if ip.Is4() {
		b := ip.As4()
		numbers := strings.FieldsFunc(host, func(r rune) bool { return r < '0' || r > '9' })
		have := map[int]int{}
		for _, n := range numbers {
			if v, err := strconv.Atoi(n); err == nil && len(n) <= 3 {
				have[v]++
			}
		}
		matched := 0
		for _, o := range b {
			if have[int(o)] > 0 {
				have[int(o)]--
				matched++
			}
		}
		if matched >= 3 {
			return true
		}
		padded := fmt.Sprintf("%03d%03d%03d%03d", b[0], b[1], b[2], b[3])
		plain := fmt.Sprintf("%d%d%d%d", b[0], b[1], b[2], b[3])
		hex := fmt.Sprintf("%02x%02x%02x%02x", b[0], b[1], b[2], b[3])
		digitsOnly := strings.Join(numbers, "")
		return strings.Contains(digitsOnly, padded) || (len(plain) >= 8 && strings.Contains(digitsOnly, plain)) || strings.Contains(compact, hex)
	}
	b := ip.As16()
	tail := fmt.Sprintf("%02x%02x%02x%02x", b[12], b[13], b[14], b[15])
	return strings.Contains(compact, tail)
}

// ptrAdvice is shown when a PTR name looks generic.
const ptrAdvice = "Many mail servers refuse mail from addresses whose reverse DNS looks like a " +
	"provider's generic name for a customer line. A mail server needs a PTR record that names " +
	"the server itself (for example mail.example.org), and that name must resolve back to the " +
	"same IP. Ask whoever gives you the address (your provider or hosting company) to set it. " +
	"If this is a home or office line, send mail through your provider's mail relay instead of directly."
