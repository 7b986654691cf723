package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/store"
)

// Bounds of the kill -9 test: the burst stops at whichever comes first.
const (
	burstMaxRequests = 400              // removal requests sent at most
	burstMaxTime     = 30 * time.Second // the burst runs at most this long
	burstKillAfter   = 50               // acknowledgements before the kill
	burstWorkers     = 8                // goroutines sending at once
	burstPerSource   = 4                // requests per client address (the limit is 5 an hour)
	burstFirstSource = 2                // client addresses are 127.0.0.2, 127.0.0.3, ...
)

// burstReceived is in the page that answers a stored removal request when
// no mail relay is configured.
const burstReceived = "Request received"

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// TestKill9DuringRemovalBurst kills the daemon (SIGKILL) in the middle of a
// burst of removal requests sent through the web form, restarts it on the
// same database and checks that every request whose POST was answered as
// stored is there.
func TestKill9DuringRemovalBurst(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it as a daemon")
	}
	dir := t.TempDir()
	bin := testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")
	db := filepath.Join(dir, "blmilter.db")
	addr := testkit.FreeAddr(t)
	base := "http://" + addr
	cfgPath := filepath.Join(dir, "blmilter.toml")
	writeFile(t, cfgPath, siteWebConfig(addr, base, db, ""))

	ips := []string{"198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4"}
	args := append([]string{"list", "add"}, ips...)
	args = append(args, "-db", db, "-create", "-category", "spam-source", "-reason", "kill -9 test")
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("blmilter list add: %v\n%s", err, out)
	}

	d := startDaemon(t, bin, cfgPath, base)

	// One form token per listed IP, from its status page; a token is good
	// for any client until the daemon's secret changes with a restart.
	plain := &http.Client{Timeout: 10 * time.Second}
	tokens := make([]string, len(ips))
	for i, ip := range ips {
		tokens[i] = removalToken(t, plain, base, ip, d)
	}

	// One transport per client address, so that each address stays under
	// the per-client removal limit.
	nSources := (burstMaxRequests + burstPerSource - 1) / burstPerSource
	if burstFirstSource+nSources > 250 {
		t.Fatalf("%d client addresses needed, more than 127.0.0.2-250", nSources)
	}
	clients := make([]*http.Client, nSources)
	for i := range clients {
		local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(burstFirstSource+i))}
		tr := &http.Transport{
			DialContext:     (&net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:    1,
			IdleConnTimeout: 30 * time.Second,
		}
		t.Cleanup(tr.CloseIdleConnections)
		clients[i] = &http.Client{Transport: tr, Timeout: 5 * time.Second}
	}

	type ack struct{ email, ip string }
	var (
		mu         sync.Mutex
		acked      []ack
		unexpected []string // answers other than "stored" while the daemon ran
		inFlight   int      // requests sent before the kill that got no answer
		next       atomic.Int64
		killed     atomic.Bool
		stop       = make(chan struct{})
		enough     = make(chan struct{})
		enoughOnce sync.Once
		wg         sync.WaitGroup
	)
	deadline := time.Now().Add(burstMaxTime)
	for range burstWorkers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := int(next.Add(1) - 1)
				if i >= burstMaxRequests || time.Now().After(deadline) {
					return
				}
				sentBeforeKill := !killed.Load()
				ip, tok := ips[i%len(ips)], tokens[i%len(ips)]
				email := fmt.Sprintf("burst%d@example.org", i)
				form := url.Values{"csrf": {tok}, "email": {email}, "reason": {fmt.Sprintf("fixed, request %d", i)}}
				code, body, err := postForm(clients[i/burstPerSource], base+"/ip/"+ip+"/removal", form)
				mu.Lock()
				switch {
				case err != nil:
					if !killed.Load() {
						unexpected = append(unexpected, fmt.Sprintf("request %d: %v", i, err))
					} else if sentBeforeKill {
						inFlight++
					}
				case code == http.StatusOK && strings.Contains(body, burstReceived):
					// The whole answer arrived: the daemon acknowledged it.
					acked = append(acked, ack{email, ip})
					if len(acked) >= burstKillAfter {
						enoughOnce.Do(func() { close(enough) })
					}
				default:
					unexpected = append(unexpected, fmt.Sprintf("request %d: status %d: %.200q", i, code, body))
				}
				mu.Unlock()
			}
		})
	}
	burstDone := make(chan struct{})
	go func() { wg.Wait(); close(burstDone) }()

	start := time.Now()
	select {
	case <-enough:
	case <-burstDone:
	case <-time.After(burstMaxTime + 5*time.Second):
	}
	// No new requests from here; those in flight meet the kill.
	killed.Store(true)
	close(stop)
	d.kill()
	killedAt := time.Since(start)
	select {
	case <-burstDone:
	case <-time.After(15 * time.Second):
		t.Fatal("the burst did not stop within 15s of the kill")
	}

	mu.Lock()
	defer mu.Unlock()
	if len(unexpected) > 0 {
		t.Errorf("%d requests answered otherwise than stored before the kill; first: %s\ndaemon log:\n%s",
			len(unexpected), unexpected[0], d.log.String())
	}
	sent := min(int(next.Load()), burstMaxRequests)
	if len(acked) < burstKillAfter {
		t.Fatalf("only %d of %d requests acknowledged before the kill (after %v)\ndaemon log:\n%s",
			len(acked), sent, killedAt.Round(time.Millisecond), d.log.String())
	}
	t.Logf("killed after %v: %d requests acknowledged, %d in flight at the kill, %d sent",
		killedAt.Round(time.Millisecond), len(acked), inFlight, sent)

	// The daemon starts again on the database it left behind and takes
	// new requests.
	d2 := startDaemon(t, bin, cfgPath, base)
	tok := removalToken(t, plain, base, ips[0], d2)
	code, body, err := postForm(plain, base+"/ip/"+ips[0]+"/removal", url.Values{
		"csrf": {tok}, "email": {"after-restart@example.org"}, "reason": {"after the restart"},
	})
	if err != nil || code != http.StatusOK || !strings.Contains(body, burstReceived) {
		t.Errorf("removal request after the restart: status %d, err %v, body %.300q\ndaemon log:\n%s", code, err, body, d2.log.String())
	}

	s, err := store.Open(db, store.Options{PollInterval: -1})
	if err != nil {
		t.Fatalf("open the store after kill -9: %v", err)
	}
	defer s.Close()
	all, err := s.Requests(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]store.RemovalRequest{}
	for _, r := range all {
		if prev, dup := have[r.Email]; dup {
			t.Errorf("%s has two requests, %d and %d; each was sent once", r.Email, prev.ID, r.ID)
		}
		have[r.Email] = r
	}
	missing := 0
	for _, a := range acked {
		r, ok := have[a.email]
		switch {
		case !ok:
			missing++
			if missing <= 5 {
				t.Errorf("acknowledged request of %s for %s is not in the database", a.email, a.ip)
			}
		case r.IP.String() != a.ip || !r.Open():
			t.Errorf("request %d of %s: %s %s, acknowledged for %s as an open request", r.ID, a.email, r.IP, r.Status, a.ip)
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged requests lost by kill -9", missing, len(acked))
	}
	if _, ok := have["after-restart@example.org"]; !ok {
		t.Error("the request made after the restart is not in the database")
	}
	t.Logf("%d requests in the database after the restart (%d acknowledged before the kill, 1 after the restart)",
		len(all), len(acked))

	checkIntegrity(t, db)
}

