package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/blmilter/blmilter/policy"
)

// Every number has an upper bound: a value past it is a problem naming the
// key, and a value at it builds an engine without panicking.
func TestBounds(t *testing.T) {
	const zen = "[[list]]\nname = \"z\"\nzone = \"bl.example\"\n"
	tests := []struct {
		name, toml, key, msg string
	}{
		{"cache size", "[cache]\nsize = 9223372036854775807\n", "cache.size", "at most 100000000"},
		{"milter connections", "[milter]\nmax_connections = 1000000\n", "milter.max_connections", "at most"},
		{"milter connections zero", "[milter]\nmax_connections = 0\n", "milter.max_connections", "at least 1"},
		{"milter session", "[milter]\nsession_timeout = \"48h\"\n", "milter.session_timeout", "at most 1d"},
		{"milter read", "[milter]\nread_timeout = \"2h\"\n", "milter.read_timeout", "at most 1h"},
		{"policyd connections", "[policyd]\nmax_connections = 1000000\n", "policyd.max_connections", "at most"},
		{"policyd read", "[policyd]\nread_timeout = \"2d\"\n", "policyd.read_timeout", "at most 1d"},
		{"decision rows", "[store]\ndecision_max_rows = 9223372036854775807\n", "store.decision_max_rows", "at most"},
		{"decision age", "[store]\ndecision_max_age = \"36500d\"\n", "store.decision_max_age", "at most"},
		{"removal quota", "[web]\nremoval_quota = 100000\n", "web.removal_quota", "at most"},
		{"removal quota negative", "[web]\nremoval_quota = -1\n", "web.removal_quota", "not be negative"},
		{"lookup rate", "[web]\nlookup_rate = 1e300\n", "web.lookup_rate", "at most"},
		{"lookup rate nan", "[web]\nlookup_rate = nan\n", "web.lookup_rate", "positive number"},
		{"lookup burst", "[web]\nlookup_burst = 9223372036854775807\n", "web.lookup_burst", "at most"},
		{"dns timeout", "[dns]\ntimeout = \"1h\"\n", "dns.timeout", "at most 1m"},
		{"max ttl", "[cache]\nmax_ttl = \"30d\"\n", "cache.max_ttl", "at most 7d"},
		{"negative ttl", "[cache]\nnegative_ttl = \"30d\"\n", "cache.negative_ttl", "at most 7d"},
		{"health interval", "[health]\ninterval = \"30d\"\n", "health.interval", "at most 7d"},
		{"fail after", "[health]\nfail_after = 1000\n", "health.fail_after", "at most 100"},
		{"min checks", "[health]\nmin_checks = 9223372036854775807\n", "health.min_checks", "at most"},
		{"threshold", "[policy]\nthreshold = 1e300\n", "policy.threshold", "at most"},
		{"threshold inf", "[policy]\nthreshold = inf\n", "policy.threshold", "at most"},
		{"deadline", "[policy]\ndeadline = \"1h\"\n", "policy.deadline", "at most 1m"},
		{"weight", zen + "weight = 1e300\n", "list[0].weight", "between"},
		{"code weight", zen + "codes = { \"127.0.0.2\" = { weight = -1e300 } }\n", `list[0].codes."127.0.0.2".weight`, "between"},
		{"list timeout", zen + "timeout = \"10m\"\n", "list[0].timeout", "at most 1m"},
		{"defer first", "[policy]\ndefer_first = \"6d\"\n", "policy.defer_first", "at most 5d"},
		{"trap hits", "[traps]\nhits = 100000\n", "traps.hits", "at most 1000"},
		{"trap hits zero", "[traps]\nhits = 0\n", "traps.hits", "at least 1"},
		{"trap window", "[traps]\nwindow = \"400d\"\n", "traps.window", "at most 365d"},
		{"trap expires", "[traps]\nexpires = \"5000d\"\n", "traps.expires", "at most"},
		{"trap max below expires", "[traps]\nexpires = \"30d\"\nmax_expires = \"7d\"\n", "traps.max_expires", "at least traps.expires"},
		{"trap prefix", "[traps]\nipv6_prefix = 8\n", "traps.ipv6_prefix", "at least 32"},
		{"trap category", "[traps]\ncategory = \"spam source\"\n", "traps.category", "non-empty word"},
		{"trap address", "[traps]\naddresses = [\"trap\"]\n", "traps.addresses[0]", "such as"},
		{"trap literal", "[traps]\naddresses = [\"a@[127.0.0.1]\"]\n", "traps.addresses[0]", "DNS zone"},
		{"trap on delist domain", "[web]\ndelist_domain = \"example.org\"\n[traps]\naddresses = [\"@example.org\"]\n", "traps.addresses[0]", "collides"},
		{"evidence age", "[store]\nevidence_max_age = \"3700d\"\n", "store.evidence_max_age", "at most"},
		{"history below evidence", "[store]\nevidence_max_age = \"90d\"\nhistory_max_age = \"30d\"\n", "store.history_max_age", "at least"},
		{"history below removal window", "[web]\nremoval_window = \"365d\"\n[store]\nhistory_max_age = \"100d\"\n", "store.history_max_age", "web.removal_window"},
		{"operator without relay", "[web]\noperator_email = \"ops@example.org\"\n", "web.operator_email", "needs web.smtp.server"},
		{"operator literal", "[web]\noperator_email = \"ops@[10.0.0.1]\"\n", "web.operator_email", "address literal"},
		{"delist domain", "[web]\ndelist_domain = \"localhost\"\n", "web.delist_domain", "two labels"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := tc.toml
			if !strings.Contains(text, "[[list]]") {
				text += zen
			}
			_, err := Parse([]byte(text), "t.toml")
			if err == nil {
				t.Fatal("accepted")
			}
			for _, p := range problems(t, err) {
				if p.Key == tc.key && strings.Contains(p.Msg, tc.msg) {
					return
				}
			}
			t.Errorf("no problem with key %q and message %q in:\n%v", tc.key, tc.msg, err)
		})
	}
}

