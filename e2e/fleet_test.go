//go:build e2e

package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
)

// The fleet: node A, a blmilter binary, holds the store and serves the
// site's zone and the lookup service; node B, a second blmilter binary, is
// the milter of a private Postfix and asks A's zone as a DNS list; a third
// Postfix runs postscreen with the zone in postscreen_dnsbl_sites; NSD,
// configured from contrib/nsd/secondary.conf, takes the zone from A.
//
// postscreen asks through the C library's resolver, which reads
// /etc/resolv.conf and asks port 53. The test runs in private network,
// UTS and mount namespaces: there A's zone listens on 127.0.0.1:53, and a
// resolv.conf naming 127.0.0.1 is bind-mounted over /etc/resolv.conf, so
// every resolver in the namespace asks the zone, and nothing reaches any
// other network or the machine's own files. Clients come from
// 198.18.0.0/15 on the namespace's loopback (netnsMain), which blmilter
// and postscreen look up as they would any client.
const (
	fleetZone   = "bl.fleet.test"
	fleetClient = "198.18.7.7"
	fleetList   = "Fleet BL"
)

func TestFleet(t *testing.T) {
	if os.Getenv(envNetNS) == "" {
		need(t, "postfix", "unshare", "ip", "nsd", "nsd-checkconf")
		bin := testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")
		runInNetNS(t, bin, "--mount")
		return
	}
	bin := os.Getenv(envBlmilterBin)
	privateResolvConf(t)

	dir := tempDir(t, "fleet")
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(dir, "fleet.key")
	writeFile(t, keyFile, base64.StdEncoding.EncodeToString(key)+"\n")
	xfrKey := filepath.Join(dir, "xfr.key")
	xfrSecret := make([]byte, 32)
	rand.Read(xfrSecret)
	writeFile(t, xfrKey, fmt.Sprintf("key \"xfr.fleet.test\" {\n\talgorithm hmac-sha256;\n\tsecret \"%s\";\n};\n", base64.StdEncoding.EncodeToString(xfrSecret)))
	nsdPort := testkit.FreeDNSPort(t)

	// Node A: the store, the zone on port 53, the lookup service.
	webA := testkit.FreeAddr(t)
	lookupURL := "http://" + webA
	aDir := filepath.Join(dir, "a")
	os.Mkdir(aDir, 0o755)
	aConf := filepath.Join(aDir, "blmilter.toml")
	writeFile(t, aConf, fmt.Sprintf(`[milter]
listen = ""

[web]
listen = %q
public_url = %q

[store]
path = %q

[log]
level = "debug"
format = "json"

[zone]
name = %q
listen = ["127.0.0.1:53"]
ttl = "1s"
ns = ["ns1.fleet.test.", "ns2.fleet.test."]
soa = { rname = "hostmaster.fleet.test.", minimum = "1s" }
transfer = ["127.0.0.1"]
notify = ["127.0.0.1:%d"]
tsig = { name = "xfr.fleet.test.", secret_file = %q }

[fleet]
key_file = %q
node = "lookup-a"

[[list]]
name = %q
store = true
weight = 3
`, webA, lookupURL, filepath.Join(aDir, "blmilter.db"), fleetZone, nsdPort, xfrKey, keyFile, fleetList))
	if out, err := execOut(bin, "list", "add", "-create", "-config", aConf, "192.0.2.1"); err != nil {
		t.Fatalf("create A's store: %v\n%s", err, out)
	}
	a := startProc(t, bin, "serve", "-config", aConf)
	waitTCP(t, "node A's lookup service", webA, a)
	waitTCP(t, "node A's zone", "127.0.0.1:53", a)

	// Node B: a milter asking the zone, linking to A.
	milterB := testkit.FreeAddr(t)
	bDir := filepath.Join(dir, "b")
	os.Mkdir(bDir, 0o755)
	bConf := filepath.Join(bDir, "blmilter.toml")
	writeFile(t, bConf, fmt.Sprintf(`[milter]
listen = "inet:%s"

[web]
listen = ""
public_url = %q

[store]
path = %q

[log]
level = "debug"
format = "json"

[dns]
servers = ["127.0.0.1:53"]
timeout = "1s"

[cache]
min_ttl = "1s"
max_ttl = "1s"
negative_ttl = "1s"

[fleet]
key_file = %q
node = "mx-b"

[policy]
threshold = 3

[[list]]
name = %q
zone = %q
weight = 3
codes = { "127.0.0.2" = "spam-source", "127.0.0.3" = "local", "127.0.0.4" = "zombie", "127.0.0.9" = "open-proxy", "127.0.0.10" = "dynamic" }
`, milterB, lookupURL, filepath.Join(bDir, "blmilter.db"), keyFile, fleetList, fleetZone))
	b := startProc(t, bin, "serve", "-config", bConf)
	waitTCP(t, "node B's milter", milterB, b)

	// Postfix with B as its milter; Postfix with postscreen asking the zone.
	withMilter := startPostfix(t, postfixOpts{Milter: "inet:" + milterB})
	withPostscreen := startPostfix(t, postfixOpts{Postscreen: true, Extra: `
postscreen_dnsbl_sites = ` + fleetZone + `*3
postscreen_dnsbl_threshold = 3
postscreen_dnsbl_action = enforce
postscreen_greet_action = ignore
postscreen_dnsbl_timeout = 5s
# A client that passed is let in without a new look for this long; the
# zone's negative TTL (its SOA minimum) is 1s, and so is this.
postscreen_dnsbl_min_ttl = 1s
`})
	nsd := startSecondaryFromContrib(t, nsdPort, xfrSecret)

	viaB := func() reply {
		t.Helper()
		r, err := session(withMilter.Addr, sessionOpts{XClient: fleetClient})
		if err != nil {
			t.Fatalf("session through B: %v", err)
		}
		return r
	}
	viaPostscreen := func() reply {
		t.Helper()
		r, err := session(withPostscreen.Addr, sessionOpts{Local: fleetClient})
		if err != nil {
			t.Fatalf("session through postscreen: %v", err)
		}
		return r
	}
	for name, r := range map[string]reply{"B": viaB(), "postscreen": viaPostscreen()} {
		if r.Stage != "rcpt" || r.Code != 250 {
			t.Fatalf("%s before the listing: %v, want 250 at RCPT", name, r)
		}
	}

	t.Run("A's zone survives hostile clients", func(t *testing.T) { hostileZoneClients(t, "127.0.0.1:53", a) })

	// The listing, made on A by another process.
	start := time.Now()
	if out, err := execOut(bin, "list", "add", "-config", aConf, "-category", "zombie", "-reason", "hit our traps", fleetClient); err != nil {
		t.Fatalf("list add on A: %v\n%s", err, out)
	}
	qname := dns.Fqdn(testkit.QName(fleetClient, fleetZone))
	testkit.WaitFor(t, "A's zone to serve the listing", 5*time.Second, func() error {
		return testkit.Unless(dnsA("127.0.0.1:53", qname) == "127.0.0.4", "not yet")
	})
	t.Logf("list add on A to the zone's answer: %v", time.Since(start).Round(time.Millisecond))
	testkit.WaitFor(t, "NSD to serve the listing (NOTIFY, then IXFR)", 5*time.Second, func() error {
		return testkit.Unless(dnsA(nsd, qname) == "127.0.0.4", "not yet")
	})

	var ref string
	t.Run("B refuses, linking to A", func(t *testing.T) {
		var r reply
		testkit.WaitFor(t, "B to refuse the client", 10*time.Second, func() error {
			r = viaB()
			return testkit.Unless(r.Code == 550, "%v", r)
		})
		t.Logf("B: %v", r)
		if line := fmt.Sprintf("%d %s %s\r\n", r.Code, r.Enhanced, r.Text); len(line) > 512 {
			t.Errorf("reply line of %d octets", len(line))
		}
		m := regexp.MustCompile(regexp.QuoteMeta(lookupURL+"/ip/"+fleetClient) + `\?ref=([A-Za-z0-9_-]+)`).FindStringSubmatch(r.Text)
		if r.Enhanced != "5.7.1" || !strings.Contains(r.Text, fleetList) || !strings.Contains(r.Text, "zombie") || m == nil {
			t.Fatalf("B's reply %q does not link to A's lookup page with a ref", r.Text)
		}
		ref = m[1]
	})
	t.Run("postscreen refuses", func(t *testing.T) {
		var r reply
		testkit.WaitFor(t, "postscreen to refuse the client", 10*time.Second, func() error {
			r = viaPostscreen()
			return testkit.Unless(r.Code == 550, "%v", r)
		})
		t.Logf("postscreen: %v", r)
		if !strings.Contains(r.Text, fleetZone) {
			t.Errorf("postscreen's reply %q does not name the zone", r.Text)
		}
	})
	t.Run("A shows what B saw", func(t *testing.T) {
		if ref == "" {
			t.Skip("no ref from B")
		}
		page := httpGet(t, lookupURL+"/ip/"+fleetClient+"?ref="+ref)
		for _, want := range []string{"Your bounce", "mx-b", "<strong>reject</strong>", fleetList, "Compromised machine", "127.0.0.4", "signed by this site"} {
			if !strings.Contains(page, want) {
				t.Errorf("A's page for B's ref lacks %q", want)
			}
		}
		var rep struct {
			Decision struct {
				Found, Signed bool
				Node          string
				Action        string
				Hits          []struct{ List, Category, Code string }
			}
		}
		if err := json.Unmarshal([]byte(httpGet(t, lookupURL+"/api/v1/ip/"+fleetClient+"?ref="+ref)), &rep); err != nil {
			t.Fatal(err)
		}
		d := rep.Decision
		if !d.Found || !d.Signed || d.Node != "mx-b" || d.Action != "reject" || len(d.Hits) != 1 ||
			d.Hits[0].List != fleetList || d.Hits[0].Category != "zombie" || d.Hits[0].Code != "127.0.0.4" {
			t.Errorf("A's decision for B's ref: %+v", d)
		}
		tampered := []byte(ref)
		tampered[12] ^= 'A' ^ 'a'
		page = httpGet(t, lookupURL+"/ip/"+fleetClient+"?ref="+url.QueryEscape(string(tampered)))
		if !strings.Contains(page, "could not be verified") || strings.Contains(page, "mx-b") || !strings.Contains(page, "On this site's own list") {
			t.Errorf("A's page for a tampered ref does not refuse it and show the current status")
		}
	})

	// The removal, on A; B and postscreen accept once their caches expire.
	start = time.Now()
	if out, err := execOut(bin, "list", "remove", "-config", aConf, fleetClient); err != nil {
		t.Fatalf("list remove on A: %v\n%s", err, out)
	}
	testkit.WaitFor(t, "A's zone to drop the listing", 5*time.Second, func() error {
		return testkit.Unless(dnsA("127.0.0.1:53", qname) == "", "still listed")
	})
	t.Logf("list remove on A to the zone's NXDOMAIN: %v", time.Since(start).Round(time.Millisecond))
	testkit.WaitFor(t, "B to accept the client", 15*time.Second, func() error {
		r := viaB()
		return testkit.Unless(r.Stage == "rcpt" && r.Code == 250, "%v", r)
	})
	t.Logf("list remove on A to B's 250: %v", time.Since(start).Round(time.Millisecond))
	testkit.WaitFor(t, "postscreen to accept the client", 15*time.Second, func() error {
		r := viaPostscreen()
		return testkit.Unless(r.Stage == "rcpt" && r.Code == 250, "%v", r)
	})
	t.Logf("list remove on A to postscreen's 250: %v", time.Since(start).Round(time.Millisecond))
	testkit.WaitFor(t, "NSD to drop the listing", 5*time.Second, func() error {
		return testkit.Unless(dnsA(nsd, qname) == "", "still listed")
	})

	// How long a change made by a command takes to be served: each round
	// adds a new address and waits for the zone's answer. A random pause
	// first, so the rounds do not fall into step with the store's polling.
	var took []time.Duration
	for i := range 10 {
		ip := "198.18.9." + strconv.Itoa(i+1)
		time.Sleep(time.Duration(mrand.IntN(500)) * time.Millisecond)
		start := time.Now()
		if out, err := execOut(bin, "list", "add", "-config", aConf, ip); err != nil {
			t.Fatalf("list add: %v\n%s", err, out)
		}
		name := dns.Fqdn(testkit.QName(ip, fleetZone))
		testkit.WaitFor(t, ip+" in the zone", 5*time.Second, func() error {
			return testkit.Unless(dnsA("127.0.0.1:53", name) != "", "not yet")
		})
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("list add (a new process) to the zone's answer, 10 rounds: min %v, median %v, max %v",
		took[0].Round(time.Millisecond), took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
}

// privateResolvConf points this mount namespace's C library resolver at
// 127.0.0.1 (port 53: resolv.conf has no ports).
func privateResolvConf(t *testing.T) {
	t.Helper()
	f := filepath.Join(tempDir(t, "resolv"), "resolv.conf")
	writeFile(t, f, "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
	// unshare(1) made the namespace's mounts private: nothing leaves it.
	if err := syscall.Mount(f, "/etc/resolv.conf", "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount a private resolv.conf: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount("/etc/resolv.conf", 0) })
}

// startSecondaryFromContrib runs NSD with contrib/nsd/secondary.conf,
// pointed at the zone on 127.0.0.1:53 and given the test's key, and
// returns its address.
func startSecondaryFromContrib(t *testing.T, port int, secret []byte) string {
	t.Helper()
	dir := tempDir(t, "nsd")
	snippet := contribSnippet(t, "nsd/secondary.conf", "192.0.2.53@53", "127.0.0.1@53")
	for from, to := range map[string]string{
		"192.0.2.53 ": "127.0.0.1 ",
		"RVhBTVBMRSB4ZnIga2V5OiBub3QgYSBzZWNyZXQhISE=": base64.StdEncoding.EncodeToString(secret),
		"xfr.example.org": "xfr.fleet.test",
		"bl.example.org":  fleetZone,
	} {
		if !strings.Contains(snippet, from) {
			t.Fatalf("contrib/nsd/secondary.conf has no %q", from)
		}
		snippet = strings.ReplaceAll(snippet, from, to)
	}
	p := startNSDConf(t, dir, nsdServerConf(dir, port)+snippet)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	testkit.WaitFor(t, "NSD to take the zone", 10*time.Second, func() error {
		if !p.running() {
			t.Fatalf("nsd exited: %v\n%s", p.err, p.out.String())
		}
		return testkit.Unless(dnsA(addr, dns.Fqdn("2.0.0.127."+fleetZone)) == "127.0.0.2", "no test point yet")
	})
	return addr
}

// dnsA asks addr for name's A record: "" for none (NXDOMAIN, an error).
func dnsA(addr, name string) string {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	c := &dns.Client{Timeout: time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		return ""
	}
	return dnstest.AnswerA(r)
}

// httpGet fetches u, which must answer 200 OK, and returns the body.
func httpGet(t *testing.T, u string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	return okBody(t, "GET "+u, resp, err)
}

// okBody returns the body of an answer that must be 200 OK; what names
// the request when it is not.
func okBody(t *testing.T, what string, resp *http.Response, err error) string {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: reading the answer: %v", what, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d\n%s", what, resp.StatusCode, body)
	}
	return string(body)
}

// contrib/knot/secondary.conf is a configuration Knot accepts, and its
// key is the one contrib/nsd/secondary.conf and examples/xfr.key carry.
// (The fleet test runs NSD from its snippet.)
func TestContribKnotSecondary(t *testing.T) {
	need(t, "knotc")
	dir := tempDir(t, "knot")
	conf := fmt.Sprintf("server:\n    rundir: %q\n    listen: 127.0.0.1@%d\ndatabase:\n    storage: %q\n", dir, testkit.FreeDNSPort(t), dir) +
		contribSnippet(t, "knot/secondary.conf", "192.0.2.53@53", "192.0.2.53@53")
	writeFile(t, filepath.Join(dir, "knot.conf"), conf)
	run(t, tool("knotc"), "-c", filepath.Join(dir, "knot.conf"), "conf-check")
	const secret = "RVhBTVBMRSB4ZnIga2V5OiBub3QgYSBzZWNyZXQhISE="
	for _, f := range []string{"../contrib/nsd/secondary.conf", "../examples/xfr.key"} {
		if b, err := os.ReadFile(f); err != nil || !strings.Contains(string(b), secret) {
			t.Errorf("%s does not carry the example secret of contrib/knot/secondary.conf (%v)", f, err)
		}
	}
}

// hostileZoneClients throws garbage at a zone server (random datagrams,
// cut and oversized messages, a TCP stream of junk, an unsigned AXFR) and
// checks it still answers and its process lives.
func hostileZoneClients(t *testing.T, addr string, p *proc) {
	t.Helper()
	uc, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	valid := new(dns.Msg)
	valid.SetQuestion(dns.Fqdn("2.0.0.127."+fleetZone), dns.TypeA)
	wire, _ := valid.Pack()
	buf := make([]byte, 4096)
	for i := range 2000 {
		var pkt []byte
		switch i % 4 {
		case 0: // random bytes
			pkt = buf[:1+mrand.IntN(len(buf)-1)]
			rand.Read(pkt)
		case 1: // a query cut short
			pkt = wire[:mrand.IntN(len(wire))]
		case 2: // a query with random bytes after it
			pkt = append(append([]byte(nil), wire...), buf[:mrand.IntN(512)]...)
		case 3: // a query with one byte changed
			pkt = append([]byte(nil), wire...)
			pkt[mrand.IntN(len(pkt))] ^= byte(1 + mrand.IntN(255))
		}
		uc.Write(pkt)
	}
	for range 5 {
		tc, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		junk := make([]byte, 70000)
		rand.Read(junk)
		tc.SetDeadline(time.Now().Add(2 * time.Second))
		tc.Write([]byte{0xff, 0xff}) // a length the stream never fills
		tc.Write(junk[:100])
		tc.Close()
	}
	axfr := new(dns.Msg)
	axfr.SetAxfr(dns.Fqdn(fleetZone))
	tr := &dns.Transfer{}
	if ch, err := tr.In(axfr, addr); err == nil {
		for env := range ch {
			if env.Error == nil {
				t.Error("an unsigned AXFR got records while a TSIG key is set")
			}
		}
	}
	if !p.running() {
		t.Fatalf("the zone's process exited: %v", p.err)
	}
	testkit.WaitFor(t, "the zone to answer after the garbage", 5*time.Second, func() error {
		return testkit.Unless(dnsA(addr, dns.Fqdn("2.0.0.127."+fleetZone)) == "127.0.0.2", "no answer")
	})
}
