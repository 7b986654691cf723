package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	writeFile(t, good, "[[list]]\nname = \"x\"\nzone = \"bl.example\"\n")
	bad := filepath.Join(dir, "bad.toml")
	writeFile(t, bad, `[milter]
listen = "tcp:127.0.0.1:8895"

[policy]
action = "bounce"

[[list]]
name = "x"
zone = "bl.example"
wieght = 3
`)
	missingFile := filepath.Join(dir, "missing.toml")
	writeFile(t, missingFile, "[[list]]\nname = \"local\"\nfile = \"no-such-list.txt\"\n")

	t.Run("good", func(t *testing.T) {
		code, out, errs := runCLI("config", "check", good)
		if code != 0 || !strings.Contains(out, "OK") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
		// The site's own list is not used to refuse mail: a warning, not a problem.
		if !strings.Contains(errs, "warning: the site's own list refuses no mail") {
			t.Errorf("no warning about the unused store: %q", errs)
		}
	})
	t.Run("every problem listed", func(t *testing.T) {
		code, _, errs := runCLI("config", "check", bad)
		if code != 1 {
			t.Fatalf("exit %d, want 1; stderr %q", code, errs)
		}
		for _, want := range []string{bad + ":2: milter.listen", bad + ":5: policy.action", bad + ":10: list[0].wieght", "3 problem(s)"} {
			if !strings.Contains(errs, want) {
				t.Errorf("stderr lacks %q:\n%s", want, errs)
			}
		}
	})
	t.Run("unreadable list file", func(t *testing.T) {
		code, _, errs := runCLI("-config", missingFile, "config", "check")
		if code != 1 || !strings.Contains(errs, missingFile+":3: list[0].file: ") || !strings.Contains(errs, "no-such-list.txt") {
			t.Fatalf("exit %d, stderr %q", code, errs)
		}
	})
	t.Run("no file", func(t *testing.T) {
		code, _, errs := runCLI("config", "check", filepath.Join(dir, "nope.toml"))
		if code != 1 || !strings.Contains(errs, "nope.toml") {
			t.Fatalf("exit %d, stderr %q", code, errs)
		}
	})
}

func TestCommandLine(t *testing.T) {
	tests := []struct {
		args      []string
		code      int
		out, errs string
	}{
		{args: []string{"version"}, code: 0, out: "blmilter "},
		{args: []string{"help"}, code: 0, out: "config check [FILE]"},
		{args: []string{"help", "config", "check"}, code: 0, out: "usage: blmilter config check"},
		{args: []string{"help", "check"}, code: 0, out: "-json"},
		{args: []string{"help", "config"}, code: 0, out: "- **`max_connections`**: integer, default `500`, reload: restart."},
		{args: []string{"help", "list"}, code: 0, out: "usage: blmilter list show"},
		{args: []string{"list"}, code: 2, errs: "usage: blmilter list add"},
		{args: []string{"list", "-h"}, code: 0, out: "usage: blmilter list remove"},
		{args: []string{"requests", "show"}, code: 2, errs: `unknown command "show"`},
		{args: []string{"list", "show", "-bogus"}, code: 2, errs: "flag provided but not defined: -bogus"},
		{args: []string{"help", "list", "add"}, code: 0, out: "-create"},
		{args: []string{"check"}, code: 2, errs: "at least one IP address expected"},
		{args: []string{"check", "mail.example.org"}, code: 2, errs: `"mail.example.org" is not an IP address`},
		{args: []string{"check", "--bogus", "192.0.2.1"}, code: 2, errs: "flag provided but not defined: -bogus"},
		{args: []string{"frobnicate"}, code: 2, errs: `unknown command "frobnicate"`},
		{args: []string{"version", "extra"}, code: 2, errs: "no arguments expected"},
		{args: []string{"-config", "/nonexistent/blmilter.toml", "check", "192.0.2.1"}, code: 1, errs: "/nonexistent/blmilter.toml"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errs := runCLI(tt.args...)
			if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errs, tt.errs) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tt.code, out, errs)
			}
		})
	}
}

var qname = testkit.QName

// testConfig is a config whose one DNS list is served by s, with the
// store in dir; the web service and the policy server stay off.
func testConfig(s *dnstest.Server, dir, extra string) string {
	return fmt.Sprintf(`[milter]
listen = "inet:127.0.0.1:0"

[web]
listen = ""
public_url = "https://lookup.example.org"

[store]
path = %q

[dns]
servers = [%q]
timeout = "1s"

[policy]
%s

[[list]]
name = "Test ZEN"
zone = "zen.test"
weight = 3
codes = { "127.0.0.4" = "zombie" }
`, filepath.Join(dir, "blmilter.db"), s.Addr, extra)
}

