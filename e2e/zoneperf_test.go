//go:build e2e

package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/iplist"
	"github.com/blmilter/blmilter/zone"
)

// perfListings makes n distinct listings as a real list looks (see
// testkit.ListingPrefixes).
func perfListings(n int) []zone.Listing {
	cats := []string{"zombie", "dynamic", "spam-source"}
	out := make([]zone.Listing, n)
	for i, p := range testkit.ListingPrefixes(n, 42) {
		out[i] = zone.Listing{Prefix: p, Category: cats[i%len(cats)], Reason: fmt.Sprintf("evidence-%d", i)}
	}
	return out
}

// perfQueries makes n A queries in dnsperf's format, half for listed
// addresses (anywhere inside a listing) and half for unlisted ones.
func perfQueries(ls []zone.Listing, n int, zoneName string) []string {
	rng := rand.New(rand.NewPCG(43, 8))
	var entries []iplist.Entry
	for _, l := range ls {
		entries = append(entries, iplist.Entry{Prefix: l.Prefix})
	}
	list := iplist.Build(entries)
	out := make([]string, 0, n)
	for len(out) < n {
		var a netip.Addr
		if len(out)%2 == 0 {
			p := ls[rng.IntN(len(ls))].Prefix
			b := p.Addr().AsSlice()
			for i := p.Bits(); i < len(b)*8; i++ {
				if rng.IntN(2) == 1 {
					b[i/8] |= 0x80 >> (i % 8)
				}
			}
			a, _ = netip.AddrFromSlice(b)
		} else {
			a = netip.AddrFrom4([4]byte{byte(11 + rng.IntN(180)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
			if list.Contains(a) {
				continue
			}
		}
		out = append(out, reversed(a)+"."+zoneName+" A")
	}
	return out
}

var qpsRe = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
var latRe = regexp.MustCompile(`Average Latency \(s\):\s+([0-9.]+)`)
var lostRe = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
var rcodeRe = regexp.MustCompile(`(NOERROR|NXDOMAIN) ([0-9]+) \(`)

// TestZonePerf measures queries per second of the zone server against
// rbldnsd with dnsperf: the same listings, half the queries listed, each
// server in turn for a bounded time per round. Figures go to the log as a
// table; the test fails only if a server fails to answer as it should.
//
// With -tags e2e it runs one short round (10,000 listings, 2 s per server),
// so its whole path is exercised; e2e/zoneperf.sh runs it at full size for
// figures. BLMILTER_ZONEPERF_N (listings, default 10000),
// BLMILTER_ZONEPERF_SECONDS (per run, default 2), BLMILTER_ZONEPERF_ROUNDS
// (default 1), BLMILTER_ZONEPERF_CLIENTS (dnsperf's -c, default 8) and
// BLMILTER_ZONEPERF_OUTSTANDING (its -q, default 100: more overflows the
// servers' socket buffers on loopback, and the lost queries then measure
// the buffers) size it.
func TestZonePerf(t *testing.T) {
	need(t, "rbldnsd", "dnsperf")
	n := envInt("BLMILTER_ZONEPERF_N", 10000)
	seconds := envInt("BLMILTER_ZONEPERF_SECONDS", 2)
	rounds := envInt("BLMILTER_ZONEPERF_ROUNDS", 1)
	clients := envInt("BLMILTER_ZONEPERF_CLIENTS", 8)
	outstanding := envInt("BLMILTER_ZONEPERF_OUTSTANDING", 100)
	const name = "bl.example.org"
	dir := tempDir(t, "zoneperf")

	ls := perfListings(n)
	var lf strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&lf, "%s %s %s\n", l.Prefix, l.Category, l.Reason)
	}
	writeFile(t, filepath.Join(dir, "listings.txt"), lf.String())
	zoneserve := testkit.Binary(t, "github.com/blmilter/blmilter/e2e/zoneserve")
	if out, err := execOut(zoneserve, "-zone", name, "-listings", filepath.Join(dir, "listings.txt"), "-rbldnsd", filepath.Join(dir, "rbldnsd.zone")); err != nil {
		t.Fatalf("the rbldnsd zone: %v\n%s", err, out)
	}
	queries := filepath.Join(dir, "queries.txt")
	writeFile(t, queries, strings.Join(perfQueries(ls, 200000, name), "\n")+"\n")

	rport := testkit.FreeDNSPort(t)
	rbl := startProc(t, tool("rbldnsd"), "-n", "-e", "-t", "300", "-c", "1h", "-b", "127.0.0.1/"+strconv.Itoa(rport),
		name+":combined:"+filepath.Join(dir, "rbldnsd.zone"))
	raddr := "127.0.0.1:" + strconv.Itoa(rport)
	zport := testkit.FreeDNSPort(t)
	zaddr := "127.0.0.1:" + strconv.Itoa(zport)
	zs := startProc(t, zoneserve, "-listen", zaddr, "-zone", name, "-listings", filepath.Join(dir, "listings.txt"),
		"-workers", strconv.Itoa(envInt("BLMILTER_ZONEPERF_WORKERS", 0)))
	for _, s := range []struct {
		addr string
		p    *proc
	}{{raddr, rbl}, {zaddr, zs}} {
		testkit.WaitFor(t, s.p.name, 60*time.Second, func() error {
			if !s.p.running() {
				t.Fatalf("%s exited: %v\n%s", s.p.name, s.p.err, s.p.out.String())
			}
			_, err := soaSerial(s.addr, name+".")
			return err
		})
	}

	type result struct{ qps, latency, lost []float64 }
	results := map[string]*result{"rbldnsd": {}, "blmilter zone": {}}
	order := []struct{ name, addr string }{{"rbldnsd", raddr}, {"blmilter zone", zaddr}}
	for round := range rounds {
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, s := range order {
			host, port := "127.0.0.1", strings.TrimPrefix(s.addr, "127.0.0.1:")
			out, err := execOut(tool("dnsperf"), "-s", host, "-p", port, "-d", queries, "-l", strconv.Itoa(seconds),
				"-c", strconv.Itoa(clients), "-T", "1", "-q", strconv.Itoa(outstanding), "-t", "2")
			if err != nil {
				t.Fatalf("dnsperf against %s: %v\n%s", s.name, err, out)
			}
			m := qpsRe.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no rate in dnsperf's output:\n%s", out)
			}
			qps, _ := strconv.ParseFloat(m[1], 64)
			lat, lost := 0.0, 0.0
			if m := latRe.FindStringSubmatch(out); m != nil {
				lat, _ = strconv.ParseFloat(m[1], 64)
			}
			if m := lostRe.FindStringSubmatch(out); m != nil {
				lost, _ = strconv.ParseFloat(m[1], 64)
			}
			codes := map[string]float64{}
			for _, m := range rcodeRe.FindAllStringSubmatch(out, -1) {
				codes[m[1]], _ = strconv.ParseFloat(m[2], 64)
			}
			// Half the queries are listed: NOERROR and NXDOMAIN alike.
			if total := codes["NOERROR"] + codes["NXDOMAIN"]; total == 0 || codes["NOERROR"]/total < 0.4 || codes["NOERROR"]/total > 0.6 {
				t.Errorf("%s: answers %v, want about half NOERROR", s.name, codes)
			}
			r := results[s.name]
			r.qps = append(r.qps, qps)
			r.latency = append(r.latency, lat*1000)
			r.lost = append(r.lost, lost)
			t.Logf("round %d: %-14s %9.0f queries/s, %.3f ms average, %.0f lost", round+1, s.name, qps, lat*1000, lost)
		}
	}
	median := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	var table strings.Builder
	fmt.Fprintf(&table, "\n%d listings, %d s per run, %d rounds, dnsperf -c %d -q %d; medians:\n", n, seconds, rounds, clients, outstanding)
	fmt.Fprintf(&table, "%-14s %12s %12s %8s\n", "server", "queries/s", "latency ms", "lost")
	for _, name := range []string{"rbldnsd", "blmilter zone"} {
		r := results[name]
		fmt.Fprintf(&table, "%-14s %12.0f %12.3f %8.0f\n", name, median(r.qps), median(r.latency), median(r.lost))
	}
	fmt.Fprintf(&table, "blmilter zone / rbldnsd: %.2f\n", median(results["blmilter zone"].qps)/median(results["rbldnsd"].qps))
	t.Log(table.String())
	if report := os.Getenv("BLMILTER_ZONEPERF_REPORT"); report != "" {
		os.WriteFile(report, []byte(table.String()), 0o644)
	}
}
