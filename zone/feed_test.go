package zone

import (
	"context"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/internal/testkit/storeseed"
	"github.com/blmilter/blmilter/store"
)

// fromStore is the conversion the daemon does.
func fromStore(ls []store.Listing) []Listing {
	out := make([]Listing, len(ls))
	for i, l := range ls {
		out[i] = Listing{Prefix: l.Prefix, Category: l.Category, Reason: l.Reason}
		if l.ExpiresAt != nil {
			out[i].Expires = *l.ExpiresAt
		}
	}
	return out
}

// followStore wires a server to a store as the daemon does.
func followStore(t testing.TB, st *store.Store, srv *Server) {
	t.Helper()
	f := NewFeeder(srv, func() []Listing { return fromStore(st.LiveListings()) })
	st.OnChange(func(netip.Prefix) { f.Changed() })
	f.Sync()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestStoreChangesAreServed changes the list the ways an operator does:
// through the daemon's own store (the admin API, a removal), through
// another process (the command line) and by expiry, and measures how long
// each takes to be served. The promise is 2 s.
func TestStoreChangesAreServed(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "blmilter.db")
	daemon, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer daemon.Close()
	if _, err := daemon.AddListing(ctx, store.Listing{Prefix: netip.MustParsePrefix("198.18.2.7/32"), Category: "zombie", Reason: "trap"}); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, testOptions(), nil)
	followStore(t, daemon, ts.Server)
	if r := ask(t, ts.addr, "udp", "7.2.18.198.bl.example.org.", dns.TypeA); dnstest.AnswerA(r) != "127.0.0.4" {
		t.Fatalf("the store's listing is not served after Sync: %v", r)
	}

	// The command line is another process with its own handle, which
	// never polls.
	cli, err := store.Open(path, store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	served := func(name string, listed bool) func() bool {
		return func() bool {
			r := ask(t, ts.addr, "udp", name, dns.TypeA)
			return (dnstest.AnswerA(r) != "") == listed
		}
	}
	measure := func(what string, change func(), cond func() bool) {
		t.Helper()
		start := time.Now()
		change()
		for !cond() {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s: not served after 5 s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(start)
		t.Logf("%s: served after %v", what, took.Round(time.Millisecond))
		if took > 2*time.Second {
			t.Errorf("%s: served after %v, the promise is 2 s", what, took)
		}
	}
	measure("added by the daemon", func() {
		if _, err := daemon.AddListing(ctx, store.Listing{Prefix: netip.MustParsePrefix("198.18.3.0/24"), Category: "dynamic"}); err != nil {
			t.Fatal(err)
		}
	}, served("9.3.18.198.bl.example.org.", true))
	for i := range 3 {
		name := netip.AddrFrom4([4]byte{198, 18, 4, byte(i)})
		measure("added by another process", func() {
			if _, err := cli.AddListing(ctx, store.Listing{Prefix: netip.PrefixFrom(name, 32), Category: "zombie"}); err != nil {
				t.Fatal(err)
			}
		}, served(addrName(name, "bl.example.org."), true))
		time.Sleep(time.Duration(i) * 700 * time.Millisecond) // land at other points of the poll
	}
	measure("removed by another process", func() {
		if err := cli.RemoveListing(ctx, netip.MustParsePrefix("198.18.2.7/32"), "cli:test"); err != nil {
			t.Fatal(err)
		}
	}, served("7.2.18.198.bl.example.org.", false))
	expires := time.Now().Add(1500 * time.Millisecond)
	if _, err := cli.AddListing(ctx, store.Listing{Prefix: netip.MustParsePrefix("198.18.5.5/32"), Category: "zombie", ExpiresAt: &expires}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the expiring listing", 5*time.Second, func() error {
		return testkit.Unless(served("5.5.18.198.bl.example.org.", true)(), "not served")
	})
	time.Sleep(time.Until(expires))
	measure("expired", func() {}, served("5.5.18.198.bl.example.org.", false))
}

// A flood of trap hits reaches the zone in a few large updates rather than
// one per hit, and the zone serves every listing of the flood within the
// 2 s promise of the last hit.
func TestTrapFloodIsServedInBatches(t *testing.T) {
	const (
		clients = 64
		each    = 4
	)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "blmilter.db")
	storeseed.Hosts(t, path, 10000)
	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ts := startServer(t, testOptions(), nil)
	var loads atomic.Int64
	f := NewFeeder(ts.Server, func() []Listing {
		loads.Add(1)
		return fromStore(st.LiveListings())
	})
	st.OnChange(func(netip.Prefix) { f.Changed() })
	f.Sync()
	runCtx, cancel := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { f.Run(runCtx); close(ran) }()
	defer func() { cancel(); <-ran }()
	loads.Store(0)

	rules := store.TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source"}
	var ips []netip.Addr
	for c := range clients {
		for i := range each {
			ips = append(ips, netip.AddrFrom4([4]byte{198, 18, byte(c), byte(i)}))
		}
	}
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for _, ip := range ips[c*each : (c+1)*each] {
				if _, err := st.RecordTrapHit(ctx, store.TrapHit{IP: ip, HELO: "bot.example", Trap: "t@example.org"}, rules); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	done := time.Now()
	for _, ip := range ips {
		for dnstest.AnswerA(ask(t, ts.addr, "udp", addrName(ip, "bl.example.org."), dns.TypeA)) != "127.0.0.2" {
			if time.Since(done) > 5*time.Second {
				t.Fatalf("%s: not served 5 s after the last hit", ip)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	took := time.Since(done)
	t.Logf("%d hits, %d zone updates; all served %v after the last hit", len(ips), loads.Load(), took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("the flood was served %v after its last hit, the promise is 2 s", took)
	}
	if n := loads.Load(); n >= int64(len(ips))/2 {
		t.Errorf("%d zone updates for %d hits: the feeder did not gather them", n, len(ips))
	}
}
