package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/policy"
)

func TestDefaultConfigValid(t *testing.T) {
	cfg := Default()
	if cfg.Milter.Listen != "inet:127.0.0.1:8895" || cfg.Web.Listen != "127.0.0.1:8080" || cfg.Web.PublicURL != "http://127.0.0.1:8080" {
		t.Errorf("listen addresses: milter %q web %q public_url %q", cfg.Milter.Listen, cfg.Web.Listen, cfg.Web.PublicURL)
	}
	if cfg.Policyd.Listen != "" {
		t.Errorf("policyd on by default: %q", cfg.Policyd.Listen)
	}
	if len(cfg.DNS.Servers) != 0 || cfg.DNS.Timeout.Duration != 1500*time.Millisecond {
		t.Errorf("dns: %+v", cfg.DNS)
	}
	if c := cfg.Cache; c.Size != 200000 || c.MinTTL.Duration != time.Minute || c.MaxTTL.Duration != time.Hour || c.NegativeTTL.Duration != 5*time.Minute || c.ErrorTTL.Duration != 10*time.Second {
		t.Errorf("cache: %+v", c)
	}
	if p := cfg.Policy; p.Threshold != 3 || p.Action != "reject" || p.RejectAt != "rcpt" || p.Deadline.Duration != 2*time.Second || len(p.Allow) != 0 || p.RejectText != DefaultRejectText {
		t.Errorf("policy: %+v", p)
	}
	if len(cfg.Lists) != 2 {
		t.Fatalf("lists: %d, want Spamhaus ZEN and the site's own list", len(cfg.Lists))
	}
	// The site's own list refuses mail out of the box: what list add,
	// traps and the zone work with is used by the filter too.
	if site := cfg.Lists[1]; site.Kind() != policy.KindStore || site.Weight != 3 {
		t.Errorf("site list: %+v", site)
	}
	l := cfg.Lists[0]
	if l.Name != "Spamhaus ZEN" || l.Zone != "zen.spamhaus.org" || l.Weight != 3 || l.Kind() != policy.KindDNS || !l.UsesIPv4() || !l.UsesIPv6() || l.OnError != "ignore" || !l.HealthChecked() {
		t.Errorf("ZEN list: %+v", l)
	}
	zen := cfg.EngineOptions().Lists[0]
	for code, want := range map[string]string{
		"127.0.0.2": "spam-source", "127.0.0.3": "spam-source", "127.0.0.4": "zombie", "127.0.0.7": "zombie",
		"127.0.0.9": "spam-source", "127.0.0.10": "dynamic", "127.0.0.11": "dynamic", "127.0.0.8": "listed",
	} {
		if _, got, _ := zen.Match([]netip.Addr{netip.MustParseAddr(code)}); got != want {
			t.Errorf("ZEN code %s: category %q, want %q", code, got, want)
		}
	}
	if !strings.Contains(string(DefaultTOML()), "127.255.255.254") {
		t.Error("default config does not explain Spamhaus' public resolver answer")
	}
}

