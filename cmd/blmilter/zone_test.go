package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/store"
)

// zoneTestConfig serves the site's own list as bl.test, with the policy
// server as the one mail front end.
func zoneTestConfig(dir, zoneExtra string) reloadConfig {
	return reloadConfig{
		"[milter]":  {`listen = ""`},
		"[policyd]": {`listen = "127.0.0.1:0"`},
		"[web]":     {`listen = ""`, `public_url = "https://lookup.example.org"`},
		"[store]":   {fmt.Sprintf("path = %q", filepath.Join(dir, "blmilter.db"))},
		"[zone]":    append([]string{`name = "bl.test"`, `listen = ["127.0.0.1:0"]`, `ns = ["ns1.example.org."]`, `ttl = "1m"`}, zoneExtra),
		"[[list]]":  {`name = "Our list"`, `store = true`},
	}
}

// freeDNSAddr is a loopback address whose port was free for both UDP and
// TCP a moment ago (testkit.FreeDNSPort).
func freeDNSAddr(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", testkit.FreeDNSPort(t)) }

func askZone(t *testing.T, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return r
}

func zoneSerial(t *testing.T, addr string) uint32 {
	t.Helper()
	r := askZone(t, addr, "bl.test.", dns.TypeSOA)
	if len(r.Answer) != 1 {
		t.Fatalf("SOA: %v", r)
	}
	return r.Answer[0].(*dns.SOA).Serial
}

// serve runs the zone from the store: a listing added or removed by the
// command line (another process, as far as the daemon's store knows), and
// one that expires, are served within 2 s; the serial moves on and is
// kept in the store; a reload applies the zone's live settings; blmilter
// stats shows what the zone answered.
func TestZoneServedFromStore(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "blmilter.db")
	// A fixed port, so that zone status can ask it.
	const token = "0123456789abcdef0123456789abcdef"
	cfg := zoneTestConfig(dir, "").with("[zone]", fmt.Sprintf("listen = [%q]", freeDNSAddr(t))).
		with("[web]", `listen = "127.0.0.1:0"`).with("[web]", fmt.Sprintf("admin_token = %q", token))
	path := filepath.Join(dir, "blmilter.toml")
	// The store exists before the daemon opens it, as after "list add -create".
	if code, _, errs := runCLI("list", "add", "-create", "-db", db, "192.0.2.1"); code != 0 {
		t.Fatal(errs)
	}
	td := startTestDaemon(t, path, cfg.String(), 3)
	addr := td.addr("zone")
	const name = "7.100.51.198.bl.test."
	first := zoneSerial(t, addr)
	if dnstest.AnswerA(askZone(t, addr, "1.2.0.192.bl.test.", dns.TypeA)) != "127.0.0.3" {
		t.Fatal("the listing made before the start is not served")
	}

	start := time.Now()
	if code, _, errs := runCLI("list", "add", "-db", db, "-category", "zombie", "-reason", "trap hits", "198.51.100.7"); code != 0 {
		t.Fatal(errs)
	}
	testkit.WaitFor(t, "the new listing in the zone", 2*time.Second, func() error {
		return testkit.Unless(dnstest.AnswerA(askZone(t, addr, name, dns.TypeA)) == "127.0.0.4", "not served yet")
	})
	t.Logf("list add to the zone's answer: %v", time.Since(start).Round(time.Millisecond))
	r := askZone(t, addr, name, dns.TypeTXT)
	if len(r.Answer) != 1 || strings.Join(r.Answer[0].(*dns.TXT).Txt, "") != "zombie: see https://lookup.example.org/ip/198.51.100.7" {
		t.Errorf("TXT: %v", r.Answer)
	}
	second := zoneSerial(t, addr)
	if second == first || second-first >= 1<<31 {
		t.Errorf("serial %d after a change, was %d", second, first)
	}
	st, err := store.Open(db, store.Options{ReadOnly: true, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if kept, _, err := st.ZoneSerial(context.Background(), "bl.test"); err != nil || kept != second {
		t.Errorf("the store keeps serial %d (%v), the zone serves %d", kept, err, second)
	}
	st.Close()

	// zone status agrees.
	code, out, errs := runCLI("zone", "status", "-config", path)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("serial in the store: %d", second)) || !strings.Contains(out, fmt.Sprintf("serves serial %d", second)) || !strings.Contains(out, "listings in effect: 2") {
		t.Errorf("zone status: %d\n%s%s", code, out, errs)
	}

	// An expiry, with no command behind it.
	if code, _, errs := runCLI("list", "add", "-db", db, "-expires", "2s", "203.0.113.9"); code != 0 {
		t.Fatal(errs)
	}
	testkit.WaitFor(t, "the expiring listing in the zone", 2*time.Second, func() error {
		return testkit.Unless(dnstest.AnswerA(askZone(t, addr, "9.113.0.203.bl.test.", dns.TypeA)) != "", "not served yet")
	})
	testkit.WaitFor(t, "the expired listing gone", 4*time.Second, func() error {
		r := askZone(t, addr, "9.113.0.203.bl.test.", dns.TypeA)
		return testkit.Unless(r.Rcode == dns.RcodeNameError, "still %s", dns.RcodeToString[r.Rcode])
	})

	if code, _, errs := runCLI("list", "remove", "-db", db, "198.51.100.7"); code != 0 {
		t.Fatal(errs)
	}
	testkit.WaitFor(t, "the removal in the zone", 2*time.Second, func() error {
		r := askZone(t, addr, name, dns.TypeA)
		return testkit.Unless(r.Rcode == dns.RcodeNameError, "still %s", dns.RcodeToString[r.Rcode])
	})

	// A reload: a new TTL and code, served at once.
	next := cfg.with("[zone]", `ttl = "30s"`).with("[zone]", `codes = { local = "127.0.0.33" }`)
	if logged, err := td.reload(t, next.String()); err != nil || strings.Contains(logged, "next restart") {
		t.Fatalf("reload: %v\n%s", err, logged)
	}
	r = askZone(t, addr, "1.2.0.192.bl.test.", dns.TypeA)
	if dnstest.AnswerA(r) != "127.0.0.33" || r.Answer[0].Header().Ttl != 30 {
		t.Errorf("after the reload: %v", r.Answer)
	}

	code, out, errs = runCLI("stats", "-url", "http://"+td.addr("web"), "-token", token)
	if code != 0 {
		t.Fatalf("stats: exit %d: %s", code, errs)
	}
	for _, want := range []string{
		fmt.Sprintf(`(?m)^zone: serial %d$`, zoneSerial(t, addr)),
		`(?m)^  queries\s+udp [1-9]\d*, tcp 0$`,
		`(?m)^  answers\s+listed [1-9]\d*, nxdomain [1-9]\d*, nodata 0, refused 0, truncated 0, formerr 0, dropped 0$`,
		`(?m)^  transfers\s+axfr 0, ixfr 0 \(0 of them the whole zone\), refused 0, failed 0$`,
		`(?m)^  notify\s+acked 0, given up 0$`,
		`(?m)^  panics\s+0$`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("stats lacks %s:\n%s", want, out)
		}
	}
}

