package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
)

// Bounds of the reload test's load: it stops at whichever comes first.
const (
	reloads          = 100
	reloadWorkers    = 4
	reloadMaxPerConn = 20000
	reloadMaxTime    = 2 * time.Minute
)

// listedByGood is the one client the honest list lists: its reject shows
// the daemon does refuse what a healthy list lists.
const listedByGood = "198.18.200.1"

// brokenDNS starts a DNS server with an honest list (good.test) and lists
// that answer 127.0.0.2 for every address (broken.test, broken2.test).
// Their probe of 127.0.0.1 answers after probeDelay, so a list stays
// unproven for that long: long enough for a check to slip in if anything
// counted it before its first round.
func brokenDNS(t *testing.T, probeDelay time.Duration) *dnstest.Server {
	s := dnstest.Start(t)
	s.SetZone("good.test", dnstest.Answer{Rcode: dns.RcodeNameError})
	s.Set(qname("127.0.0.2", "good.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	s.Set(qname(listedByGood, "good.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	for _, z := range []string{"broken.test", "broken2.test"} {
		s.SetZone(z, dnstest.Answer{A: []string{"127.0.0.2"}})
		s.Set(qname("127.0.0.1", z), dnstest.Answer{A: []string{"127.0.0.2"}, Delay: probeDelay})
	}
	return s
}

// brokenConfig is a config with the honest list and a broken one named
// name in zone.
func brokenConfig(dns *dnstest.Server, dir, policydAddr, webAddr, name, zone, deadline string) string {
	return fmt.Sprintf(`[milter]
listen = ""

[policyd]
listen = %q

[web]
listen = %q
public_url = "http://%s"
admin_token = "0123456789abcdef0123456789abcdef"

[store]
path = %q

[log]
level = "info"
format = "json"

[dns]
servers = [%q]
timeout = "1s"

[health]
interval = "24h"

[policy]
deadline = %q

[[list]]
name = "Good"
zone = "good.test"
weight = 3
ipv6 = false

[[list]]
name = %q
zone = %q
weight = 3
ipv6 = false
`, policydAddr, webAddr, webAddr, filepath.Join(dir, "blmilter.db"), dns.Addr, deadline, name, zone)
}

// policyClient is one Postfix-like policy connection.
type policyClient struct {
	c net.Conn
	r *bufio.Reader
}

func dialPolicy(addr string, within time.Duration) (*policyClient, error) {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return &policyClient{c: c, r: bufio.NewReader(c)}, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ask sends one RCPT request for ip and returns the action.
func (p *policyClient) ask(ip string) (string, error) {
	p.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(p.c, "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=%s\nrecipient=user@example.net\n\n", ip); err != nil {
		return "", err
	}
	line, err := p.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if _, err := p.r.ReadString('\n'); err != nil { // the empty line ending the answer
		return "", err
	}
	return strings.TrimPrefix(strings.TrimSpace(line), "action="), nil
}

// refused reports whether a policy action refuses the client.
func refused(action string) bool { return action != "DUNNO" && !strings.HasPrefix(action, "PREPEND") }

// clientIP is the n-th client address of worker w, never listedByGood.
func clientIP(w, n int) string {
	return netip.AddrFrom4([4]byte{198, 18, byte(w), byte(1 + n%250)}).String()
}

// startServe runs "blmilter -config cfg serve" and returns at once; the
// process is killed when the test ends. Its whole output is kept.
func startServe(t *testing.T, cfg string) *daemonProc {
	t.Helper()
	return runServe(t, testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter"), cfg, 0)
}

// A list that answers everything never refuses a client: not at start,
// before its first probe round, and not across 100 reloads under load,
// whether a reload keeps the list (it stays degraded) or changes it (it is
// unproven until its round).
func TestBrokenListNeverRefusesAcrossReloads(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary under load")
	}
	s := brokenDNS(t, 300*time.Millisecond)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "blmilter.toml")
	policydAddr, webAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	config := func(i int) string {
		name, zone, deadline := "Broken", "broken.test", "2s"
		if i%10 >= 5 { // every fifth reload changes the list's zone: unproven again
			zone = "broken2.test"
		}
		if i%25 == 12 { // and now and then its name: a new list
			name = "Broken B"
		}
		if i%2 == 1 { // a live setting changes too
			deadline = "3s"
		}
		return brokenConfig(s, dir, policydAddr, webAddr, name, zone, deadline)
	}
	writeFile(t, cfgPath, config(0))
	d := startServe(t, cfgPath)
	testkit.WaitFor(t, "/healthz", 20*time.Second, func() error {
		resp, err := http.Get("http://" + webAddr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return testkit.Unless(resp.StatusCode == http.StatusOK, "status %d", resp.StatusCode)
	})

	var asked, refusals atomic.Int64
	var firstRefusal atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range reloadWorkers {
		wg.Go(func() {
			c, err := dialPolicy(policydAddr, 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.c.Close()
			for n := 0; n < reloadMaxPerConn; n++ {
				select {
				case <-stop:
					return
				default:
				}
				// Each address once per 250 requests: most checks ask DNS.
				ip := clientIP(w+1, n)
				action, err := c.ask(ip)
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
				asked.Add(1)
				if refused(action) {
					refusals.Add(1)
					firstRefusal.CompareAndSwap(nil, ip+": "+action)
				}
			}
		})
	}
	deadline := time.Now().Add(reloadMaxTime)
	done := 0
	for i := 1; i <= reloads && time.Now().Before(deadline); i++ {
		writeFile(t, cfgPath, config(i))
		d.cmd.Process.Signal(syscall.SIGHUP)
		testkit.WaitFor(t, fmt.Sprintf("reload %d", i), 30*time.Second, func() error {
			n := strings.Count(d.log.String(), `"msg":"config reloaded"`)
			return testkit.Unless(n >= i, "%d reloads logged", n)
		})
		done = i
	}
	close(stop)
	wg.Wait()

	t.Logf("%d reloads, %d policy requests answered meanwhile, %d refused", done, asked.Load(), refusals.Load())
	if done < reloads {
		t.Errorf("only %d of %d reloads within %v", done, reloads, reloadMaxTime)
	}
	if refusals.Load() > 0 {
		t.Errorf("%d clients refused by a list that answers everything (first: %v)", refusals.Load(), firstRefusal.Load())
	}
	if asked.Load() < 1000 {
		t.Errorf("only %d requests during the reloads: not a load", asked.Load())
	}
	log := d.log.String()
	for _, flag := range []string{":degraded", ":unproven"} {
		if !strings.Contains(log, flag+`"`) {
			t.Errorf("no hit of the broken list logged as %s: the test did not see the state it is about", flag)
		}
	}
	if strings.Contains(log, "reload failed") {
		t.Error("a reload failed")
	}

	// The daemon does refuse what a proven list lists.
	c, err := dialPolicy(policydAddr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.c.Close()
	if action, err := c.ask(listedByGood); err != nil || !strings.HasPrefix(action, "550 5.7.1") {
		t.Errorf("client listed by the honest list: %q, %v; want 550", action, err)
	}
	// The metrics say which state each list is in (the last reload
	// changed Broken's zone: it is degraded once its round ends).
	testkit.WaitFor(t, "the broken list degraded in /metrics", 10*time.Second, func() error {
		metrics := httpGet(t, "http://"+webAddr+"/metrics")
		for _, want := range []string{
			`blmilter_list_healthy{list="Good"} 1`,
			`blmilter_list_state{list="Broken",state="degraded"} 1`,
			`blmilter_list_state{list="Broken",state="unproven"} 0`,
			`blmilter_list_healthy{list="Broken"} 0`,
		} {
			if !strings.Contains(metrics, want) {
				return fmt.Errorf("/metrics lacks %s", want)
			}
		}
		if strings.Contains(metrics, `blmilter_list_state{list="Broken B"`) {
			return fmt.Errorf(`/metrics still shows the state of "Broken B", which the config no longer has`)
		}
		return nil
	})
}

// At start no client is judged before the first probe round: the policy
// server holds the first connections until the broken list is degraded.
func TestBrokenListNeverRefusesAtStart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	s := brokenDNS(t, 500*time.Millisecond)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "blmilter.toml")
	policydAddr := testkit.FreeAddr(t)
	writeFile(t, cfgPath, brokenConfig(s, dir, policydAddr, testkit.FreeAddr(t), "Broken", "broken.test", "2s"))
	start := time.Now()
	d := startServe(t, cfgPath)

	// Clients connect the moment the port is open, as Postfix would.
	var wg sync.WaitGroup
	var refusals, asked atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			c, err := dialPolicy(policydAddr, 10*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.c.Close()
			for n := range 20 {
				action, err := c.ask(clientIP(w+1, n))
				if err != nil {
					t.Error(err)
					return
				}
				asked.Add(1)
				if refused(action) {
					refusals.Add(1)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d requests from the start on, %d refused, all answered %v after the start (the broken list's first round takes 500 ms)",
		asked.Load(), refusals.Load(), time.Since(start).Round(time.Millisecond))
	if refusals.Load() > 0 {
		t.Errorf("%d clients refused at start by a list that answers everything\n%s", refusals.Load(), d.log.String())
	}
	log := d.log.String()
	if i, j := strings.Index(log, "list degraded"), strings.Index(log, "blmilter started"); i < 0 || j < 0 || i > j {
		t.Errorf("the broken list was not degraded before blmilter started serving:\n%s", log)
	}
}

// At start, a list whose first round cannot finish within the bound stays
// unproven (logged), and mail flows without it meanwhile.
func TestStartDoesNotWaitForeverForProbes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	s := brokenDNS(t, 0)
	s.SetZone("slow.test", dnstest.Answer{A: []string{"127.0.0.2"}, Delay: 900 * time.Millisecond})
	// The client's own answer is quick: a check waits for an unproven list
	// only briefly, as for a degraded one.
	s.Set(qname("198.18.7.7", "slow.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "blmilter.toml")
	policydAddr := testkit.FreeAddr(t)
	// The probe asks three test points one after another, answering after
	// 4 s, 4 s and 0.9 s: more than the 5 s bound, so the round is still
	// running when serving starts.
	webAddr := testkit.FreeAddr(t)
	cfg := strings.Replace(brokenConfig(s, dir, policydAddr, webAddr, "Slow", "slow.test", "2s"), "[health]\n", "[health]\ntimeout = \"5s\"\n", 1)
	s.Set(qname("127.0.0.2", "slow.test"), dnstest.Answer{A: []string{"127.0.0.2"}, Delay: 4 * time.Second})
	s.Set(qname("127.0.0.1", "slow.test"), dnstest.Answer{Rcode: dns.RcodeNameError, Delay: 4 * time.Second})
	writeFile(t, cfgPath, cfg)
	testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter") // built before the clock starts
	start := time.Now()
	d := startServe(t, cfgPath)
	c, err := dialPolicy(policydAddr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.c.Close()
	action, err := c.ask("198.18.7.7") // listed by slow.test, which is not proven yet
	if err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	if refused(action) {
		t.Errorf("refused by an unproven list: %s", action)
	}
	if el > 8*time.Second {
		t.Errorf("first answer after %v: start waited for the probes beyond its bound", el)
	}
	testkit.WaitFor(t, "the warning about unproven lists", 5*time.Second, func() error {
		return testkit.Unless(strings.Contains(d.log.String(), "lists not yet checked"), "not logged:\n%s", d.log.String())
	})
	testkit.WaitFor(t, "the decision with the unproven hit", 5*time.Second, func() error {
		return testkit.Unless(strings.Contains(d.log.String(), `"Slow:listed:127.0.0.2:unproven"`), "not logged:\n%s", d.log.String())
	})

	// The operator sees it: blmilter stats and the lookup page.
	code, out, errs := runCLI("stats", "-url", "http://"+webAddr, "-token", "0123456789abcdef0123456789abcdef")
	if code != 0 {
		t.Fatalf("stats: exit %d: %s", code, errs)
	}
	if !regexp.MustCompile(`(?m)^Slow .*NOT YET CHECKED`).MatchString(out) || !regexp.MustCompile(`(?m)^Good .*healthy`).MatchString(out) {
		t.Errorf("blmilter stats does not show Slow as not yet checked and Good as healthy:\n%s", out)
	}
	// Slow's answer counts as unproven: neither listed nor degraded.
	if !regexp.MustCompile(`(?m)^Slow\s+0\s+0\s+0\s+0\s+1\s`).MatchString(out) {
		t.Errorf("blmilter stats does not count Slow's answer as unproven:\n%s", out)
	}
	if page := httpGet(t, "http://"+webAddr+"/ip/198.18.7.7"); !strings.Contains(page, "not yet checked") {
		t.Errorf("the lookup page does not say the list is not yet checked:\n%s", page)
	}
}