func TestDefaultsFilled(t *testing.T) {
	cfg, err := Parse([]byte("[[list]]\nname = \"x\"\nzone = \"bl.example\"\n[[list]]\nname = \"f\"\nfile = \"local.txt\"\n"), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	d := Defaults()
	if cfg.Milter != d.Milter || cfg.Cache != d.Cache || cfg.Web.PublicURL != d.Web.PublicURL || cfg.Store.Path != "blmilter.db" || cfg.Log != d.Log {
		t.Errorf("defaults not filled: %+v", cfg)
	}
	dl := cfg.Lists[0]
	if dl.Weight != 3 || dl.Category != "listed" || dl.Timeout.Duration != 1500*time.Millisecond || dl.OnError != "ignore" || !dl.HealthChecked() {
		t.Errorf("DNS list defaults: %+v", dl)
	}
	fl := cfg.Lists[1]
	if fl.Kind() != policy.KindFile || fl.Category != "local" || fl.HealthChecked() {
		t.Errorf("file list defaults: %+v", fl)
	}
	// An empty string is a value, not "use the default": it turns a listener off.
	cfg, err = Parse([]byte("[milter]\nlisten = \"\"\n[web]\nlisten = \"\"\n[[list]]\nname = \"x\"\nzone = \"bl.example\"\nweight = 0\n"), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Milter.Listen != "" || cfg.Web.Listen != "" || cfg.Lists[0].Weight != 0 {
		t.Errorf("explicit values replaced by defaults: %q %q %v", cfg.Milter.Listen, cfg.Web.Listen, cfg.Lists[0].Weight)
	}
}

func problems(t *testing.T, err error) []Problem {
	t.Helper()
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("want *Error, got %T %v", err, err)
	}
	return ce.Problems
}

func TestConfigErrors(t *testing.T) {
	const zen = "[[list]]\nname = \"z\"\nzone = \"bl.example\"\n"
	tests := []struct {
		name string
		toml string
		key  string
		line int
		msg  string
	}{
		{"syntax", "[policy]\nthreshold = = 3\n", "policy.threshold", 2, "expected value"},
		{"unknown key", "[policy]\nthreshhold = 3\n" + zen, "policy.threshhold", 2, `did you mean "threshold"`},
		{"unknown section", "[polcy]\nthreshold = 3\n" + zen, "polcy", 1, "unknown key"},
		{"unknown list key", zen + "wieght = 3\n", "list[0].wieght", 4, `did you mean "weight"`},
		{"unknown key third list", zen + zen + "[[list]]\nname = \"c\"\nzone = \"c.example\"\nwieght = 1\n", "list[2].wieght", 10, "unknown key"},
		{"wrong type", "[policy]\nthreshold = \"three\"\n" + zen, "policy.threshold", 2, "must be a number"},
		{"bad duration", "[dns]\ntimeout = \"1.5\"\n" + zen, "dns.timeout", 2, "invalid duration"},
		{"threshold zero", "[policy]\nthreshold = 0\n" + zen, "policy.threshold", 2, "positive"},
		{"action", "[policy]\naction = \"drop\"\n" + zen, "policy.action", 2, "reject, tempfail, tag or log"},
		{"reject_at", "[policy]\nreject_at = \"data\"\n" + zen, "policy.reject_at", 2, "rcpt or connect"},
		{"allow", "[policy]\nallow = [\"10.0.0.0/8\", \"10.0.0/8\"]\n" + zen, "policy.allow[1]", 2, "not a network"},
		{"placeholder", "[policy]\nreject_text = \"listed {lst}\"\n" + zen, "policy.reject_text", 2, "unknown placeholder {lst}"},
		{"min above max", "[cache]\nmin_ttl = \"2h\"\nmax_ttl = \"1h\"\n" + zen, "cache.min_ttl", 2, "must not be above"},
		{"dns server", "[dns]\nservers = [\"resolver.example\"]\n" + zen, "dns.servers[0]", 2, "IP address"},
		{"no lists", "[policy]\nthreshold = 3\n", "", 0, "no [[list]]"},
		{"zone and file", "[[list]]\nname = \"z\"\nzone = \"bl.example\"\nfile = \"x.txt\"\n", "list[0]", 1, "exactly one of"},
		{"neither zone nor file", "[[list]]\nname = \"z\"\nweight = 1\n", "list[0]", 1, "exactly one of"},
		{"no name", "[[list]]\nzone = \"bl.example\"\n", "list[0].name", 1, "required"},
		{"duplicate name", zen + zen, "list[1].name", 5, "already the name of list[0]"},
		{"bad zone", "[[list]]\nname = \"z\"\nzone = \"bl example\"\n", "list[0].zone", 3, "not a DNS zone"},
		{"on_error", zen + "on_error = \"reject\"\n", "list[0].on_error", 4, "ignore or tempfail"},
		{"no family", zen + "ipv4 = false\nipv6 = false\n", "list[0].ipv6", 5, "never be asked"},
		{"category token", zen + "category = \"open proxy\"\n", "list[0].category", 4, "non-empty word"},
		{"empty category", zen + "category = \"\"\n", "list[0].category", 4, "non-empty word"},
		{"codes on file list", "[[list]]\nname = \"f\"\nfile = \"x.txt\"\ncodes = { \"127.0.0.2\" = \"x\" }\n", "list[0].codes", 4, "only DNS lists"},
		{"code key", zen + "codes = { \"127.0.0.x\" = \"zombie\" }\n", `list[0].codes."127.0.0.x"`, 4, "not an answer code"},
		{"code outside 127/8", zen + "codes = { \"10.0.0.2\" = \"zombie\" }\n", `list[0].codes."10.0.0.2"`, 4, "outside 127.0.0.0/8"},
		{"code in error range", zen + "codes = { \"127.255.255.254\" = \"zombie\" }\n", `list[0].codes."127.255.255.254"`, 4, "errors"},
		{"code range backwards", zen + "codes = { \"127.0.0.7-127.0.0.4\" = \"zombie\" }\n", `list[0].codes."127.0.0.7-127.0.0.4"`, 4, "ends before"},
		{"code bitmask", zen + "codes = { \"&256\" = \"zombie\" }\n", `list[0].codes."&256"`, 4, "1 to 255"},
		{"code value", zen + "codes = { \"127.0.0.2\" = 4 }\n", `list[0].codes."127.0.0.2"`, 4, "category string"},
		{"code table key", zen + "codes = { \"127.0.0.2\" = { category = \"zombie\", wieght = 4 } }\n", `list[0].codes."127.0.0.2".wieght`, 4, "unknown key"},
		{"code table as section", zen + "[list.codes]\n\"127.0.0.2\" = \"bad category\"\n", `list[0].codes."127.0.0.2"`, 5, "non-empty word"},
		{"public_url", "[web]\npublic_url = \"lookup.example.org\"\n" + zen, "web.public_url", 2, "http:// or https://"},
		{"milter listen", "[milter]\nlisten = \"127.0.0.1:8895\"\n" + zen, "milter.listen", 2, "inet:HOST:PORT"},
		{"milter max_connections zero", "[milter]\nmax_connections = 0\n" + zen, "milter.max_connections", 2, "at least 1"},
		{"milter max_connections huge", "[milter]\nmax_connections = 9223372036854775807\n" + zen, "milter.max_connections", 2, "at most 100000"},
		{"milter session_timeout", "[milter]\nsession_timeout = \"0s\"\n" + zen, "milter.session_timeout", 2, "positive"},
		{"smtp from", "[web.smtp]\nserver = \"smtp.example.org:587\"\n" + zen, "web.smtp.from", 0, "needed"},
		{"list not a table", "list = 3\n", "list", 1, "array of tables"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml), "t.toml")
			if err == nil {
				t.Fatal("accepted")
			}
			ps := problems(t, err)
			for _, p := range ps {
				if p.Key == tc.key && strings.Contains(p.Msg, tc.msg) {
					if tc.line != 0 && p.Line != tc.line {
						t.Errorf("problem %+v: line %d, want %d", p, p.Line, tc.line)
					}
					return
				}
			}
			t.Errorf("no problem with key %q and message %q in:\n%v", tc.key, tc.msg, err)
		})
	}
}

