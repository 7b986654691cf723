package main

import (
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
)

// storeConfig is a config whose site's own list refuses mail, with the
// policy server, the web service and a log file.
func storeConfig(s *dnstest.Server, dir, policydAddr, webAddr, extraStore string) string {
	return fmt.Sprintf(`[milter]
listen = ""

[policyd]
listen = %q

[web]
listen = %q
public_url = "http://%s"

[store]
path = %q
%s

[log]
format = "json"
file = %q

[dns]
servers = [%q]

[health]
interval = "24h"

[[list]]
name = "Site"
store = true
weight = 5
`, policydAddr, webAddr, webAddr, filepath.Join(dir, "blmilter.db"), extraStore, filepath.Join(dir, "blmilter.log"), s.Addr)
}

// healthz returns /healthz's status and body.
func healthz(base string) (int, string, error) { return getURL(base + "/healthz") }

// getURL returns the status and body of a GET.
func getURL(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// getStatus returns the status and body of a GET that must be answered.
func getStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	code, body, err := getURL(url)
	if err != nil {
		t.Fatal(err)
	}
	return code, body
}

// httpGet returns the body of a GET that must be answered, whatever its
// status.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	_, body := getStatus(t, url)
	return body
}

// By default a store that cannot be opened stops the start, with the
// reason on stderr and in the configured log, and nothing else logged.
func TestServeRefusesToStartWithoutStore(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	s := dnstest.Start(t)
	tests := []struct {
		name    string
		prepare func(t *testing.T, db string)
		want    string // in the reason
	}{
		{"not a database", func(t *testing.T, db string) {
			writeFile(t, db, strings.Repeat("this is not an SQLite file\n", 200))
		}, "not a database"},
		{"locked by another process", func(t *testing.T, db string) {
			if code, _, errs := runCLI("list", "add", "198.18.9.9", "-db", db, "-create"); code != 0 {
				t.Fatalf("list add: %s", errs)
			}
			holdWriteLock(t, db)
		}, "locked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.prepare(t, filepath.Join(dir, "blmilter.db"))
			cfgPath := filepath.Join(dir, "blmilter.toml")
			writeFile(t, cfgPath, storeConfig(s, dir, testkit.FreeAddr(t), testkit.FreeAddr(t), ""))
			d := startServe(t, cfgPath)
			if code := d.exitCode(t, 20*time.Second); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			stderr := d.log.String()
			for _, want := range []string{"cannot be opened", tt.want, "required = false"} {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr)
				}
			}
			b, err := os.ReadFile(filepath.Join(dir, "blmilter.log"))
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], `"msg":"blmilter did not start"`) || !strings.Contains(lines[0], tt.want) {
				t.Errorf("log file: want the one line saying why blmilter did not start, got:\n%s", b)
			}
		})
	}
}

// holdWriteLock takes the store's write lock in this process (another
// process than the daemon) until the test ends.
func holdWriteLock(t *testing.T, db string) {
	t.Helper()
	other, err := sql.Open("sqlite", "file:"+db+"?_pragma=busy_timeout(1000)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	lock, err := other.Begin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lock.Rollback()
		other.Close()
	})
}

