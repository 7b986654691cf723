package main

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/policy"
)

// bombList is the site's list with a bug: asked about bombIP it panics.
type bombList struct{}

var bombIP = netip.MustParseAddr("198.18.66.6")

func (bombList) Lookup(ip netip.Addr) (string, string, bool) {
	if ip == bombIP {
		panic("site list bug")
	}
	return "", "", false
}

// panicDaemon runs the daemon in this process with a site list that
// panics for bombIP, the policy server, the web service, the zone and a
// metrics listener of its own.
func panicDaemon(t *testing.T) *testDaemon {
	t.Helper()
	s := dnstest.Start(t)
	dir := t.TempDir()
	text := fmt.Sprintf(`[milter]
listen = ""
[policyd]
listen = "127.0.0.1:0"
[web]
listen = "127.0.0.1:0"
public_url = "https://lookup.example.org"
[metrics]
listen = "127.0.0.1:0"
[store]
path = %q
[dns]
servers = [%q]
[zone]
name = "bl.test"
listen = ["127.0.0.1:0"]
ns = ["ns1.example.org."]
[[list]]
name = "Site"
store = true
`, filepath.Join(dir, "blmilter.db"), s.Addr)
	return startTestDaemon(t, filepath.Join(dir, "blmilter.toml"), text, 4, func(d *daemon) {
		d.depsHook = func(deps *policy.Deps) { deps.StoreList = bombList{} }
	})
}

// panicsCounted reads blmilter_panics_total{server} from /metrics.
func panicsCounted(t *testing.T, metricsAddr, server string) int {
	t.Helper()
	m := regexp.MustCompile(`blmilter_panics_total\{server="` + server + `"\} (\d+)`).FindStringSubmatch(httpGet(t, "http://"+metricsAddr+"/metrics"))
	if m == nil {
		t.Fatalf("no blmilter_panics_total for %s", server)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// A panic while serving a policy client or a web request ends that client
// alone: the daemon answers the next one, and the panic is counted.
func TestServerPanicsAreCounted(t *testing.T) {
	td := panicDaemon(t)
	addrs := map[string]string{}
	for _, name := range []string{"policyd", "web", "metrics", "zone"} {
		addrs[name] = td.addr(name)
	}
	for _, server := range []string{"milter", "policyd", "web", "metrics", "health", "store", "zone", "lookup"} {
		if n := panicsCounted(t, addrs["metrics"], server); n != 0 {
			t.Errorf("%s: %d panics before any", server, n)
		}
	}

	c, err := dialPolicy(addrs["policyd"], time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.c.Close()
	for range 2 {
		if action, err := c.ask(bombIP.String()); err != nil || action != "DUNNO" {
			t.Fatalf("policy request whose check panics: %q, %v; want DUNNO", action, err)
		}
	}
	if action, err := c.ask("198.18.1.1"); err != nil || action != "DUNNO" {
		t.Fatalf("the next request: %q, %v", action, err)
	}
	if n := panicsCounted(t, addrs["metrics"], "policyd"); n != 2 {
		t.Errorf("policyd panics: %d, want 2", n)
	}

	if code, _ := getStatus(t, "http://"+addrs["web"]+"/ip/"+bombIP.String()); code != 500 {
		t.Errorf("lookup page whose check panics: %d, want 500", code)
	}
	if code, _ := getStatus(t, "http://"+addrs["web"]+"/ip/198.18.1.1"); code != 200 {
		t.Errorf("the next lookup: %d, want 200", code)
	}
	if n := panicsCounted(t, addrs["metrics"], "web"); n != 1 {
		t.Errorf("web panics: %d, want 1", n)
	}

	// The zone's answer path panics for one client: that query is dropped
	// and counted, and the zone answers the next one.
	q := new(dns.Msg)
	q.SetQuestion("1.1.18.198.bl.test.", dns.TypeA)
	td.d.zone.ServeDNS(panickyWriter{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}, q)
	if n := panicsCounted(t, addrs["metrics"], "zone"); n != 1 {
		t.Errorf("zone panics: %d, want 1", n)
	}
	for _, network := range []string{"udp", "tcp"} {
		r, _, err := (&dns.Client{Net: network, Timeout: 2 * time.Second}).Exchange(q, addrs["zone"])
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("the next query over %s: %v, %v; want NXDOMAIN", network, r, err)
		}
	}
}

// panickyWriter is a DNS client connection whose answer cannot be written
// without a panic, as a bug on the zone's answer path would have it.
type panickyWriter struct{ remote net.Addr }

func (w panickyWriter) LocalAddr() net.Addr     { return w.remote }
func (w panickyWriter) RemoteAddr() net.Addr    { return w.remote }
func (panickyWriter) WriteMsg(*dns.Msg) error   { panic("zone answer bug") }
func (panickyWriter) Write([]byte) (int, error) { panic("zone answer bug") }
func (panickyWriter) Close() error              { return nil }
func (panickyWriter) TsigStatus() error         { return nil }
func (panickyWriter) TsigTimersOnly(bool)       {}
func (panickyWriter) Hijack()                   {}

// The metrics listener has the web service's limits: a client that sends
// its header a byte at a time is cut off, and a huge header is refused.
func TestMetricsListenerLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the header timeout")
	}
	addr := panicDaemon(t).addr("metrics")

	big, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	fmt.Fprintf(big, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 64<<10))
	big.SetReadDeadline(time.Now().Add(10 * time.Second))
	status, _ := bufio.NewReader(big).ReadString('\n')
	if !strings.Contains(status, "431") {
		t.Errorf("64 KiB header: %q, want 431", status)
	}

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	start := time.Now()
	fmt.Fprint(slow, "GET /metrics HTTP/1.1\r\n")
	closed := make(chan time.Duration, 1)
	go func() {
		buf := make([]byte, 1)
		slow.SetReadDeadline(time.Now().Add(30 * time.Second))
		slow.Read(buf) // returns when the server closes
		closed <- time.Since(start)
	}()
	// A header byte every second: each read re-arms nothing, the header
	// must be whole within ReadHeaderTimeout.
	for i := 0; i < 20; i++ {
		select {
		case el := <-closed:
			t.Logf("slow header cut off after %v", el.Round(100*time.Millisecond))
			if el > 8*time.Second {
				t.Errorf("slow header held the connection %v", el)
			}
			return
		case <-time.After(time.Second):
			fmt.Fprint(slow, "X")
		}
	}
	t.Error("a client sending its header a byte a second kept the connection 20 s")
}
