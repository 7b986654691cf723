package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const listTOML = "\n[[list]]\nname = \"own\"\nstore = true\n"

// The [zone] of the example, as an operator would paste it.
const zoneExample = `
[zone]
name = "bl.example.org"               # the zone apex
listen = ["127.0.0.1:5300"]           # udp+tcp each
ttl = "5m"
ns = ["ns1.example.org.", "ns2.example.org."]
soa = { mname = "ns1.example.org.", rname = "hostmaster.example.org.", refresh = "1h", retry = "10m", expire = "7d", minimum = "5m" }
codes = { zombie = "127.0.0.4", open-proxy = "127.0.0.9", spam-source = "127.0.0.2", dynamic = "127.0.0.10", local = "127.0.0.3" }
txt = "{category}: see {url}"
transfer = ["127.0.0.1/32"]
notify = ["127.0.0.1:5301"]
tsig = { name = "xfr.example.org.", algorithm = "hmac-sha256", secret_file = "/etc/blmilter/xfr.key" }
`

func TestZoneExample(t *testing.T) {
	cfg, err := Parse([]byte(zoneExample+listTOML), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	z := &cfg.Zone
	if !z.Enabled() || z.Name != "bl.example.org" || z.TTL.Duration.Minutes() != 5 || z.SOA.Expire.Hours() != 7*24 || z.TSIG.SecretFile != "/etc/blmilter/xfr.key" {
		t.Errorf("zone %+v", z)
	}
	want := map[string]netip.Addr{
		"zombie": netip.MustParseAddr("127.0.0.4"), "open-proxy": netip.MustParseAddr("127.0.0.9"),
		"spam-source": netip.MustParseAddr("127.0.0.2"), "dynamic": netip.MustParseAddr("127.0.0.10"), "local": netip.MustParseAddr("127.0.0.3"),
	}
	if got := z.CodeAddrs(); !reflect.DeepEqual(got, want) {
		t.Errorf("codes %v", got)
	}
	if got := z.TransferNets(); len(got) != 1 || got[0] != netip.MustParsePrefix("127.0.0.1/32") {
		t.Errorf("transfer %v", got)
	}
	if got := z.NotifyAddrs(); !reflect.DeepEqual(got, []string{"127.0.0.1:5301"}) {
		t.Errorf("notify %v", got)
	}

	// A name without listen addresses: a zone to export, not to serve.
	cfg, err = Parse([]byte("[zone]\nname = \"bl.example.org\"\nns = [\"ns1.example.org\"]\n"+listTOML), "t.toml")
	if err != nil || !cfg.Zone.Enabled() || cfg.Zone.Served() {
		t.Fatalf("export only: %v, enabled %v, served %v", err, cfg.Zone.Enabled(), cfg.Zone.Served())
	}

	// Without [zone] nothing is served, and the defaults validate.
	cfg, err = Parse([]byte(listTOML), "t.toml")
	if err != nil || cfg.Zone.Enabled() {
		t.Fatalf("no [zone]: %v, enabled %v", err, cfg.Zone.Enabled())
	}
	if len(cfg.Zone.CodeAddrs()) != 0 {
		t.Errorf("codes parsed for a zone that is off")
	}
}

// Each bad [zone] or [fleet] value is a problem naming its key and line.
func TestZoneFleetErrors(t *testing.T) {
	const base = "[zone]\nname = \"bl.example.org\"\nlisten = [\"127.0.0.1:53\"]\nns = [\"ns1.example.org\"]\n"
	for _, tc := range []struct {
		name, toml, key string
		line            int
		msg             string
	}{
		{"half configured", "[zone]\nlisten = [\"127.0.0.1:53\"]\n", "zone.name", 1, "is needed"},
		{"bad name", "[zone]\nname = \"bl example\"\nlisten = [\"127.0.0.1:53\"]\nns = [\"ns1.example.org\"]\n", "zone.name", 2, "not a DNS zone"},
		{"listen host name", "[zone]\nname = \"bl.example.org\"\nlisten = [\"localhost:53\"]\nns = [\"ns1.example.org\"]\n", "zone.listen[0]", 3, "IP:PORT"},
		{"listen twice", "[zone]\nname = \"bl.example.org\"\nlisten = [\"127.0.0.1:53\", \"127.0.0.1:53\"]\nns = [\"ns1.example.org\"]\n", "zone.listen[1]", 3, "twice"},
		{"no ns", "[zone]\nname = \"bl.example.org\"\nlisten = [\"127.0.0.1:53\"]\n", "zone.ns", 1, "at least one"},
		{"ns inside", "[zone]\nname = \"bl.example.org\"\nlisten = [\"127.0.0.1:53\"]\nns = [\"ns1.bl.example.org\"]\n", "zone.ns[0]", 4, "inside the zone"},
		{"ttl", base + "ttl = \"30d\"\n", "zone.ttl", 5, "at most 7d"},
		{"ttl zero", base + "ttl = \"0s\"\n", "zone.ttl", 5, "positive"},
		{"soa rname", base + "soa = { rname = \"not a name\" }\n", "zone.soa.rname", 5, "must be a name"},
		{"soa expire", base + "[zone.soa]\nrefresh = \"2d\"\nexpire = \"1d\"\n", "zone.soa.expire", 7, "below zone.soa.refresh"},
		{"soa minimum", base + "soa = { minimum = \"2d\" }\n", "zone.soa.minimum", 5, "at most 1d"},
		{"code outside 127/8", base + "codes = { zombie = \"10.0.0.4\" }\n", "zone.codes.zombie", 5, "127.0.0.0/8"},
		{"IPv6 code", base + "codes = { zombie = \"2001:db8::2\" }\n", "zone.codes.zombie", 5, "127.0.0.0/8"},
		{"code 127.0.0.1", base + "codes = { zombie = \"127.0.0.1\" }\n", "zone.codes.zombie", 5, "test point"},
		{"code refusal range", base + "codes = { zombie = \"127.255.255.254\" }\n", "zone.codes.zombie", 5, "127.255.255"},
		{"code category", base + "codes = { \"Zombie Host\" = \"127.0.0.4\" }\n", `zone.codes."Zombie Host"`, 5, "non-empty word"},
		{"code not an address", base + "codes = { zombie = \"four\" }\n", "zone.codes.zombie", 5, "must be an address"},
		{"txt placeholder", base + "txt = \"{list} listed\"\n", "zone.txt", 5, "unknown placeholder {list}"},
		{"txt too long", base + "txt = \"" + strings.Repeat("x", 256) + "\"\n", "zone.txt", 5, "at most 255"},
		{"transfer", base + "transfer = [\"192.0.2.0/33\"]\n", "zone.transfer[0]", 5, "not a network"},
		{"notify", base + "notify = [\"ns2.example.org:53\"]\n", "zone.notify[0]", 5, "IP:PORT"},
		{"tsig without file", base + "tsig = { name = \"xfr.example.org.\" }\n", "zone.tsig.secret_file", 5, "is needed"},
		{"tsig without name", base + "tsig = { secret_file = \"x.key\" }\n", "zone.tsig.name", 5, "is needed"},
		{"tsig algorithm", base + "tsig = { name = \"xfr.example.org.\", secret_file = \"x.key\", algorithm = \"hmac-md5\" }\n", "zone.tsig.algorithm", 5, "must be hmac-sha256"},
		{"unknown zone key", base + "serial = 7\n", "zone.serial", 5, "unknown key"},
		{"previous keys alone", "[fleet]\nprevious_key_files = [\"old.key\"]\n", "fleet.previous_key_files", 2, "needs fleet.key_file"},
		{"node name", "[fleet]\nnode = \"mx 2\"\n", "fleet.node", 2, "letters, digits"},
		{"node too long", "[fleet]\nnode = \"" + strings.Repeat("m", 33) + "\"\n", "fleet.node", 2, "at most 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml+listTOML), "t.toml")
			if err == nil {
				t.Fatal("accepted")
			}
			ps := problems(t, err)
			for _, p := range ps {
				if p.Key == tc.key && strings.Contains(p.Msg, tc.msg) {
					if p.Line != tc.line {
						t.Errorf("%s on line %d, want %d", p.Key, p.Line, tc.line)
					}
					return
				}
			}
			t.Fatalf("no problem %s: ...%s...; got:\n%v", tc.key, tc.msg, err)
		})
	}
}

// Key files are found beside the config file, as list files are.
func TestLoadFileRelativeKeyFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "blmilter.toml")
	text := zoneExample + "[fleet]\nkey_file = \"fleet.key\"\nprevious_key_files = [\"old/fleet.key\"]\n" + listTOML
	text = strings.Replace(text, `secret_file = "/etc/blmilter/xfr.key"`, `secret_file = "xfr.key"`, 1)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Fleet.KeyFile != filepath.Join(dir, "fleet.key") || cfg.Fleet.PreviousKeyFiles[0] != filepath.Join(dir, "old/fleet.key") ||
		cfg.Zone.TSIG.SecretFile != filepath.Join(dir, "xfr.key") {
		t.Errorf("key files %q %q %q", cfg.Fleet.KeyFile, cfg.Fleet.PreviousKeyFiles, cfg.Zone.TSIG.SecretFile)
	}
}
