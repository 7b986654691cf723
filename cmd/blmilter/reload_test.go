package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/logging"
)

// testDaemon is a daemon run as "blmilter serve" runs it, in this process,
// logging JSON at debug level into log.
type testDaemon struct {
	d        *daemon
	path     string
	log      *testkit.Buffer
	sigs     chan os.Signal
	reloaded chan error
	stopped  chan struct{} // closed when run returns
	err      error         // what run returned, once stopped is closed

	mu    sync.Mutex
	addrs map[string]net.Addr
}

// startTestDaemon writes text to path and serves it until the test ends;
// it returns once the daemon listens with servers servers. prepare, when
// given, sets the daemon's test hooks before it runs. A daemon that does
// not start fails the test with why, and only that.
func startTestDaemon(t *testing.T, path, text string, servers int, prepare ...func(*daemon)) *testDaemon {
	t.Helper()
	writeFile(t, path, text)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	td := &testDaemon{path: path, log: &testkit.Buffer{}, sigs: make(chan os.Signal, 1), reloaded: make(chan error, 1), stopped: make(chan struct{}), addrs: map[string]net.Addr{}}
	opts := logOptions(cfg)
	opts.Format = "json"
	logger, out, err := logging.New(opts, td.log)
	if err != nil {
		t.Fatal(err)
	}
	td.d = newDaemon(path, logger)
	td.d.logOut = out
	td.d.grace = 10 * time.Millisecond
	listening := make(chan struct{}, servers)
	td.d.onListen = func(name string, a net.Addr) {
		td.mu.Lock()
		td.addrs[name] = a
		td.mu.Unlock()
		listening <- struct{}{}
	}
	td.d.onReload = func(err error) { td.reloaded <- err }
	for _, p := range prepare {
		p(td.d)
	}
	go func() {
		td.err = td.d.run(cfg, td.sigs)
		close(td.stopped)
	}()
	t.Cleanup(func() { td.stop(t) })
	for range servers {
		select {
		case <-listening:
		case <-td.stopped:
			t.Fatalf("run: %v\n%s", td.err, td.log.String())
		case <-time.After(10 * time.Second):
			t.Fatalf("not listening: %v", td.addrs)
		}
	}
	return td
}

func (td *testDaemon) addr(name string) string {
	td.mu.Lock()
	defer td.mu.Unlock()
	return td.addrs[name].String()
}

// stop sends SIGTERM, unless the daemon stopped already, and returns what
// run returned.
func (td *testDaemon) stop(t *testing.T) error {
	t.Helper()
	select {
	case <-td.stopped:
		return td.err
	default:
	}
	td.sigs <- syscall.SIGTERM
	select {
	case <-td.stopped:
		return td.err
	case <-time.After(10 * time.Second):
		t.Error("daemon did not stop")
		return nil
	}
}

// reload writes text and sends SIGHUP; it returns what the daemon logged
// meanwhile and the reload's outcome.
func (td *testDaemon) reload(t *testing.T, text string) (string, error) {
	t.Helper()
	writeFile(t, td.path, text)
	before := len(td.log.String())
	td.sigs <- syscall.SIGHUP
	select {
	case err := <-td.reloaded:
		return td.log.String()[before:], err
	case <-td.stopped:
		t.Fatalf("the daemon stopped: %v\n%s", td.err, td.log.String())
	case <-time.After(10 * time.Second):
		t.Fatal("SIGHUP not handled")
	}
	return "", nil
}

// reloadConfig is a config of sections, each a list of "key = value"
// lines, so that a test can set one key in its section.
type reloadConfig map[string][]string

func (c reloadConfig) with(section, line string) reloadConfig {
	out := reloadConfig{}
	for k, v := range c {
		out[k] = slices.Clone(v)
	}
	key, _, _ := strings.Cut(line, "=")
	key = strings.TrimSpace(key) + " ="
	i := slices.IndexFunc(out[section], func(l string) bool { return strings.HasPrefix(l, key) })
	if i >= 0 {
		out[section][i] = line
	} else {
		out[section] = append(out[section], line)
	}
	return out
}

