package web

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/policy"
)

// For exempt addresses the page maps answer codes itself; it must agree
// with the engine for every kind of rule. The engine's own answer for a
// checked address is the reference.
func TestCodeCategoryMatchesEngine(t *testing.T) {
	d := startDNS(t)
	conf := fmt.Sprintf(`
[dns]
servers = [%q]
[[list]]
name = "L"
zone = "codes.test"
weight = 2
category = "spam-source"
health = false
codes = { "127.0.0.2" = "spam-source", "127.0.0.4-127.0.0.7" = "zombie", "127.0.1.0/24" = { category = "open-proxy", weight = 4 }, "&8" = "dynamic", "127.0.0.9" = { category = "local", weight = 0 } }
`, d.Addr)
	cfg, err := policy.Parse([]byte(conf), "codes.toml")
	if err != nil {
		t.Fatal(err)
	}
	eng, err := policy.NewEngine(cfg, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	ip := netip.MustParseAddr("198.51.100.1")
	for _, codes := range [][]string{
		{"127.0.0.2"}, {"127.0.0.5"}, {"127.0.1.9"}, {"127.0.0.8"}, {"127.0.0.12"}, {"127.0.0.3"},
		{"127.0.0.9"}, {"127.0.0.2", "127.0.1.1"}, {"127.0.0.4", "127.0.0.8"}, {"127.0.0.2", "127.0.0.9"},
	} {
		t.Run(fmt.Sprint(codes), func(t *testing.T) {
			d.Set(dnsbl.QueryName(ip, "codes.test"), dnstest.Answer{A: codes})
			ins := eng.Inspect(context.Background(), ip)
			want := ins.Lists[0]
			var addrs []netip.Addr
			for _, c := range want.Codes {
				addrs = append(addrs, c)
			}
			cat, w := codeCategory(&cfg.Lists[0], addrs)
			if cat != want.Category || w != want.Weight {
				t.Errorf("codes %v: page says %s/%v, engine %s/%v", codes, cat, w, want.Category, want.Weight)
			}
		})
	}
}
