//go:build e2e

package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/testkit"
)

// The test lists. Client addresses come from the benchmarking network
// 198.18.0.0/15 (RFC 2544), given to Postfix with XCLIENT and bound to a
// private network namespace's loopback for Sendmail. Not loopback: blmilter
// never looks up loopback clients. Not the documentation networks of
// RFC 5737 either: blmilter's list health monitor probes random addresses
// from those and takes a list that lists one for a list that answers
// everything. 127.0.0.2 is in every list, as RFC 5782 requires, so the lists
// pass the health probes.
const (
	zoneBlock = "bl.e2e.test"  // codes by range, IPv4 and IPv6
	zoneAllow = "wl.e2e.test"  // DNSWL-style, negative weight
	zoneError = "err.e2e.test" // answers 127.255.255.254 for everything
	zoneDyn   = "pbl.e2e.test" // a third list for the load comparison: dynamic ranges

	listBlock = "E2E block"
	listAllow = "E2E allow"
	listError = "E2E broken"
	listDyn   = "E2E dynamic"

	publicURL = "http://lookup.e2e.test"
)

// clients are the client addresses the tests use and what the lists say.
var (
	clientSpam     = "198.18.0.10"      // bl: 127.0.0.2 spam-source
	clientZombie   = "198.18.0.40"      // bl: 127.0.0.4 zombie
	clientProxy    = "198.18.0.70"      // bl: 127.0.0.6 open-proxy
	clientDynamic  = "198.18.0.100"     // bl: 127.0.0.10 dynamic
	clientAllowed  = "198.18.0.130"     // bl: 127.0.0.2, and wl: allowed
	clientClean    = "198.18.1.7"       // in no list (err answers for it)
	clientZombie6  = "2001:db8:bad::1"  // bl: 127.0.0.4 zombie
	clientClean6   = "2001:db8:600d::1" // in no list
	clientLoadPool = "198.19.0.0/24"    // load test: bl lists 198.19.0.0/26
)

// The load test's cold rows, where every session is a new client: blmload
// takes turns between the two networks, so half the clients are listed (by
// bl and pbl) and half are in no list.
const (
	clientColdListed = "198.18.128.0/17"
	clientColdClean  = "198.19.128.0/17"
	clientColdPool   = clientColdListed + "," + clientColdClean
	coldPoolSize     = 2 << 15 // addresses in clientColdPool
)

const zoneBlock4 = `# ` + zoneBlock + ` IPv4: ip4set, one code per range
:127.0.0.2:Listed as a spam source, see ` + publicURL + `/ip/$
127.0.0.2
198.18.0.0/27
198.18.0.128/27
198.19.0.0/26
` + clientColdListed + `
198.18.0.32/27 :127.0.0.4:Listed as a zombie, see ` + publicURL + `/ip/$
198.18.0.64/27 :127.0.0.6:Listed as an open proxy, see ` + publicURL + `/ip/$
198.18.0.96/27 :127.0.0.10:Dynamic address range, see ` + publicURL + `/ip/$
`

const zoneBlock6 = `# ` + zoneBlock + ` IPv6: ip6trie
:127.0.0.4:Listed as a zombie
::ffff:7f00:2
2001:db8:bad::/48
`

const zoneAllow4 = `# ` + zoneAllow + `: a DNSWL-style allow list
:127.0.10.1:Known good sender
127.0.0.2
198.18.0.128/27
`

const zoneDyn4 = `# ` + zoneDyn + `: dynamic address ranges
:127.0.0.10:Dynamic address range, see ` + publicURL + `/ip/$
127.0.0.2
` + clientColdListed + `
`

const zoneError4 = `# ` + zoneError + `: what a list says to a refused resolver
:127.255.255.254:Query refused
0.0.0.0/0
`

const zoneError6 = `:127.255.255.254:Query refused
::/0
`

// listsTOML is the [[list]] part of a blmilter config for the test lists.
func listsTOML(withError bool) string {
	s := fmt.Sprintf(`
[[list]]
name = %q
zone = %q
weight = 4
codes = { "127.0.0.2" = "spam-source", "127.0.0.4" = "zombie", "127.0.0.6" = "open-proxy", "127.0.0.10" = "dynamic" }

[[list]]
name = %q
zone = %q
weight = -10
ipv6 = false
`, listBlock, zoneBlock, listAllow, zoneAllow)
	if withError {
		s += fmt.Sprintf(`
[[list]]
name = %q
zone = %q
weight = 4
health = false
`, listError, zoneError)
	}
	return s
}

// dynListTOML is the third list of the load comparison.
var dynListTOML = fmt.Sprintf(`
[[list]]
name = %q
zone = %q
weight = 1
codes = { "127.0.0.10" = "dynamic" }
`, listDyn, zoneDyn)

// startRbldnsd serves the test lists on 127.0.0.1 and returns "127.0.0.1:port".
func startRbldnsd(t testing.TB) string {
	t.Helper()
	return serveTestLists(t, func() string {
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(testkit.FreePort(t, "udp")))
	})
}

// startRbldnsdPort53 serves the test lists on port 53 of a loopback address
// picked at random from 127.53.0.0/16 and returns that address, for a
// client that cannot be given a port (policyd-weight sends its list
// queries to port 53). The whole of 127.0.0.0/8 is loopback on Linux, so
// nothing needs configuring, and a random address keeps clear of another
// test run's, and of a resolver's on 127.0.0.53.
func startRbldnsdPort53(t testing.TB) string {
	t.Helper()
	addr := serveTestLists(t, func() string {
		return net.JoinHostPort(fmt.Sprintf("127.53.%d.%d", 1+rand.IntN(254), 1+rand.IntN(254)), "53")
	})
	host, _, _ := net.SplitHostPort(addr)
	return host
}