func (c reloadConfig) String() string {
	var b strings.Builder
	sections := make([]string, 0, len(c))
	for s := range c {
		if s != "[[list]]" {
			sections = append(sections, s)
		}
	}
	slices.Sort(sections)
	for _, s := range append(sections, "[[list]]") {
		fmt.Fprintf(&b, "%s\n%s\n\n", s, strings.Join(c[s], "\n"))
	}
	return b.String()
}

// A changed setting that a reload cannot apply is named in the log, one
// warning per setting, for every restart-only setting there is.
func TestReloadNamesRestartSettings(t *testing.T) {
	dir := t.TempDir()
	s := dnstest.Start(t)
	base := reloadConfig{
		"[milter]":    {`listen = "inet:127.0.0.1:0"`},
		"[web]":       {`listen = ""`},
		"[store]":     {fmt.Sprintf("path = %q", filepath.Join(dir, "blmilter.db"))},
		"[dns]":       {fmt.Sprintf("servers = [%q]", s.Addr)},
		"[health]":    {`interval = "24h"`},
		"[[list]]":    {`name = "Test ZEN"`, `zone = "zen.test"`},
		"[policyd]":   {},
		"[metrics]":   {},
		"[log]":       {},
		"[zone]":      {`name = "bl.test"`, `listen = ["127.0.0.1:0"]`, `ns = ["ns1.example.org."]`},
		"[zone.tsig]": {`name = "xfr.test."`, fmt.Sprintf("secret_file = %q", filepath.Join(dir, "xfr.key"))},
	}
	writeFile(t, filepath.Join(dir, "xfr.key"), "c2VjcmV0IG9mIGVub3VnaCBieXRlcyBmb3IgdHNpZyE=\n")
	// A valid new value for every restart-only setting, in its section.
	changes := map[string][2]string{
		"milter.listen":          {"[milter]", `listen = "inet:127.0.0.1:1"`},
		"milter.socket_mode":     {"[milter]", `socket_mode = "0600"`},
		"milter.socket_group":    {"[milter]", `socket_group = "0"`},
		"milter.read_timeout":    {"[milter]", `read_timeout = "3m"`},
		"milter.write_timeout":   {"[milter]", `write_timeout = "20s"`},
		"milter.session_timeout": {"[milter]", `session_timeout = "1h"`},
		"milter.max_connections": {"[milter]", `max_connections = 50`},
		"policyd.listen":         {"[policyd]", `listen = "127.0.0.1:1"`},
		"policyd.socket_mode":    {"[policyd]", `socket_mode = "0600"`},
		"policyd.socket_group":   {"[policyd]", `socket_group = "0"`},
		"web.listen":             {"[web]", `listen = "127.0.0.1:1"`},
		"metrics.listen":         {"[metrics]", `listen = "127.0.0.1:1"`},
		"store.path":             {"[store]", fmt.Sprintf("path = %q", filepath.Join(dir, "other.db"))},
		"store.required":         {"[store]", `required = false`},
		"log.format":             {"[log]", `format = "json"`},
		"log.file":               {"[log]", fmt.Sprintf("file = %q", filepath.Join(dir, "blmilter.log"))},
		"health.interval":        {"[health]", `interval = "12h"`},
		"health.timeout":         {"[health]", `timeout = "3s"`},
		"health.fail_after":      {"[health]", `fail_after = 3`},
		"health.max_hit_ratio":   {"[health]", `max_hit_ratio = 0.8`},
		"health.min_checks":      {"[health]", `min_checks = 300`},
		"health.ratio_window":    {"[health]", `ratio_window = "20m"`},
		"zone.name":              {"[zone]", `name = "bl2.test"`},
		"zone.listen":            {"[zone]", `listen = ["127.0.0.1:1"]`},
		"zone.tsig.name":         {"[zone.tsig]", `name = "other.test."`},
		"zone.tsig.algorithm":    {"[zone.tsig]", `algorithm = "hmac-sha512"`},
		"zone.tsig.secret_file":  {"[zone.tsig]", fmt.Sprintf("secret_file = %q", filepath.Join(dir, "other.key"))},
	}
	var restart []string
	for _, k := range config.Keys() {
		if k.Reload != config.ReloadRestart {
			continue
		}
		restart = append(restart, k.Name)
		if _, ok := changes[k.Name]; !ok {
			t.Errorf("no change in this test for the restart-only setting %s: add one", k.Name)
		}
	}
	td := startTestDaemon(t, filepath.Join(dir, "blmilter.toml"), base.String(), 2)
	for _, key := range restart {
		ch, ok := changes[key]
		if !ok {
			continue
		}
		logged, err := td.reload(t, base.with(ch[0], ch[1]).String())
		if err != nil {
			t.Errorf("%s: reload: %v", key, err)
			continue
		}
		if !strings.Contains(logged, `"msg":"setting changed; it takes effect at the next restart","key":"`+key+`"`) {
			t.Errorf("%s: changed, but the reload's log does not name it:\n%s", key, logged)
		}
		if n := strings.Count(logged, "takes effect at the next restart"); n != 1 {
			t.Errorf("%s: %d restart warnings for one changed setting:\n%s", key, n, logged)
		}
	}
	// A live setting changes without a warning.
	logged, err := td.reload(t, base.with("[policy]", "threshold = 5").with("[web]", "lookup_rate = 3").String())
	if err != nil || strings.Contains(logged, "next restart") {
		t.Errorf("live settings: err %v, log:\n%s", err, logged)
	}
}