// A restart serves the serial the store kept when nothing changed.
func TestZoneSerialSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "blmilter.db")
	if code, _, errs := runCLI("list", "add", "-create", "-db", db, "192.0.2.1"); code != 0 {
		t.Fatal(errs)
	}
	path := filepath.Join(dir, "blmilter.toml")
	var serials []uint32
	for range 2 {
		t.Run("run", func(t *testing.T) {
			td := startTestDaemon(t, path, zoneTestConfig(dir, "").String(), 2)
			serials = append(serials, zoneSerial(t, td.addr("zone")))
		})
	}
	if len(serials) != 2 || serials[0] != serials[1] {
		t.Errorf("serials %v across a restart with the same listings", serials)
	}
}

func TestZoneExport(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "blmilter.db")
	if code, _, errs := runCLI("list", "add", "-create", "-db", db, "-category", "zombie", "198.51.100.7", "203.0.113.0/24"); code != 0 {
		t.Fatal(errs)
	}
	path := filepath.Join(dir, "blmilter.toml")
	writeFile(t, path, zoneTestConfig(dir, "").String())

	code, out, errs := runCLI("zone", "export", "-config", path, "-format", "rbldnsd")
	if code != 0 || !strings.Contains(out, "198.51.100.7") || !strings.Contains(out, "203.0.113.0/24") || !strings.Contains(out, "$SOA") {
		t.Errorf("rbldnsd export: %d %s\n%s", code, errs, out)
	}
	file := filepath.Join(dir, "bl.test.zone")
	code, _, errs = runCLI("zone", "export", "-config", path, "-format", "bind", "-o", file)
	if code != 0 || !strings.Contains(errs, "wrote "+file) {
		t.Fatalf("bind export: %d %s", code, errs)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"$ORIGIN bl.test.", "\n7.100.51.198\t", "\n*.113.0.203\t", "127.0.0.4", "SOA"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("bind export lacks %q:\n%s", want, b)
		}
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, ".bl.test.zone*")); len(tmp) > 0 {
		t.Errorf("temporary files left beside the export: %v", tmp)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"no zone", []string{"zone", "export", "-db", db}, 1, "no zone"},
		{"bad format", []string{"zone", "export", "-config", path, "-format", "tinydns"}, 2, "want rbldnsd or bind"},
		{"no such directory", []string{"zone", "export", "-config", path, "-o", filepath.Join(dir, "missing", "x")}, 1, "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, _, errs := runCLI(tc.args...); code != tc.code || !strings.Contains(errs, tc.err) {
				t.Errorf("%v: %d %s", tc.args, code, errs)
			}
		})
	}
}

