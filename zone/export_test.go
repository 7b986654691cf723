package zone

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestExportBINDIsTheTransfer(t *testing.T) {
	opts := testOptions()
	ls := append(slices.Clone(serverListings),
		Listing{Prefix: netip.MustParsePrefix("1.2.3.0/24"), Category: "zombie", Reason: `quote " and backslash \ and $dollar`},
		Listing{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Category: "dynamic", Reason: "the root wildcard"},
		Listing{Prefix: netip.MustParsePrefix("1230::/12"), Category: "dynamic", Reason: "ünïcode"},
	)
	ts := startServer(t, opts, ls)
	var buf bytes.Buffer
	st, err := Export(&buf, FormatBIND, opts.Zone, ls, State{Serial: ts.Serial(), Digest: ts.snap.Load().b.digest})
	if err != nil {
		t.Fatal(err)
	}
	if st.Serial != ts.Serial() {
		t.Errorf("export of the served content has serial %d, the server %d", st.Serial, ts.Serial())
	}
	zp := dns.NewZoneParser(&buf, "", "export")
	var rrs []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("the export does not parse: %v", err)
	}
	axfr, _, err := transferIn(t, ts.addr, dns.TypeAXFR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffSets(rrSet(rrs), rrSet(axfr)); d != "" {
		t.Errorf("the export differs from the transfer:\n%s", d)
	}
}

func TestExportState(t *testing.T) {
	z := testOptions().Zone
	var buf bytes.Buffer
	st1, err := Export(&buf, FormatBIND, z, serverListings, State{})
	if err != nil {
		t.Fatal(err)
	}
	if st1.Serial == 0 || st1.Digest == "" {
		t.Fatalf("first export: %+v", st1)
	}
	st2, _ := Export(&buf, FormatRbldnsd, z, serverListings, st1)
	if st2 != st1 {
		t.Errorf("the same content exported again: %+v, want %+v", st2, st1)
	}
	st3, _ := Export(&buf, FormatBIND, z, serverListings[1:], st1)
	if !serialAfter(st3.Serial, st1.Serial) || st3.Digest == st1.Digest {
		t.Errorf("other content: %+v after %+v", st3, st1)
	}
	if _, err := Export(&buf, "tinydns", z, nil, State{}); err == nil || !strings.Contains(err.Error(), "unknown format") {
		t.Errorf("unknown format: %v", err)
	}
	bad := z
	bad.NS = nil
	if _, err := Export(&buf, FormatBIND, bad, nil, State{}); err == nil || !strings.Contains(err.Error(), "ns") {
		t.Errorf("zone without NS: %v", err)
	}
}

func TestExportRbldnsdLines(t *testing.T) {
	z := testOptions().Zone
	ls := []Listing{
		{Prefix: netip.MustParsePrefix("198.18.2.7/32"), Category: "zombie", Reason: "costs $5"},
		{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Category: "dynamic", Reason: "line\nbreak"},
		{Prefix: netip.MustParsePrefix("2001:db8:bad::/48"), Category: "zombie", Reason: "v6"},
		{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Category: "zombie", Reason: "loopback"},
	}
	var buf bytes.Buffer
	st, err := Export(&buf, FormatRbldnsd, z, ls, State{})
	if err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"$SOA 300 ns1.example.org. hostmaster.example.org. " + itoa(int(st.Serial)) + " 3600 600 604800 60\n",
		"$NS 300 ns1.example.org. ns2.example.net.\n",
		"$DATASET ip4trie:blmilter-ipv4 @\n",
		"198.18.2.7 :127.0.0.4:zombie: costs $$5; see https://lookup.example.org/ip/198.18.2.7\n",
		"198.19.0.0/16 :127.0.0.10:dynamic: line break; see https://lookup.example.org/ip/198.19.0.0\n",
		"127.0.0.2 :127.0.0.2:test: RFC 5782 test point; see https://lookup.example.org/ip/127.0.0.2\n",
		"!127.0.0.1\n",
		"$DATASET ip6trie:blmilter-ipv6 @\n",
		"2001:db8:bad:0:0:0:0:0/48 :127.0.0.4:zombie: v6; see https://lookup.example.org/ip/2001:db8:bad::\n",
		"0:0:0:0:0:ffff:7f00:2 :127.0.0.2:test: RFC 5782 test point; see https://lookup.example.org/ip/127.0.0.2\n",
		"!0:0:0:0:0:ffff:7f00:1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("export lacks %q:\n%s", want, out)
		}
	}
}
