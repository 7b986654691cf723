package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustPrefix(t testing.TB, s string) netip.Prefix {
	t.Helper()
	p, err := ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustAddr(t testing.TB, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func add(t testing.TB, s *Store, prefix, category string) Listing {
	t.Helper()
	l, err := s.AddListing(context.Background(), Listing{Prefix: mustPrefix(t, prefix), Category: category, Reason: "seen at " + prefix, Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestParsePrefix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"192.0.2.7", "192.0.2.7/32"},
		{" 192.0.2.7 ", "192.0.2.7/32"},
		{"198.51.100.77/24", "198.51.100.0/24"},
		{"::ffff:192.0.2.7", "192.0.2.7/32"},
		{"::ffff:192.0.2.0/120", "192.0.2.0/24"},
		{"2001:DB8::1", "2001:db8::1/128"},
		{"2001:db8:1:2::/48", "2001:db8:1::/48"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			p, err := ParsePrefix(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if p.String() != tc.want {
				t.Errorf("ParsePrefix(%q) = %s, want %s", tc.in, p, tc.want)
			}
		})
	}
	for _, bad := range []string{"", "example.org", "192.0.2.300", "192.0.2.0/33", "fe80::1%eth0"} {
		if p, err := ParsePrefix(bad); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePrefix(%q) = %v, %v; want ErrInvalid", bad, p, err)
		}
	}
}

func TestLookup(t *testing.T) {
	s := openTest(t, Options{})
	add(t, s, "192.0.2.7", "zombie")
	add(t, s, "198.51.100.0/24", "dynamic")
	add(t, s, "198.51.100.9", "open-proxy")
	add(t, s, "2001:db8::/32", "spam-source")
	add(t, s, "2001:db8:1::5", "zombie")
	tests := []struct {
		ip, wantCategory string
		wantListed       bool
	}{
		{"192.0.2.7", "zombie", true},
		{"192.0.2.8", "", false},
		{"198.51.100.77", "dynamic", true},
		{"198.51.100.9", "open-proxy", true}, // the longest prefix wins
		{"::ffff:198.51.100.1", "dynamic", true},
		{"198.51.101.1", "", false},
		{"2001:db8:ffff::1", "spam-source", true},
		{"2001:db8:1::5", "zombie", true},
		{"2001:db9::1", "", false},
		{"203.0.113.1", "", false},
		{"::", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.ip, func(t *testing.T) {
			cat, reason, listed := s.Lookup(mustAddr(t, tc.ip))
			if listed != tc.wantListed || cat != tc.wantCategory {
				t.Errorf("Lookup(%s) = %q, %q, %v; want %q, listed %v", tc.ip, cat, reason, listed, tc.wantCategory, tc.wantListed)
			}
			if listed && reason == "" {
				t.Errorf("Lookup(%s) has no reason", tc.ip)
			}
		})
	}
	if _, _, listed := s.Lookup(netip.Addr{}); listed {
		t.Error("the invalid address is listed")
	}
	l, ok := s.ListingFor(mustAddr(t, "198.51.100.200"))
	if !ok || l.Prefix.String() != "198.51.100.0/24" || l.Source != "test" || l.ListedAt.IsZero() {
		t.Errorf("ListingFor(198.51.100.200) = %+v, %v", l, ok)
	}
	if n := testing.AllocsPerRun(100, func() { s.Lookup(mustAddr(t, "198.51.100.77")) }); n != 0 {
		t.Errorf("Lookup allocates %.0f times", n)
	}
}

func TestAddListingValidates(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	at := func(y int) *time.Time { t := time.Date(y, 6, 1, 0, 0, 0, 0, time.UTC); return &t }
	for name, l := range map[string]Listing{
		"no prefix":        {Category: "zombie"},
		"no category":      {Prefix: mustPrefix(t, "192.0.2.1")},
		"two words":        {Prefix: mustPrefix(t, "192.0.2.1"), Category: "spam source"},
		"markup":           {Prefix: mustPrefix(t, "192.0.2.1"), Category: "<b>zombie</b>"},
		"line break":       {Prefix: mustPrefix(t, "192.0.2.1"), Category: "zombie\r\nX-Evil: 1"},
		"upper case":       {Prefix: mustPrefix(t, "192.0.2.1"), Category: "Zombie"},
		"long category":    {Prefix: mustPrefix(t, "192.0.2.1"), Category: strings.Repeat("a", 65)},
		"expiry in 10000":  {Prefix: mustPrefix(t, "192.0.2.1"), Category: "zombie", ExpiresAt: at(10000)},
		"expiry in 1600":   {Prefix: mustPrefix(t, "192.0.2.1"), Category: "zombie", ExpiresAt: at(1600)},
		"expiry in 1999":   {Prefix: mustPrefix(t, "192.0.2.1"), Category: "zombie", ExpiresAt: at(1999)},
		"listed in 1970":   {Prefix: mustPrefix(t, "192.0.2.1"), Category: "zombie", ListedAt: *at(1970)},
		"reason too long":  {Prefix: mustPrefix(t, "192.0.2.1"), Category: "zombie", Reason: strings.Repeat("x", MaxReasonLen+1)},
		"reason not UTF-8": {Prefix: mustPrefix(t, "192.0.2.1"), Category: "zombie", Reason: "\xff"},
	} {
		if _, err := s.AddListing(ctx, l); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
	if s.Len() != 0 {
		t.Errorf("%d listings stored from invalid input", s.Len())
	}
}

// Expiry times far from now are stored as they are: the years 2262 and
// later (past Unix nanoseconds) and up to 9999 keep their order and value.
func TestFarExpiry(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	for _, y := range []int{2000, 2263, 3000, 9999} {
		exp := time.Date(y, 12, 31, 0, 0, 0, 0, time.UTC)
		l, err := s.AddListing(ctx, Listing{Prefix: mustPrefix(t, fmt.Sprintf("192.0.2.%d", y%250)), Category: "zombie", ExpiresAt: &exp})
		if err != nil {
			t.Fatalf("year %d: %v", y, err)
		}
		got, ok := s.ListingFor(l.Prefix.Addr())
		if live := exp.After(time.Now()); ok != live {
			t.Errorf("year %d: listed %v, want %v", y, ok, live)
		}
		ls, _ := s.Listings(ctx)
		found := false
		for _, x := range ls {
			if x.Prefix == l.Prefix {
				found = true
				if !x.ExpiresAt.Equal(exp) {
					t.Errorf("year %d: stored expiry %v", y, x.ExpiresAt)
				}
			}
		}
		if found != exp.After(time.Now()) || (ok && !got.ExpiresAt.Equal(exp)) {
			t.Errorf("year %d: in Listings %v, snapshot %+v", y, found, got)
		}
	}
}

func TestExpiry(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{PollInterval: -1})
	changes := make(chan netip.Prefix, 10)
	s.OnChange(func(p netip.Prefix) { changes <- p })

	add(t, s, "198.51.100.0/24", "dynamic")
	<-changes
	exp := time.Now().Add(300 * time.Millisecond).Truncate(time.Millisecond) // kept to the millisecond
	if _, err := s.AddListing(ctx, Listing{Prefix: mustPrefix(t, "198.51.100.9"), Category: "zombie", ExpiresAt: &exp}); err != nil {
		t.Fatal(err)
	}
	<-changes
	past := time.Now().Add(-time.Minute)
	if _, err := s.AddListing(ctx, Listing{Prefix: mustPrefix(t, "192.0.2.1"), Category: "zombie", ExpiresAt: &past}); err != nil {
		t.Fatal(err)
	}
	if _, _, listed := s.Lookup(mustAddr(t, "192.0.2.1")); listed {
		t.Error("a listing added already expired matches")
	}
	if cat, _, _ := s.Lookup(mustAddr(t, "198.51.100.9")); cat != "zombie" {
		t.Fatalf("before expiry: category %q, want zombie", cat)
	}

	// The watcher rebuilds the snapshot at the expiry and reports it.
	select {
	case p := <-changes:
		if p.String() != "198.51.100.9/32" {
			t.Errorf("OnChange(%s) at expiry, want 198.51.100.9/32", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no OnChange for the expired listing")
	}
	if !time.Now().After(exp) {
		t.Error("OnChange came before the expiry")
	}
	// An expired host listing falls through to the network around it.
	if cat, _, _ := s.Lookup(mustAddr(t, "198.51.100.9")); cat != "dynamic" {
		t.Errorf("after expiry: category %q, want dynamic (the /24)", cat)
	}
	ls, err := s.Listings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0].Prefix.String() != "198.51.100.0/24" {
		t.Errorf("Listings() = %+v, want only the /24", ls)
	}
}

func TestExpiredMatchIsSkippedBeforeRebuild(t *testing.T) {
	// The snapshot checks expiry at lookup time, so a listing stops
	// matching at its expiry even if no rebuild has happened yet.
	exp := time.Now().Add(time.Hour)
	snap := newSnapshot([]Listing{
		{Prefix: mustPrefix(t, "192.0.2.7"), Category: "zombie", ExpiresAt: &exp},
		{Prefix: mustPrefix(t, "192.0.2.0/24"), Category: "dynamic"},
	}, 1, time.Now(), time.Now)
	if e, _ := snap.lookup(mustAddr(t, "192.0.2.7")); e.l.Category != "zombie" {
		t.Fatalf("got %q, want zombie", e.l.Category)
	}
	for _, lv := range snap.v4 {
		for _, e := range lv.m {
			if e.expires != 0 {
				e.expires = time.Now().Add(-time.Second).UnixMilli()
			}
		}
	}
	if e, _ := snap.lookup(mustAddr(t, "192.0.2.7")); e.l.Category != "dynamic" {
		t.Errorf("got %q, want dynamic", e.l.Category)
	}
}

func TestRemoveListing(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	add(t, s, "192.0.2.7", "zombie")
	if err := s.RemoveListing(ctx, mustPrefix(t, "192.0.2.7"), "alice"); err != nil {
		t.Fatal(err)
	}
	if _, _, listed := s.Lookup(mustAddr(t, "192.0.2.7")); listed {
		t.Error("still listed after RemoveListing")
	}
	if err := s.RemoveListing(ctx, mustPrefix(t, "192.0.2.7"), "alice"); !errors.Is(err, ErrNotFound) {
		t.Errorf("removing again: %v, want ErrNotFound", err)
	}
	if err := s.RemoveListing(ctx, mustPrefix(t, "192.0.2.0/24"), "alice"); !errors.Is(err, ErrNotFound) {
		t.Errorf("removing a network that is not listed: %v, want ErrNotFound", err)
	}
	// Re-listing keeps the count of earlier removals.
	l := add(t, s, "192.0.2.7", "spam-source")
	if l.Removals != 1 {
		t.Errorf("re-listed with Removals = %d, want 1", l.Removals)
	}
	if got, _ := s.ListingFor(mustAddr(t, "192.0.2.7")); got.Removals != 1 || got.Category != "spam-source" {
		t.Errorf("ListingFor after re-listing = %+v", got)
	}
	// Operator removals are history but not self-service.
	if n, err := s.SelfServiceRemovals(ctx, mustAddr(t, "192.0.2.7"), time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Errorf("SelfServiceRemovals = %d, %v; want 0", n, err)
	}
}

func TestAddListingUpdates(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	first := add(t, s, "192.0.2.7", "zombie")
	second, err := s.AddListing(ctx, Listing{Prefix: mustPrefix(t, "192.0.2.7"), Category: "open-proxy", Reason: "relays", Source: "cli"})
	if err != nil {
		t.Fatal(err)
	}
	if second.ID != first.ID || !second.ListedAt.Equal(first.ListedAt) {
		t.Errorf("update changed identity or date: %+v vs %+v", second, first)
	}
	ls, _ := s.Listings(ctx)
	if len(ls) != 1 || ls[0].Category != "open-proxy" || ls[0].Reason != "relays" {
		t.Errorf("Listings() = %+v", ls)
	}
}

func TestOnChange(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	var (
		mu  sync.Mutex
		got []string
	)
	s.OnChange(func(p netip.Prefix) {
		mu.Lock()
		got = append(got, p.String())
		mu.Unlock()
	})
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		g := got
		got = nil
		return g
	}
	add(t, s, "192.0.2.7", "zombie")
	if g := take(); !slices.Equal(g, []string{"192.0.2.7/32"}) {
		t.Errorf("after add: %v", g)
	}
	add(t, s, "192.0.2.7", "zombie") // the same again: nothing changed for the lookup
	if g := take(); len(g) != 0 {
		t.Errorf("after a no-op add: %v", g)
	}
	if _, err := s.AddListing(ctx, Listing{Prefix: mustPrefix(t, "192.0.2.7"), Category: "dynamic"}); err != nil {
		t.Fatal(err)
	}
	if g := take(); !slices.Equal(g, []string{"192.0.2.7/32"}) {
		t.Errorf("after a category change: %v", g)
	}
	if err := s.RemoveListing(ctx, mustPrefix(t, "192.0.2.7"), "t"); err != nil {
		t.Fatal(err)
	}
	if g := take(); !slices.Equal(g, []string{"192.0.2.7/32"}) {
		t.Errorf("after remove: %v", g)
	}
}

// A change made by another process (the command line) reaches a running
// store's snapshot and its OnChange callbacks.
func TestChangeByAnotherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.db")
	daemon, err := Open(path, Options{PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer daemon.Close()
	changes := make(chan netip.Prefix, 4)
	daemon.OnChange(func(p netip.Prefix) { changes <- p })

	cli, err := Open(path, Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	add(t, cli, "203.0.113.0/24", "local")
	cli.Close()

	select {
	case p := <-changes:
		if p.String() != "203.0.113.0/24" {
			t.Errorf("OnChange(%s)", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon did not notice the listing")
	}
	if cat, _, _ := daemon.Lookup(mustAddr(t, "203.0.113.5")); cat != "local" {
		t.Errorf("daemon Lookup: %q, want local", cat)
	}
}

// The snapshot agrees with netip.Prefix.Contains on the longest match, for
// random prefixes of every length in both families.
func TestSnapshotMatchesContains(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randAddr := func(v6 bool, base netip.Addr, keep int) netip.Addr {
		var b [16]byte
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if !v6 {
			a := netip.AddrFrom4([4]byte(b[:4]))
			if base.IsValid() {
				p, _ := base.Prefix(keep)
				a = withPrefix(p, a)
			}
			return a
		}
		a := netip.AddrFrom16(b)
		if base.IsValid() {
			p, _ := base.Prefix(keep)
			a = withPrefix(p, a)
		}
		return a
	}
	var ls []Listing
	seen := map[netip.Prefix]bool{}
	for i := range 400 {
		v6 := i%2 == 1
		bits := rng.IntN(33)
		if v6 {
			bits = rng.IntN(129)
		}
		p, _ := randAddr(v6, netip.Addr{}, 0).Prefix(bits)
		if seen[p] {
			continue
		}
		seen[p] = true
		ls = append(ls, Listing{ID: int64(i), Prefix: p, Category: fmt.Sprint(i)})
	}
	snap := newSnapshot(ls, 1, time.Now(), time.Now)
	for i := range 20000 {
		// Half the probes land inside a listed prefix, the rest anywhere.
		l := ls[rng.IntN(len(ls))]
		ip := randAddr(l.Prefix.Addr().Is6(), netip.Addr{}, 0)
		if i%2 == 0 {
			ip = randAddr(l.Prefix.Addr().Is6(), l.Prefix.Addr(), l.Prefix.Bits())
		}
		want, wantOK := -1, false
		for j, c := range ls {
			if c.Prefix.Contains(ip) && (!wantOK || c.Prefix.Bits() > ls[want].Prefix.Bits()) {
				want, wantOK = j, true
			}
		}
		e, ok := snap.lookup(ip)
		if ok != wantOK || (ok && e.l.ID != ls[want].ID) {
			t.Fatalf("lookup(%s) = %v, %v; want %v (%v)", ip, e, ok, wantOK, ls[max(want, 0)].Prefix)
		}
	}
}

// withPrefix sets the first p.Bits() bits of a to those of p.
func withPrefix(p netip.Prefix, a netip.Addr) netip.Addr {
	pb, ab := p.Addr().AsSlice(), a.AsSlice()
	for i := range ab {
		bit := i * 8
		switch {
		case bit+8 <= p.Bits():
			ab[i] = pb[i]
		case bit < p.Bits():
			m := byte(0xff) << (8 - (p.Bits() - bit))
			ab[i] = pb[i]&m | ab[i]&^m
		}
	}
	out, _ := netip.AddrFromSlice(ab)
	return out
}