// The largest values validation allows run: the engine, its cache and its
// lists build, and a check completes.
func TestLargestValuesRun(t *testing.T) {
	cfg, err := Parse([]byte(`
[cache]
size = 100000000
max_ttl = "7d"
min_ttl = "7d"
negative_ttl = "7d"
error_ttl = "1h"
[policy]
threshold = 1000000
deadline = "1m"
[dns]
servers = ["127.0.0.1:1"]
timeout = "1m"
[[list]]
name = "z"
zone = "bl.example"
weight = -1000000
timeout = "1m"
`), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.NewEngine(cfg.EngineOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if v := e.Check(t.Context(), mustAddr("192.0.2.1")); v.Action != policy.ActionAccept || len(v.Errors) != 1 {
		t.Errorf("verdict %+v", v)
	}
}

func TestCategoriesAreOneWord(t *testing.T) {
	const zen = "[[list]]\nname = \"z\"\nzone = \"bl.example\"\n"
	for _, tc := range []struct{ toml, key string }{
		{zen + "category = \"Spam\"\n", "list[0].category"},
		{zen + "category = \"spam_source\"\n", "list[0].category"},
		{zen + "category = \"a.b\"\n", "list[0].category"},
		{zen + "category = \"<b>x</b>\"\n", "list[0].category"},
		{zen + "codes = { \"127.0.0.2\" = \"Zombie\" }\n", `list[0].codes."127.0.0.2"`},
		{"[web]\nself_service_categories = [\"local\", \"open proxy\"]\n" + zen, "web.self_service_categories[1]"},
	} {
		_, err := Parse([]byte(tc.toml), "t.toml")
		if err == nil {
			t.Errorf("%q accepted", tc.toml)
			continue
		}
		if ps := problems(t, err); !slices.ContainsFunc(ps, func(p Problem) bool { return p.Key == tc.key }) {
			t.Errorf("%q: no problem for %s in %v", tc.toml, tc.key, err)
		}
	}
	if _, err := Parse([]byte(zen+"category = \"open-proxy2\"\n"), "t.toml"); err != nil {
		t.Errorf("a word of a-z, 0-9 and '-' refused: %v", err)
	}
}

func TestAdminToken(t *testing.T) {
	const zen = "[[list]]\nname = \"z\"\nzone = \"bl.example\"\n"
	for token, ok := range map[string]bool{
		"":                                      true, // off
		"x":                                     false,
		"0123456789abcdef0123456789abcde":       false, // 31
		"0123456789abcdef0123456789abcdef":      true,  // 32
		"0123456789abcdef 0123456789abcdef":     false,
		"0123456789abcdef0123456789abcdef\x01x": false,
	} {
		_, err := Parse([]byte("[web]\nadmin_token = \""+strings.ReplaceAll(token, "\x01", `\u0001`)+"\"\n"+zen), "t.toml")
		if (err == nil) != ok {
			t.Errorf("admin_token %q: err %v, want ok %v", token, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "web.admin_token") {
			t.Errorf("admin_token %q: %v does not name the key", token, err)
		}
	}
}

func TestSocketGroup(t *testing.T) {
	const zen = "[[list]]\nname = \"z\"\nzone = \"bl.example\"\n"
	for group, ok := range map[string]bool{
		"": true, "postfix": true, "smmsp": true, "_postfix": true, "mail-users": true, "123": true, "machine$": true,
		"post fix": false, "-x": false, "a:b": false, "9x": false, "x\ny": false,
	} {
		text := "[milter]\nsocket_group = \"" + strings.ReplaceAll(group, "\n", `\n`) + "\"\n[policyd]\nsocket_group = \"" + strings.ReplaceAll(group, "\n", `\n`) + "\"\n" + zen
		_, err := Parse([]byte(text), "t.toml")
		if (err == nil) != ok {
			t.Errorf("socket_group %q: err %v, want ok %v", group, err, ok)
		}
		if err != nil && (!strings.Contains(err.Error(), "milter.socket_group") || !strings.Contains(err.Error(), "policyd.socket_group")) {
			t.Errorf("socket_group %q: %v does not name both keys", group, err)
		}
	}
}

// The settings the milter rewrite needs are in the config from now on.
func TestMilterLimitDefaults(t *testing.T) {
	d := Default()
	if d.Milter.MaxConnections != 500 || d.Milter.SessionTimeout.Duration.Minutes() != 30 || d.Milter.SocketGroup != "" || d.Policyd.SocketGroup != "" {
		t.Errorf("milter %+v policyd %+v", d.Milter, d.Policyd)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