// With [store] required = false, serve starts without the store, says so
// on /healthz and in the metrics, keeps retrying, and uses the site's list
// the moment the store opens: a SIGHUP retries at once.
func TestServeRetriesStore(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	s := dnstest.Start(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	if code, _, errs := runCLI("list", "add", "198.18.9.9", "-db", good, "-create"); code != 0 {
		t.Fatalf("list add: %s", errs)
	}
	db := filepath.Join(dir, "blmilter.db")
	writeFile(t, db, strings.Repeat("a disk fault left this behind\n", 200))
	cfgPath := filepath.Join(dir, "blmilter.toml")
	policydAddr, webAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	writeFile(t, cfgPath, storeConfig(s, dir, policydAddr, webAddr, "required = false"))
	base := "http://" + webAddr
	d := startServe(t, cfgPath)

	testkit.WaitFor(t, "/healthz 503", 20*time.Second, func() error {
		code, body, err := healthz(base)
		if err != nil {
			return err
		}
		return testkit.Unless(code == http.StatusServiceUnavailable && strings.Contains(body, "store unavailable") && strings.Contains(body, "not a database"),
			"%d %q", code, body)
	})
	if m := httpGet(t, base+"/metrics"); !strings.Contains(m, "blmilter_store_up 0") {
		t.Error("blmilter_store_up is not 0 while the store is missing")
	}
	c, err := dialPolicy(policydAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.c.Close()
	if action, err := c.ask("198.18.9.9"); err != nil || action != "DUNNO" {
		t.Fatalf("without the store: %q, %v; want DUNNO (mail flows)", action, err)
	}

	// The retries back off: wait until the next one is 8 s away, then
	// repair the file and send SIGHUP.
	logFile := filepath.Join(dir, "blmilter.log")
	testkit.WaitFor(t, "a retry 8 s away", 30*time.Second, func() error {
		b, _ := os.ReadFile(logFile)
		return testkit.Unless(strings.Contains(string(b), `"retry_in":"8s"`), "not yet:\n%s", b)
	})
	if err := os.Rename(good, db); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	start := time.Now()
	testkit.WaitFor(t, "/healthz 200 after SIGHUP", 4*time.Second, func() error {
		code, body, err := healthz(base)
		if err != nil {
			return err
		}
		return testkit.Unless(code == http.StatusOK, "%d %q", code, body)
	})
	t.Logf("the store was in use %v after SIGHUP", time.Since(start).Round(time.Millisecond))
	if action, err := c.ask("198.18.9.9"); err != nil || !strings.HasPrefix(action, "550 5.7.1") {
		t.Errorf("with the store open: %q, %v; want 550 from the site's list", action, err)
	}
	if m := httpGet(t, base+"/metrics"); !strings.Contains(m, "blmilter_store_up 1") {
		t.Error("blmilter_store_up is not 1 once the store is open")
	}
	b, _ := os.ReadFile(logFile)
	if !strings.Contains(string(b), "store opened: the site's own list is used from now on") {
		t.Errorf("no log line for the store opening:\n%s", b)
	}
}

// A daemon that cannot bind says why in its log file, and nothing else:
// no list is probed, so no probe cut short reads as a list failure.
func TestBindFailureLogged(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	s := dnstest.Start(t)
	s.SetZone("bl.test", dnstest.Answer{Silent: true}) // a probe would hang until cancelled
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, server := range []string{"milter", "policyd"} {
		t.Run(server, func(t *testing.T) {
			dir := t.TempDir()
			milterAddr, policydAddr := "inet:"+testkit.FreeAddr(t), testkit.FreeAddr(t)
			if server == "milter" {
				milterAddr = "inet:" + taken.Addr().String()
			} else {
				policydAddr = taken.Addr().String()
			}
			cfgPath := filepath.Join(dir, "blmilter.toml")
			logPath := filepath.Join(dir, "blmilter.log")
			writeFile(t, cfgPath, fmt.Sprintf(`[milter]
listen = %q
[policyd]
listen = %q
[web]
listen = ""
public_url = "https://lookup.example.org"
[store]
path = %q
[log]
file = %q
[dns]
servers = [%q]
[[list]]
name = "BL"
zone = "bl.test"
`, milterAddr, policydAddr, filepath.Join(dir, "blmilter.db"), logPath, s.Addr))
			d := startServe(t, cfgPath)
			if code := d.exitCode(t, 20*time.Second); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if !strings.Contains(d.log.String(), "address already in use") {
				t.Errorf("stderr lacks the reason:\n%s", d.log.String())
			}
			b, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], "blmilter did not start") || !strings.Contains(lines[0], "address already in use") {
				t.Errorf("log file: want the one line saying why blmilter did not start, got:\n%s", b)
			}
		})
	}
}

// The site's own list refuses no mail without a [[list]] store = true:
// config check and serve say so when the store is in use, by the lookup
// service (its removal form, its admin API) or by listings, and stay
// quiet when it is not.
func TestStoreUnusedWarned(t *testing.T) {
	s := dnstest.Start(t)
	tests := []struct {
		name      string
		web       string
		storeTOML string
		listings  bool
		warn      bool
	}{
		{"lookup service on", "127.0.0.1:0", "", false, true},
		{"nothing uses the store", "", "", false, false},
		{"listings nobody uses", "", "", true, true},
		{"a store list", "127.0.0.1:0", "[[list]]\nname = \"Site\"\nstore = true\n", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "blmilter.toml")
			text := strings.Replace(testConfig(s, dir, ""), "[web]\nlisten = \"\"", "[web]\nlisten = \""+tt.web+"\"", 1) + tt.storeTOML
			writeFile(t, path, text)
			if tt.listings {
				if code, _, errs := runCLI("list", "add", "192.0.2.50", "-db", filepath.Join(dir, "blmilter.db"), "-create"); code != 0 {
					t.Fatalf("list add: %s", errs)
				}
			}
			code, _, errs := runCLI("config", "check", path)
			if code != 0 {
				t.Fatalf("config check: exit %d: %s", code, errs)
			}
			if got := strings.Contains(errs, "refuses no mail"); got != tt.warn {
				t.Errorf("config check warned %v, want %v: %q", got, tt.warn, errs)
			}
			cfg, err := loadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			logs := &testkit.Buffer{}
			d := newDaemon(path, slog.New(slog.NewTextHandler(logs, nil)))
			closeStore, err := d.openStore(cfg)
			if err != nil {
				t.Fatal(err)
			}
			closeStore()
			if got := strings.Contains(logs.String(), "refuses no mail"); got != tt.warn {
				t.Errorf("serve warned %v, want %v: %s", got, tt.warn, logs.String())
			}
		})
	}
}