// siteWebConfig is a config with the lookup service on addr, public at
// base, and the site's own list in db as the only list: no DNS list is
// asked. webExtra goes at the end of [web] (more keys, or its
// subsections).
func siteWebConfig(addr, base, db, webExtra string) string {
	return fmt.Sprintf(`[milter]
listen = ""

[web]
listen = %q
public_url = %q
lookup_rate = 10000
lookup_burst = 10000
%s
[store]
path = %q

[dns]
servers = ["127.0.0.1:1"]
timeout = "200ms"

[health]
interval = "24h"

[[list]]
name = "site"
store = true
weight = 5
`, addr, base, webExtra, db)
}

// daemonProc is a running "blmilter serve".
type daemonProc struct {
	cmd  *exec.Cmd
	log  *testkit.Buffer
	done chan struct{} // closed when the process has exited
}

// kill sends SIGKILL and waits for the process to exit.
func (d *daemonProc) kill() {
	d.cmd.Process.Kill()
	<-d.done
}

// runServe runs "bin -config cfg serve" and returns at once; the process
// is killed when the test ends. Its output is kept: the first logMax bytes
// of it, or all of it with logMax 0.
func runServe(t *testing.T, bin, cfg string, logMax int) *daemonProc {
	t.Helper()
	d := &daemonProc{cmd: exec.Command(bin, "-config", cfg, "serve"), log: &testkit.Buffer{Max: logMax}, done: make(chan struct{})}
	d.cmd.Stdout = d.log
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(d.kill)
	return d
}

// exitCode waits for the process to exit on its own and returns its exit
// code; within bounds the wait.
func (d *daemonProc) exitCode(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(within):
		t.Fatalf("serve did not stop within %v\n%s", within, d.log.String())
	}
	return d.cmd.ProcessState.ExitCode()
}

// startDaemon starts "bin -config cfg serve" and waits until its /healthz
// answers. The process is killed when the test ends.
func startDaemon(t *testing.T, bin, cfg, base string) *daemonProc {
	t.Helper()
	d := runServe(t, bin, cfg, 1<<20)
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("blmilter serve exited at start: %v\n%s", d.cmd.ProcessState, d.log.String())
		default:
		}
		resp, err := c.Get(base + "/healthz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("blmilter serve: /healthz did not answer within 20s (last error %v)\n%s", err, d.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removalToken fetches ip's status page and returns the removal form's token.
func removalToken(t *testing.T, c *http.Client, base, ip string, d *daemonProc) string {
	t.Helper()
	resp, err := c.Get(base + "/ip/" + ip)
	if err != nil {
		t.Fatalf("status page of %s: %v", ip, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("status page of %s: %v", ip, err)
	}
	m := csrfField.FindSubmatch(body)
	if resp.StatusCode != http.StatusOK || m == nil {
		t.Fatalf("status page of %s: status %d, no removal form\n%s\ndaemon log:\n%s", ip, resp.StatusCode, body, d.log.String())
	}
	return string(m[1])
}

// postForm posts form and returns the status and the whole body; an error
// means the answer did not arrive whole.
func postForm(c *http.Client, u string, form url.Values) (int, string, error) {
	resp, err := c.PostForm(u, form)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", err
	}
	return resp.StatusCode, string(body), nil
}

// checkIntegrity runs SQLite's integrity check on the database file.
func checkIntegrity(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&res); err != nil || res != "ok" {
		t.Errorf("integrity_check after kill -9 and restart: %q, %v", res, err)
	}
}
