package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"
)

// The snapshot a rebuild derives from the last one and the rows changed
// since is the one a rebuild from every row makes, and OnChange hears of
// exactly the prefixes whose listing differs, through every way the list
// changes: additions and removals here and by another process, trap hits
// that list and extend, expiry, deletion of rows, a prefix edited by hand,
// and a new self-service rule.
func TestDerivedSnapshotIsTheFullOne(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) { checkDerivedSnapshots(t, seed, 400) })
	}
}

// checkDerivedSnapshots makes steps random changes from seed and compares
// the snapshot after each with a full rebuild.
func checkDerivedSnapshots(t *testing.T, seed uint64, steps int) {
	ctx := context.Background()
	c := newClock()
	path := filepath.Join(t.TempDir(), "blmilter.db")
	s, err := Open(path, Options{Now: c.Now, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	other, err := Open(path, Options{Now: c.Now, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var (
		mu       sync.Mutex
		reported = map[netip.Prefix]bool{}
	)
	s.OnChange(func(p netip.Prefix) {
		mu.Lock()
		reported[p] = true
		mu.Unlock()
	})

	var pool []netip.Prefix
	for i := range 12 {
		pool = append(pool, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32))
	}
	for _, p := range []string{"192.0.2.0/28", "192.0.2.0/24", "198.51.100.0/24", "198.51.100.128/25", "0.0.0.0/0",
		"2001:db8::1/128", "2001:db8::/64", "2001:db8::/48", "2001:db8:1::/64", "2001:db8:1::5/128"} {
		pool = append(pool, netip.MustParsePrefix(p))
	}
	var probes []netip.Addr
	for _, p := range pool {
		probes = append(probes, p.Addr(), lastAddr(p))
	}
	probes = append(probes, netip.MustParseAddr("192.0.2.200"), netip.MustParseAddr("198.51.100.130"),
		netip.MustParseAddr("2001:db8::77"), netip.MustParseAddr("2001:db8:1::9"), netip.MustParseAddr("2001:db8:2::1"))
	categories := []string{"zombie", "spam-source", "dynamic"}

	rng := rand.New(rand.NewPCG(seed, 2))
	expiry := func() *time.Time {
		if rng.IntN(2) == 0 {
			return nil
		}
		e := c.Now().Add(time.Duration(1+rng.IntN(48)) * time.Hour)
		return &e
	}
	add := func(st *Store) string {
		l := Listing{Prefix: pool[rng.IntN(len(pool))], Category: categories[rng.IntN(len(categories))],
			Reason: fmt.Sprint("reason ", rng.IntN(3)), Source: "cli", ExpiresAt: expiry()}
		if _, err := st.AddListing(ctx, l); err != nil {
			t.Fatal(err)
		}
		return "add " + l.Prefix.String()
	}
	remove := func(st *Store) string {
		p := pool[rng.IntN(len(pool))]
		if err := st.RemoveListing(ctx, p, "cli"); err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		return "remove " + p.String()
	}
	changes := []func() string{
		func() string { return add(s) },
		func() string { return add(s) },
		func() string { return remove(s) },
		func() string {
			ip := pool[rng.IntN(len(pool))].Addr()
			if _, err := s.RecordTrapHit(ctx, TrapHit{Time: c.Now(), IP: ip, Trap: "t@example.org"}, trapRules); err != nil {
				t.Fatal(err)
			}
			return "trap hit of " + ip.String()
		},
		func() string {
			d := time.Duration(1+rng.IntN(30)) * time.Hour
			c.Add(d)
			return fmt.Sprint("clock +", d)
		},
		func() string { return "by another process: " + add(other) },
		func() string { return "by another process: " + remove(other) },
		func() string {
			if _, err := s.db.Exec(`DELETE FROM listings WHERE removed_at IS NOT NULL OR expires_at <= ?`, millis(c.Now())); err != nil {
				t.Fatal(err)
			}
			return "dead rows deleted"
		},
		func() string {
			from, to := pool[rng.IntN(len(pool))], pool[rng.IntN(len(pool))]
			s.db.Exec(`UPDATE listings SET prefix = ? WHERE prefix = ?`, to.String(), from.String()) // a taken prefix fails; so be it
			return fmt.Sprintf("prefix %s edited to %s", from, to)
		},
		func() string {
			s.SetSelfService(SelfService{Categories: categories[:1+rng.IntN(2)], Quota: rng.IntN(3), Window: 90 * day})
			return "self-service rule set"
		},
	}

	prev := newSnapshot(nil, 0, c.Now(), c.Now)
	for i := range steps {
		what := changes[rng.IntN(len(changes))]()
		if err := s.refresh(ctx); err != nil { // what the watcher does after another process's change
			t.Fatal(err)
		}
		step := fmt.Sprintf("step %d (%s)", i, what)
		got := s.snap.Load()
		ls, err := s.liveListings(ctx, s.db, c.Now())
		if err != nil {
			t.Fatal(err)
		}
		want := newSnapshot(ls, got.gen, c.Now(), c.Now)
		want.rule, want.used = got.rule, got.used
		sameSnapshot(t, step, got, want, probes, c.Now())

		mu.Lock()
		var heard []netip.Prefix
		for p := range reported {
			heard = append(heard, p)
		}
		clear(reported)
		mu.Unlock()
		changed := diff(prev, want)
		slices.SortFunc(heard, netip.Prefix.Compare)
		slices.SortFunc(changed, netip.Prefix.Compare)
		if !slices.Equal(heard, changed) {
			t.Fatalf("%s: OnChange heard %v, the listings of %v changed", step, heard, changed)
		}
		prev = want
	}
}

// sameSnapshot fails t unless got holds what want holds and answers every
// probe as want does.
func sameSnapshot(t *testing.T, step string, got, want *snapshot, probes []netip.Addr, now time.Time) {
	t.Helper()
	if got.len() != want.len() {
		t.Fatalf("%s: %d listings, want %d", step, got.len(), want.len())
	}
	for ew := range want.entries() {
		lw := &ew.l
		eg, ok := got.exact(lw.Prefix)
		if !ok || !sameListing(&eg.l, lw) || eg.l.Source != lw.Source || eg.l.Removals != lw.Removals || eg.l.Level != lw.Level {
			t.Fatalf("%s: %s is %+v, want %+v", step, lw.Prefix, eg, lw)
		}
	}
	for i, lv := range got.v4 {
		if len(lv.m) == 0 || i > 0 && got.v4[i-1].bits <= lv.bits || lv.mask != mask4(lv.bits) {
			t.Fatalf("%s: IPv4 lengths out of order or empty: %d", step, lv.bits)
		}
	}
	for i, lv := range got.v6 {
		if len(lv.m) == 0 || i > 0 && got.v6[i-1].bits <= lv.bits || lv.mask != mask6(lv.bits) {
			t.Fatalf("%s: IPv6 lengths out of order or empty: %d", step, lv.bits)
		}
	}
	for e := range got.entries() {
		if found, _ := got.exact(e.l.Prefix); found != e {
			t.Fatalf("%s: %s is kept under another prefix", step, e.l.Prefix)
		}
	}
	for _, a := range probes {
		eg, okg := got.lookup(a)
		ew, okw := want.lookup(a)
		if okg != okw || okg && (eg.l.Prefix != ew.l.Prefix || got.selfRemovable(eg) != want.selfRemovable(ew)) {
			t.Fatalf("%s: %s finds %v %v, want %v %v", step, a, okg, eg, okw, ew)
		}
	}
	// The next expiry wakes the watcher: never after the true one, and
	// never in the past, which would wake it over and over.
	if !want.next.IsZero() && (got.next.IsZero() || got.next.After(want.next)) || !got.next.IsZero() && !got.next.After(now) {
		t.Fatalf("%s: next expiry %v, want %v", step, got.next, want.next)
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// A change of one listing reads only its row and copies only the map of
// its prefix length: the rest of the snapshot is the last one's.
func TestRebuildSharesWhatDidNotChange(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{PollInterval: -1})
	for _, p := range []string{"192.0.2.7/32", "192.0.2.8/32", "198.51.100.0/24", "2001:db8::/64"} {
		if _, err := s.AddListing(ctx, Listing{Prefix: netip.MustParsePrefix(p), Category: "zombie"}); err != nil {
			t.Fatal(err)
		}
	}
	before := s.snap.Load()
	if _, err := s.AddListing(ctx, Listing{Prefix: netip.MustParsePrefix("192.0.2.9/32"), Category: "zombie"}); err != nil {
		t.Fatal(err)
	}
	after := s.snap.Load()
	if after.len() != 5 {
		t.Fatalf("%d listings, want 5", after.len())
	}
	mapOf := func(s *snapshot, bits int, v6 bool) uintptr {
		if v6 {
			for _, lv := range s.v6 {
				if lv.bits == bits {
					return reflect.ValueOf(lv.m).Pointer()
				}
			}
		} else {
			for _, lv := range s.v4 {
				if lv.bits == bits {
					return reflect.ValueOf(lv.m).Pointer()
				}
			}
		}
		t.Fatalf("no /%d", bits)
		return 0
	}
	if mapOf(after, 32, false) == mapOf(before, 32, false) {
		t.Error("the /32s were changed in place, under the readers of the last snapshot")
	}
	if len(before.v4[0].m) != 2 {
		t.Errorf("the last snapshot has %d /32s, want its 2", len(before.v4[0].m))
	}
	if mapOf(after, 24, false) != mapOf(before, 24, false) || mapOf(after, 64, true) != mapOf(before, 64, true) {
		t.Error("the lengths no change touched were copied")
	}
	eb, _ := before.lookup(netip.MustParseAddr("192.0.2.7"))
	ea, _ := after.lookup(netip.MustParseAddr("192.0.2.7"))
	if ea != eb {
		t.Error("an unchanged listing has a new entry")
	}
}

// A refusal deferred by a listing stays deferred when the listing changes
// within its period (a trap hit extends it) before the writer has put the
// deferral in the database, whichever way the snapshot is rebuilt; a new
// period starts without one.
func TestDeferralOutlivesARebuild(t *testing.T) {
	now := time.Now()
	until := now.Add(time.Hour)
	l := Listing{ID: 7, Prefix: netip.MustParsePrefix("192.0.2.7/32"), Category: "zombie", ListedAt: now.Add(-time.Hour), ExpiresAt: &until}
	old := newSnapshot([]Listing{l}, 1, now, time.Now)
	e, _ := old.lookup(l.Prefix.Addr())
	e.firstRefused.Store(millis(now))

	later := now.Add(2 * time.Hour)
	extended := l
	extended.ExpiresAt = &later
	relisted := extended
	relisted.ListedAt = now
	for _, tc := range []struct {
		name  string
		l     Listing
		first int64
	}{
		{"extended", extended, millis(now)},
		{"relisted", relisted, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			derived, _ := old.derive([]Listing{tc.l}, []netip.Prefix{tc.l.Prefix}, 2, now)
			full := newSnapshot([]Listing{tc.l}, 2, now, time.Now)
			full.carryDeferrals(old)
			for name, s := range map[string]*snapshot{"derived": derived, "full": full} {
				e, ok := s.lookup(tc.l.Prefix.Addr())
				if !ok || e.l.ExpiresAt == nil || !e.l.ExpiresAt.Equal(later) {
					t.Fatalf("%s: %+v, want the listing until %v", name, e, later)
				}
				if got := e.firstRefused.Load(); got != tc.first {
					t.Errorf("%s: first deferral %d, want %d", name, got, tc.first)
				}
			}
		})
	}
}