// serveTestLists runs rbldnsd with the test lists on an address from next
// ("host:port"), which is asked again when rbldnsd cannot start there.
func serveTestLists(t testing.TB, next func() string) string {
	t.Helper()
	bin := tool("rbldnsd")
	dir := tempDir(t, "rbldnsd")
	writeFile(t, filepath.Join(dir, "bl4"), zoneBlock4)
	writeFile(t, filepath.Join(dir, "bl6"), zoneBlock6)
	writeFile(t, filepath.Join(dir, "wl4"), zoneAllow4)
	writeFile(t, filepath.Join(dir, "pbl4"), zoneDyn4)
	writeFile(t, filepath.Join(dir, "err4"), zoneError4)
	writeFile(t, filepath.Join(dir, "err6"), zoneError6)

	var lastErr error
	for try := 0; try < 3; try++ {
		addr := next()
		host, port, _ := net.SplitHostPort(addr)
		// -n: foreground; -e: allow ranges like 0.0.0.0/0; -t: a short TTL
		// for the answers; -c: do not poll the files.
		p := startProc(t, bin, "-n", "-e", "-a", "-t", "300", "-c", "1h",
			"-w", dir, "-b", host+"/"+port,
			zoneBlock+":ip4set:bl4", zoneBlock+":ip6trie:bl6",
			zoneAllow+":ip4set:wl4", zoneDyn+":ip4set:pbl4",
			zoneError+":ip4trie:err4", zoneError+":ip6trie:err6")
		lastErr = waitDNS(addr, p)
		if lastErr == nil {
			return addr
		}
		p.stop()
	}
	t.Fatalf("rbldnsd did not start: %v", lastErr)
	return ""
}

// waitDNS waits until rbldnsd answers the RFC 5782 test point.
func waitDNS(addr string, p *proc) error {
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("2.0.0.127."+zoneBlock+".", dns.TypeA)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if !p.running() {
			return fmt.Errorf("rbldnsd exited: %v: %s", p.err, p.out.String())
		}
		r, _, err := c.Exchange(m, addr)
		if err == nil && len(r.Answer) > 0 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("no answer: %s", dns.RcodeToString[r.Rcode])
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRbldnsdZones checks the test lists themselves: a wrong zone file would
// make every later assertion about blmilter meaningless.
func TestRbldnsdZones(t *testing.T) {
	need(t, "rbldnsd")
	addr := startRbldnsd(t)
	c := &dns.Client{Timeout: 2 * time.Second}
	tests := []struct {
		name string
		ip   string
		zone string
		want string // A record, "" for NXDOMAIN
	}{
		{"test point", "127.0.0.2", zoneBlock, "127.0.0.2"},
		{"test point not 127.0.0.1", "127.0.0.1", zoneBlock, ""},
		{"spam source", clientSpam, zoneBlock, "127.0.0.2"},
		{"zombie", clientZombie, zoneBlock, "127.0.0.4"},
		{"open proxy", clientProxy, zoneBlock, "127.0.0.6"},
		{"dynamic", clientDynamic, zoneBlock, "127.0.0.10"},
		{"clean", clientClean, zoneBlock, ""},
		{"ipv6 zombie", clientZombie6, zoneBlock, "127.0.0.4"},
		{"ipv6 test point", "::ffff:7f00:2", zoneBlock, "127.0.0.2"},
		{"ipv6 clean", clientClean6, zoneBlock, ""},
		{"allowed", clientAllowed, zoneAllow, "127.0.10.1"},
		{"allow list test point", "127.0.0.2", zoneAllow, "127.0.10.1"},
		{"documentation address", "192.0.2.77", zoneBlock, ""},
		{"documentation address allow list", "203.0.113.9", zoneAllow, ""},
		{"cold load: listed half", "198.18.200.1", zoneBlock, "127.0.0.2"},
		{"cold load: listed half, dynamic", "198.18.200.1", zoneDyn, "127.0.0.10"},
		{"cold load: clean half", "198.19.200.1", zoneBlock, ""},
		{"cold load: clean half, dynamic", "198.19.200.1", zoneDyn, ""},
		{"dynamic list test point", "127.0.0.2", zoneDyn, "127.0.0.10"},
		{"error zone", clientClean, zoneError, "127.255.255.254"},
		{"error zone ipv6", clientClean6, zoneError, "127.255.255.254"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := reversed(netip.MustParseAddr(tt.ip)) + "." + tt.zone + "."
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeA)
			r, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			for _, rr := range r.Answer {
				if a, ok := rr.(*dns.A); ok {
					got = a.A.String()
				}
			}
			if got != tt.want {
				t.Errorf("%s: got %q (rcode %s), want %q", name, got, dns.RcodeToString[r.Rcode], tt.want)
			}
		})
	}
}

// reversed is the RFC 5782 query label of ip: reversed octets for IPv4,
// reversed nibbles for IPv6 (an IPv4-mapped address stays IPv6 here, as the
// IPv6 test point ::FFFF:7F00:2 is).
func reversed(ip netip.Addr) string {
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		for i := 3; i >= 0; i-- {
			if i < 3 {
				b.WriteByte('.')
			}
			b.WriteString(strconv.Itoa(int(a[i])))
		}
		return b.String()
	}
	a := ip.As16()
	const hex = "0123456789abcdef"
	for i := 15; i >= 0; i-- {
		if i < 15 {
			b.WriteByte('.')
		}
		b.WriteByte(hex[a[i]&0xf])
		b.WriteByte('.')
		b.WriteByte(hex[a[i]>>4])
	}
	return b.String()
}