func TestConfigErrorsAllAtOnce(t *testing.T) {
	data := `[policy]
threshold = -1
action = "bounce"

[[list]]
name = "a"
zone = "a.example"
wieght = 2

[[list]]
name = "a"
file = "x.txt"
zone = "b.example"
`
	_, err := Parse([]byte(data), "blmilter.toml")
	ps := problems(t, err)
	want := []string{
		"blmilter.toml:2: policy.threshold: must be a positive number",
		"blmilter.toml:3: policy.action: must be reject, tempfail, tag or log, got \"bounce\"",
		"blmilter.toml:8: list[0].wieght: unknown key (did you mean \"weight\"?)",
		"blmilter.toml:10: list[1]: needs exactly one of zone (a DNS list), file (a local list) or store = true",
		"blmilter.toml:11: list[1].name: \"a\" is already the name of list[0]",
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("error text:\n%s\nwant:\n%s\n(%d problems)", got, strings.Join(want, "\n"), len(ps))
	}
}

func TestCodesMatch(t *testing.T) {
	cfg, err := Parse([]byte(`
[[list]]
name = "multi"
zone = "multi.example"
weight = 2
category = "spam-source"
codes = { "127.0.0.2" = "exact", "127.0.0.4-127.0.0.7" = "range", "127.0.1.0/24" = "cidr", "&8" = "bit8", "127.0.0.5" = { category = "heavy", weight = 7 }, "127.0.0.20" = { weight = 0 } }
`), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.EngineOptions().Lists[0]
	tests := []struct {
		codes    []string
		category string
		weight   float64
		code     string
	}{
		{[]string{"127.0.0.2"}, "exact", 2, "127.0.0.2"},
		{[]string{"127.0.0.6"}, "range", 2, "127.0.0.6"},
		{[]string{"127.0.0.5"}, "heavy", 7, "127.0.0.5"}, // exact beats range, per-code weight
		{[]string{"127.0.1.77"}, "cidr", 2, "127.0.1.77"},
		{[]string{"127.0.0.8"}, "bit8", 2, "127.0.0.8"},
		{[]string{"127.0.0.12"}, "bit8", 2, "127.0.0.12"},             // 12 & 8 != 0
		{[]string{"127.0.0.3"}, "spam-source", 2, "127.0.0.3"},        // no rule: the list's own category and weight
		{[]string{"127.0.0.2", "127.0.0.5"}, "heavy", 7, "127.0.0.5"}, // the weightiest code names the hit
		{[]string{"127.0.0.20"}, "spam-source", 0, "127.0.0.20"},      // weight 0: logged, never scored
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.codes, ","), func(t *testing.T) {
			var codes []netip.Addr
			for _, c := range tc.codes {
				codes = append(codes, netip.MustParseAddr(c))
			}
			code, category, weight := l.Match(codes)
			if category != tc.category || weight != tc.weight || code.String() != tc.code {
				t.Errorf("got %s/%v/%s, want %s/%v/%s", category, weight, code, tc.category, tc.weight, tc.code)
			}
		})
	}
}