// The settings a reload applies do take effect: the policy server's
// connection limit, the lookup service's rate limit and the log level.
func TestReloadAppliesLiveSettings(t *testing.T) {
	dir := t.TempDir()
	s := dnstest.Start(t)
	base := reloadConfig{
		"[milter]":  {`listen = ""`},
		"[policyd]": {`listen = "127.0.0.1:0"`},
		"[web]":     {`listen = "127.0.0.1:0"`, `public_url = "https://lookup.example.org"`},
		"[store]":   {fmt.Sprintf("path = %q", filepath.Join(dir, "blmilter.db"))},
		"[dns]":     {fmt.Sprintf("servers = [%q]", s.Addr)},
		"[health]":  {`interval = "24h"`},
		"[[list]]":  {`name = "Test ZEN"`, `zone = "zen.test"`},
	}
	td := startTestDaemon(t, filepath.Join(dir, "blmilter.toml"), base.String(), 2)

	// The policy server: one connection at most.
	if logged, err := td.reload(t, base.with("[policyd]", "max_connections = 1").String()); err != nil || strings.Contains(logged, "next restart") {
		t.Fatalf("reload: %v\n%s", err, logged)
	}
	first, err := net.Dial("tcp", td.addr("policyd"))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	replies := bufio.NewReader(first)
	ask := func(client string) {
		t.Helper()
		fmt.Fprintf(first, "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=%s\nrecipient=u@example.net\n\n", client)
		first.SetReadDeadline(time.Now().Add(10 * time.Second))
		if line, err := replies.ReadString('\n'); err != nil || line != "action=DUNNO\n" {
			t.Fatalf("policy server: %q, %v", line, err)
		}
		replies.ReadString('\n')
	}
	ask("192.0.2.20")
	second, err := net.Dial("tcp", td.addr("policyd"))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := second.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("a second connection over max_connections = 1 was served: %d, %v", n, err)
	}

	// The lookup service: a burst of 2 per client.
	next := base.with("[policyd]", "max_connections = 1").with("[web]", "lookup_rate = 0.001").with("[web]", "lookup_burst = 2")
	if logged, err := td.reload(t, next.String()); err != nil || strings.Contains(logged, "next restart") {
		t.Fatalf("reload: %v\n%s", err, logged)
	}
	var codes []int
	for range 3 {
		resp, err := http.Get("http://" + td.addr("web") + "/api/v1/ip/192.0.2.20")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	if !slices.Equal(codes, []int{200, 200, 429}) {
		t.Errorf("lookups after lookup_burst = 2: %v, want 200 200 429", codes)
	}

	// The log level.
	if strings.Contains(td.log.String(), `"level":"DEBUG"`) {
		t.Fatal("debug lines at level info")
	}
	if _, err := td.reload(t, next.with("[log]", `level = "debug"`).String()); err != nil {
		t.Fatal(err)
	}
	ask("127.0.0.1") // exempt: logged at debug level
	testkit.WaitFor(t, "a debug line", 5*time.Second, func() error {
		return testkit.Unless(strings.Contains(td.log.String(), `"level":"DEBUG"`), "none after log.level = debug")
	})
}