// The fleet's key and the zone's TSIG secret are read where the config is
// checked and served: a bad one is a problem naming its key and line.
func TestKeyFileProblems(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.key")
	writeFile(t, short, "c2hvcnQ=\n")
	good := filepath.Join(dir, "fleet.key")
	writeFile(t, good, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	const list = "\n[[list]]\nname = \"x\"\nzone = \"bl.example\"\n"
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"no key file", "[fleet]\nkey_file = \"missing.key\"\n" + list, ":2: fleet.key_file: open "},
		{"short key", "[fleet]\nkey_file = \"short.key\"\n" + list, ":2: fleet.key_file: " + short + ": the key is 5 bytes"},
		{"bad previous key", "[fleet]\nkey_file = \"fleet.key\"\nprevious_key_files = [\"short.key\"]\n" + list, ":3: fleet.previous_key_files[0]: "},
		{"no TSIG secret", "[zone]\nname = \"bl.test\"\nns = [\"ns1.example.org\"]\ntsig = { name = \"xfr.test.\", secret_file = \"xfr.key\" }\n" + list, ":4: zone.tsig.secret_file: open "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "bad.toml")
			writeFile(t, path, tc.toml)
			code, _, errs := runCLI("config", "check", path)
			if code != 1 || !strings.Contains(errs, path+tc.want) {
				t.Errorf("config check: %d\n%s\nwant %q", code, errs, path+tc.want)
			}
		})
	}
	path := filepath.Join(dir, "good.toml")
	writeFile(t, path, "[fleet]\nkey_file = \"fleet.key\"\nnode = \"mx1\"\n"+list)
	if code, out, errs := runCLI("config", "check", path); code != 0 {
		t.Errorf("good key: %d %s %s", code, out, errs)
	}
}

// The fleet's example configs pass config check as shipped, key files
// included.
func TestFleetExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/fleet-*.toml")
	if err != nil || len(files) != 3 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if code, out, errs := runCLI("config", "check", f); code != 0 || !strings.Contains(out, "OK") {
				t.Errorf("config check %s: %d\n%s%s", f, code, out, errs)
			}
		})
	}
}

// With [store] required = false and the store unreadable at start, the zone
// answers SERVFAIL (never an empty zone, which secondaries would take for
// the list) until the store opens; then it serves the list.
func TestZoneWaitsForTheStore(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	if code, _, errs := runCLI("list", "add", "-create", "-db", good, "-category", "zombie", "198.51.100.7"); code != 0 {
		t.Fatal(errs)
	}
	db := filepath.Join(dir, "blmilter.db")
	writeFile(t, db, strings.Repeat("a disk fault left this behind\n", 200))
	addr := freeDNSAddr(t)
	cfg := zoneTestConfig(dir, "").with("[zone]", fmt.Sprintf("listen = [%q]", addr)).with("[store]", "required = false")
	td := startTestDaemon(t, filepath.Join(dir, "blmilter.toml"), cfg.String(), 2)
	const name = "7.100.51.198.bl.test."
	if r := askZone(t, addr, name, dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("without the store: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if err := os.Rename(good, db); err != nil {
		t.Fatal(err)
	}
	os.Remove(db + "-wal")
	os.Remove(db + "-shm")
	if _, err := td.reload(t, cfg.String()); err != nil { // a SIGHUP retries the store at once
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the zone to serve the store's listing", 5*time.Second, func() error {
		return testkit.Unless(dnstest.AnswerA(askZone(t, addr, name, dns.TypeA)) == "127.0.0.4", "not yet")
	})
	st, err := store.Open(db, store.Options{ReadOnly: true, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if kept, _, _ := st.ZoneSerial(context.Background(), "bl.test"); kept == 0 || kept != zoneSerial(t, addr) {
		t.Errorf("the store keeps serial %d, the zone serves %d", kept, zoneSerial(t, addr))
	}
}