func TestDurationDays(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("90d")); err != nil || d.Duration != 90*24*time.Hour {
		t.Errorf("90d: %v %v", d, err)
	}
	if err := d.UnmarshalText([]byte("1.5s")); err != nil || d.Duration != 1500*time.Millisecond {
		t.Errorf("1.5s: %v %v", d, err)
	}
	for _, bad := range []string{"", "d", "5", "-3d", "xd"} {
		if err := d.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestExampleConfigs(t *testing.T) {
	files, _ := filepath.Glob("../examples/*.toml")
	for _, name := range []string{"minimal.toml", "spamhaus-zen.toml", "dry-run.toml"} {
		if _, err := os.Stat(filepath.Join("../examples", name)); err != nil {
			t.Errorf("examples/%s: %v", name, err)
		}
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := LoadFile(f); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestLoadFileRelativeListPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "blmilter.toml")
	if err := os.WriteFile(path, []byte("[[list]]\nname = \"local\"\nfile = \"local.txt\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "local.txt"); cfg.Lists[0].File != want {
		t.Errorf("file %q, want %q", cfg.Lists[0].File, want)
	}
}

func TestCodesMostSpecificRuleWins(t *testing.T) {
	cfg, err := LoadFile("../examples/spamhaus-zen.toml")
	if err != nil {
		t.Fatal(err)
	}
	dnswl := cfg.EngineOptions().Lists[1]
	for code, want := range map[string]float64{"127.0.0.255": 0, "127.0.5.2": -3, "127.0.5.3": -3, "127.0.5.1": -1, "127.0.5.0": -1} {
		if _, _, got := dnswl.Match([]netip.Addr{netip.MustParseAddr(code)}); got != want {
			t.Errorf("DNSWL %s: weight %v, want %v", code, got, want)
		}
	}
}

// FuzzParse: whatever the file says, Parse returns a config or an *Error,
// and never panics; a config it accepts builds an engine.
func FuzzParse(f *testing.F) {
	f.Add(DefaultTOML())
	files, _ := filepath.Glob("../examples/*.toml")
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("[[list]]\nname = \"a\"\nzone = \"a.example\"\n[list.codes]\n\"&3\" = { weight = -1 }\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz.toml")
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		if len(cfg.Lists) == 0 {
			t.Fatal("config without lists accepted")
		}
		// Whatever passes validation must be safe to run: no size or
		// duration that panics or overflows (file lists are not opened).
		opts := cfg.EngineOptions()
		opts.Lists = slices.DeleteFunc(opts.Lists, func(l policy.List) bool { return l.Kind == policy.KindFile })
		opts.DNSServers = []string{"127.0.0.1:1"}
		e, err := policy.NewEngine(opts)
		if err != nil {
			t.Fatalf("valid config, engine: %v", err)
		}
		e.Close()
	})
}

// A config built or changed in code is checked by Validate as a file is by
// Parse, and the engine uses what validation parsed.
func TestConfigChangedInCode(t *testing.T) {
	cfg := Default()
	cfg.DNS.Servers = []string{"127.0.0.1:1"}
	cfg.Policy.Allow = []string{"192.0.2.0/24"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e, err := policy.NewEngine(cfg.EngineOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if s := e.Exempt(netip.MustParseAddr("192.0.2.5")); s != policy.SkipAllow {
		t.Errorf("allow set in code not used: %q", s)
	}
	cfg = Default()
	cfg.Policy.Threshold = 0
	cfg.Policy.Allow = []string{"nonsense"}
	err = cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "policy.threshold") || !strings.Contains(err.Error(), "policy.allow[0]") {
		t.Errorf("bad config built in code: %v", err)
	}
}