func TestCheckCommand(t *testing.T) {
	s := dnstest.Start(t)
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, TXT: []string{"exploited host"}, TTL: 600})
	dir := t.TempDir()
	path := filepath.Join(dir, "blmilter.toml")
	writeFile(t, path, testConfig(s, dir, ""))

	code, out, errs := runCLI("-config", path, "check", "192.0.2.7", "192.0.2.20", "127.0.0.1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"192.0.2.7: reject (score 3, threshold 3)",
		"reply: 550 5.7.1 Service unavailable; client [192.0.2.7] listed by Test ZEN (zombie); see https://lookup.example.org/ip/192.0.2.7",
		"127.0.0.4", "exploited host", "10m0s",
		"192.0.2.20: accept", "not listed",
		"127.0.0.1: accept (not looked up: loopback)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	code, out, errs = runCLI("check", "-config", path, "192.0.2.7", "--json")
	if code != 0 {
		t.Fatalf("--json: exit %d: %s", code, errs)
	}
	var got []checkResult
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if len(got) != 1 || got[0].IP != "192.0.2.7" || got[0].Verdict.Action != "reject" || got[0].Reply == nil || got[0].Reply.Code != 550 {
		t.Fatalf("--json: %+v", got)
	}
	l := got[0].Lists
	if len(l) != 1 || l[0].Status != "listed" || l[0].Category != "zombie" || l[0].Reason != "exploited host" ||
		len(l[0].Codes) != 1 || l[0].Codes[0] != "127.0.0.4" || l[0].TTLSeconds != 600 {
		t.Fatalf("--json lists: %+v", l)
	}
}

func TestReloadKeepsOldEngineOnBadConfig(t *testing.T) {
	s := dnstest.Start(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "blmilter.toml")
	writeFile(t, path, testConfig(s, dir, "threshold = 3"))
	d := newDaemon(path, slog.New(slog.DiscardHandler))
	d.grace = time.Hour
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.watch(cfg); err != nil {
		t.Fatal(err)
	}
	first, err := newEngine(cfg, d.deps)
	if err != nil {
		t.Fatal(err)
	}
	d.engine.Store(first)
	d.started = cfg
	defer d.closeEngines()

	writeFile(t, path, testConfig(s, dir, "threshold = \"high\""))
	got, err := d.reload()
	if err == nil || !strings.Contains(err.Error(), "policy.threshold") {
		t.Fatalf("reload of a broken file: err = %v, want the problem named", err)
	}
	if got != first || d.current() != first {
		t.Fatal("a broken file replaced the running engine")
	}

	writeFile(t, path, testConfig(s, dir, "threshold = 5"))
	got, err = d.reload()
	if err != nil {
		t.Fatal(err)
	}
	if got == first || d.current() != got || got.Threshold() != 5 {
		t.Fatalf("good reload: engine %p (first %p), threshold %v", got, first, got.Threshold())
	}
}

