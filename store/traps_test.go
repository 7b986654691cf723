package store

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand: days pass in an instant.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

const day = 24 * time.Hour

var trapRules = TrapRules{Hits: 1, Window: day, Expires: 7 * day, MaxExpires: 90 * day, Category: "spam-source", IPv6Prefix: 64}

func hit(t *testing.T, s *Store, c *fakeClock, ip string, r TrapRules) TrapOutcome {
	t.Helper()
	out, err := s.RecordTrapHit(context.Background(), TrapHit{
		Time: c.Now(), IP: netip.MustParseAddr(ip), HELO: "bot.example", MailFrom: "x@forged.example",
		Trap: "spamtrap@example.org", QueueID: "4ABC", RDNS: "dsl-1.example.net",
	}, r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func listedAt(s *Store, ip string) bool {
	_, _, listed := s.Lookup(netip.MustParseAddr(ip))
	return listed
}

// A listing expires 7 days after its last hit; every hit extends it; each
// relisting after a period ended (removed or expired) doubles the expiry,
// up to max_expires.
func TestTrapExpiryAndEscalation(t *testing.T) {
	c := newClock()
	s := openTest(t, Options{Now: c.Now, PollInterval: -1})
	ctx := context.Background()

	first := hit(t, s, c, "192.0.2.7", trapRules)
	if !first.Listed || !first.Started || first.Level != 0 || !first.Expires.Equal(c.Now().Add(7*day)) {
		t.Fatalf("first hit: %+v", first)
	}
	if !listedAt(s, "192.0.2.7") {
		t.Fatal("not listed after the first hit")
	}
	l, _ := s.ListingFor(netip.MustParseAddr("192.0.2.7"))
	if l.Category != "spam-source" || l.Source != ByTraps || l.Reason != TrapReason {
		t.Errorf("listing %+v", l)
	}

	// A hit two days later extends the listing to 7 days after it.
	c.Add(2 * day)
	second := hit(t, s, c, "192.0.2.7", trapRules)
	if second.Started || !second.Expires.Equal(c.Now().Add(7*day)) {
		t.Errorf("second hit: %+v", second)
	}
	c.Add(7*day - time.Second)
	if !listedAt(s, "192.0.2.7") {
		t.Fatal("expired before 7 days after the last hit")
	}
	c.Add(time.Second)
	if listedAt(s, "192.0.2.7") {
		t.Fatal("still listed 7 days after the last hit")
	}

	// It comes back for twice as long, and again twice as long after a
	// removal, until max_expires caps it.
	want := []time.Duration{14 * day, 28 * day, 56 * day, 90 * day, 90 * day}
	for i, d := range want {
		c.Add(91 * day) // past any listing: each is a new period
		out := hit(t, s, c, "192.0.2.7", trapRules)
		if !out.Started || out.Level != i+1 || !out.Expires.Equal(c.Now().Add(d)) {
			t.Fatalf("relisting %d: %+v, want level %d for %v", i+1, out, i+1, d)
		}
		if i%2 == 0 {
			if err := s.RemoveListing(ctx, out.Prefix, "cli:op"); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// With hits = 2, one hit is evidence only; two within the window list.
func TestTrapHitsWithinWindow(t *testing.T) {
	c := newClock()
	s := openTest(t, Options{Now: c.Now, PollInterval: -1})
	r := trapRules
	r.Hits = 2
	if out := hit(t, s, c, "192.0.2.8", r); out.Listed || out.Hits != 1 {
		t.Fatalf("one hit: %+v", out)
	}
	c.Add(day + time.Second)
	if out := hit(t, s, c, "192.0.2.8", r); out.Listed || out.Hits != 1 {
		t.Fatalf("a hit after the window: %+v", out)
	}
	c.Add(23 * time.Hour)
	if out := hit(t, s, c, "192.0.2.8", r); !out.Listed || out.Hits != 2 {
		t.Fatalf("two hits within the window: %+v", out)
	}
}

// IPv6 clients are listed as their /64; hits of its hosts count together.
func TestTrapIPv6Prefix(t *testing.T) {
	c := newClock()
	s := openTest(t, Options{Now: c.Now, PollInterval: -1})
	r := trapRules
	r.Hits = 2
	hit(t, s, c, "2001:db8:1:2::1", r)
	out := hit(t, s, c, "2001:db8:1:2::ffff", r)
	if !out.Listed || out.Prefix.String() != "2001:db8:1:2::/64" {
		t.Fatalf("%+v", out)
	}
	if !listedAt(s, "2001:db8:1:2:abcd::1") || listedAt(s, "2001:db8:1:3::1") {
		t.Error("the /64 is not what is listed")
	}
}

// An operator's listing of the prefix stands; the hit is evidence.
func TestTrapLeavesOperatorListing(t *testing.T) {
	c := newClock()
	s := openTest(t, Options{Now: c.Now, PollInterval: -1})
	ctx := context.Background()
	if _, err := s.AddListing(ctx, Listing{Prefix: mustPrefix(t, "192.0.2.9"), Category: "zombie", Source: "cli:op"}); err != nil {
		t.Fatal(err)
	}
	out := hit(t, s, c, "192.0.2.9", trapRules)
	if out.Listed || !out.Operator {
		t.Errorf("%+v", out)
	}
	l, _ := s.ListingFor(netip.MustParseAddr("192.0.2.9"))
	if l.Category != "zombie" || l.ExpiresAt != nil || l.Source != "cli:op" {
		t.Errorf("the operator's listing changed: %+v", l)
	}
	hs, err := s.TrapHits(ctx, netip.MustParseAddr("192.0.2.9"), 10)
	if err != nil || len(hs) != 1 {
		t.Fatalf("hits %+v, %v", hs, err)
	}
	h := hs[0]
	if h.HELO != "bot.example" || h.MailFrom != "x@forged.example" || h.Trap != "spamtrap@example.org" || h.QueueID != "4ABC" ||
		h.RDNS != "dsl-1.example.net" || !h.Time.Equal(c.Now()) {
		t.Errorf("stored evidence %+v", h)
	}
}