// TestServe runs the daemon as "blmilter serve" does and drives it with
// signals: SIGHUP with a good file, with a broken file, then SIGTERM.
func TestServe(t *testing.T) {
	s := dnstest.Start(t)
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
	// The health monitor probes the RFC 5782 test point at start.
	s.Set(qname("127.0.0.2", "zen.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	dir := t.TempDir()
	path := filepath.Join(dir, "blmilter.toml")
	// The milter, the policy server and the web service, all on loopback.
	serveConfig := func(policyTOML string) string {
		c := strings.Replace(testConfig(s, dir, policyTOML), "[web]\nlisten = \"\"", "[web]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"t0ken-t0ken-t0ken-t0ken-t0ken-t0ken\"", 1)
		return c + "\n[policyd]\nlisten = \"127.0.0.1:0\"\n"
	}
	td := startTestDaemon(t, path, serveConfig(""), 3)
	td.mu.Lock()
	addr := td.addrs["milter"]
	td.mu.Unlock()

	// The policy server and the web service answer with the same engine.
	pc, err := net.Dial("tcp", td.addr("policyd"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(pc, "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.7\nrecipient=user@example.net\n\n")
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(pc).ReadString('\n')
	pc.Close()
	if err != nil || !strings.HasPrefix(line, "action=550 5.7.1 ") || !strings.Contains(line, "[192.0.2.7]") {
		t.Fatalf("policy server: %q, %v", line, err)
	}
	resp, err := http.Get("http://" + td.addr("web") + "/api/v1/ip/192.0.2.7")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "Test ZEN") {
		t.Fatalf("web: %s %s", resp.Status, body)
	}
	// /metrics on the web service counts what the front ends did.
	metric := func(series string) string {
		t.Helper()
		resp, err := http.Get("http://" + td.addr("web") + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				return v
			}
		}
		return "absent"
	}
	if got := metric(`blmilter_policyd_requests_total{action="REJECT"}`); got != "1" {
		t.Errorf("policyd REJECT answers = %s, want 1", got)
	}
	if got := metric(`blmilter_list_healthy{list="Test ZEN"}`); got != "1" {
		t.Errorf("Test ZEN healthy = %s, want 1", got)
	}
	// blmilter stats reads the same counters through the admin API.
	code, out, errs := runCLI("stats", "-url", "http://"+td.addr("web"), "-token", "t0ken-t0ken-t0ken-t0ken-t0ken-t0ken")
	if code != 0 || !strings.Contains(out, "reject 1") || !regexp.MustCompile(`Test ZEN\s+1\s+0\s+0\s+0\s+0\s+1\s+1\s+0\s+healthy`).MatchString(out) {
		t.Errorf("stats: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := runCLI("stats", "-url", "http://"+td.addr("web"), "-token", "wrong"); code == 0 || !strings.Contains(errs, "401") {
		t.Errorf("stats with a wrong token: exit %d, %s", code, errs)
	}

	rcpt := func() string {
		t.Helper()
		cs, err := gomilter.NewClientWithOptions(addr.Network(), addr.String(), gomilter.ClientOptions{
			ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, ActionMask: gomilter.OptAddHeader,
		}).Session()
		if err != nil {
			t.Fatal(err)
		}
		defer cs.Close()
		if _, err := cs.Conn("[192.0.2.7]", gomilter.FamilyInet, 40000, "192.0.2.7"); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.Mail("sender@example.org", nil); err != nil {
			t.Fatal(err)
		}
		act, err := cs.Rcpt("user@example.net", nil)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%c %d %s", act.Code, act.SMTPCode, act.SMTPText)
	}
	if got := rcpt(); !strings.Contains(got, "550 5.7.1 Service unavailable; client [192.0.2.7]") {
		t.Fatalf("before reload: %q", got)
	}

	reloadTo := func(policyTOML string) error {
		t.Helper()
		_, err := td.reload(t, serveConfig(policyTOML))
		return err
	}
	if err := reloadTo(`reject_text = "Go away [{ip}]: {url}"`); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got := rcpt(); !strings.Contains(got, "550 5.7.1 Go away [192.0.2.7]: https://lookup.example.org/ip/192.0.2.7") {
		t.Fatalf("after reload: %q", got)
	}
	if err := reloadTo(`reject_text = 42`); err == nil || !strings.Contains(err.Error(), "policy.reject_text") {
		t.Fatalf("reload of a broken file: %v", err)
	}
	if got := rcpt(); !strings.Contains(got, "550 5.7.1 Go away [192.0.2.7]: https://lookup.example.org/ip/192.0.2.7") {
		t.Fatalf("after a broken reload: %q, want the previous policy", got)
	}

	if ok, bad := metric(`blmilter_config_reloads_total{result="ok"}`), metric(`blmilter_config_reloads_total{result="error"}`); ok != "1" || bad != "1" {
		t.Errorf("reloads ok=%s error=%s, want 1 and 1", ok, bad)
	}
	if got := metric(`blmilter_checks_total{action="reject"}`); got == "absent" || got == "0" {
		t.Errorf("reject checks = %s", got)
	}

	if err := td.stop(t); err != nil {
		t.Fatalf("run after SIGTERM: %v", err)
	}
	if c, err := net.DialTimeout(addr.Network(), addr.String(), time.Second); err == nil {
		c.Close()
		t.Fatal("still accepting after shutdown")
	}
}

func TestServeStartFailureClosesListeners(t *testing.T) {
	s := dnstest.Start(t)
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	sock := filepath.Join(dir, "milter.sock")
	text := strings.Replace(testConfig(s, dir, ""), `listen = "inet:127.0.0.1:0"`, fmt.Sprintf("listen = %q", "unix:"+sock), 1)
	text = strings.Replace(text, "[web]\nlisten = \"\"", fmt.Sprintf("[web]\nlisten = %q", busy.Addr().String()), 1)
	path := filepath.Join(dir, "blmilter.toml")
	writeFile(t, path, text)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	d := newDaemon(path, slog.New(slog.DiscardHandler))
	err = d.run(cfg, make(chan os.Signal))
	if err == nil || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("run with the web port taken: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("milter socket left behind after a failed start: %v", err)
	}
}

// check asks the site's own list too, opening the store read-only.
func TestCheckAsksTheSiteList(t *testing.T) {
	s := dnstest.Start(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "blmilter.toml")
	writeFile(t, path, testConfig(s, dir, "")+"\n[[list]]\nname = \"Our list\"\nstore = true\nweight = 5\n")
	if code, _, errs := runCLI("-config", path, "list", "add", "192.0.2.50", "-category", "spam-source", "-create"); code != 0 {
		t.Fatalf("list add: %s", errs)
	}
	code, out, errs := runCLI("-config", path, "check", "192.0.2.50")
	if code != 0 || !strings.Contains(out, "192.0.2.50: reject") || !regexp.MustCompile(`Our list\s+listed\s+-\s+spam-source`).MatchString(out) {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
}

func TestMain(m *testing.M) { os.Exit(testkit.Main(m)) }
