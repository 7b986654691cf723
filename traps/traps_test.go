package traps

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/internal/testkit/storeseed"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

func newTraps(t *testing.T) (*Traps, *store.Store, *testkit.Buffer) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "t.db"), store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs := &testkit.Buffer{}
	tr := New(Options{
		Addresses:    []string{"spamtrap@example.org", "@trap.example.org"},
		Rules:        store.TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64},
		DelistDomain: "example.org",
		SelfService:  store.SelfService{Categories: []string{"spam-source"}, Quota: 2, Window: 90 * 24 * time.Hour},
		Store:        st,
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	return tr, st, logs
}

func TestClassify(t *testing.T) {
	tr, _, _ := newTraps(t)
	tests := []struct {
		rcpt  string
		kind  Kind
		token string
	}{
		{"spamtrap@example.org", Trap, ""},
		{"<SpamTrap@Example.ORG>", Trap, ""},
		{"<@relay.example:spamtrap@example.org>", Trap, ""},
		{"anyone@trap.example.org", Trap, ""},
		{"anyone@trap.example.org.", Trap, ""},
		{"user@example.org", Ordinary, ""},
		{"spamtrap@example.net", Ordinary, ""},
		{"a@sub.trap.example.org", Ordinary, ""},
		{"delist+abcdefghijklmnop@example.org", Delist, "abcdefghijklmnop"},
		{"<Delist+ABCDEFGHIJKLMNOP@EXAMPLE.org>", Delist, "abcdefghijklmnop"},
		{"delist@example.org", Ordinary, ""},
		{"delist+@example.org", Ordinary, ""},
		{"delist+x@other.example", Ordinary, ""},
		{"", Ordinary, ""},
		{"<>", Ordinary, ""},
		{"no-at", Ordinary, ""},
	}
	for _, tc := range tests {
		k, tok := tr.Classify(tc.rcpt)
		if k != tc.kind || tok != tc.token {
			t.Errorf("Classify(%q) = %v %q, want %v %q", tc.rcpt, k, tok, tc.kind, tc.token)
		}
	}
	var none *Traps
	if k, _ := none.Classify("spamtrap@example.org"); k != Ordinary {
		t.Error("no traps configured, yet a trap")
	}
	if New(Options{Store: nil, Addresses: []string{"a@b.c"}}) != nil {
		t.Error("traps without a store")
	}
}

// Allowed networks, loopback, authenticated clients and clients an allow
// list scores below the threshold are never listed; others are. No log
// line at info names the trap.
func TestHitWhoIsListed(t *testing.T) {
	tr, st, logs := newTraps(t)
	ctx := context.Background()
	allowHit := policy.Hit{List: "dnswl", Category: "allow", Weight: -5, ListWeight: -5}
	spamHit := policy.Hit{List: "zen", Category: "spam-source", Weight: 3, ListWeight: 3}
	tests := []struct {
		name   string
		s      Session
		listed bool
	}{
		{"plain client", Session{IP: netip.MustParseAddr("198.18.0.1"), Verdict: policy.Verdict{Threshold: 3}}, true},
		{"allowed network", Session{IP: netip.MustParseAddr("198.18.0.2"), Verdict: policy.Verdict{Threshold: 3, Skipped: policy.SkipAllow}}, false},
		{"loopback", Session{IP: netip.MustParseAddr("127.0.0.1"), Verdict: policy.Verdict{Threshold: 3}}, false},
		{"authenticated", Session{IP: netip.MustParseAddr("198.18.0.3"), Authenticated: true, Verdict: policy.Verdict{Threshold: 3}}, false},
		{"allow list below threshold", Session{IP: netip.MustParseAddr("198.18.0.4"), Verdict: policy.Verdict{Threshold: 3, Score: -2, Hits: []policy.Hit{allowHit, spamHit}}}, false},
		{"allow list outscored", Session{IP: netip.MustParseAddr("198.18.0.5"), Verdict: policy.Verdict{Threshold: 3, Score: 4, Hits: []policy.Hit{{List: "dnswl", Weight: -1, ListWeight: -1}, {List: "a", Weight: 5, ListWeight: 5}}}}, true},
		{"allow list in dry run", Session{IP: netip.MustParseAddr("198.18.0.6"), Verdict: policy.Verdict{Threshold: 3, Hits: []policy.Hit{{List: "dnswl", Weight: 0, ListWeight: -5, DryRun: true}}}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.s.HELO = "bot.example"
			out := tr.Hit(ctx, tc.s, "<spamtrap@example.org>")
			if out.Listed != tc.listed {
				t.Errorf("listed %v, want %v", out.Listed, tc.listed)
			}
			if _, _, listed := st.Lookup(tc.s.IP); listed != tc.listed {
				t.Errorf("in the store: listed %v, want %v", listed, tc.listed)
			}
		})
	}
	if strings.Contains(strings.ToLower(logs.String()), "spamtrap") {
		t.Errorf("a log line at info names the trap:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "trap hit") || !strings.Contains(logs.String(), "ip=198.18.0.1") {
		t.Errorf("the hit is not logged with the client:\n%s", logs)
	}
}

func TestDelist(t *testing.T) {
	tr, st, _ := newTraps(t)
	ctx := context.Background()
	ip := netip.MustParseAddr("198.18.0.9")
	tr.Hit(ctx, Session{IP: ip, Verdict: policy.Verdict{Threshold: 3}}, "spamtrap@example.org")
	tok, _, err := st.DelistToken(ctx, ip, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := Session{IP: ip, HELO: "mail.example.net", ClientName: "mail.example.net", TLS: "TLSv1.3"}
	if r := tr.Delist(ctx, Session{IP: netip.MustParseAddr("198.18.0.10")}, tok); Accepts(r) {
		t.Errorf("from another address: %+v", r)
	}
	if r := tr.Delist(ctx, s, "wrongwrongwrongw"); Accepts(r) {
		t.Errorf("wrong token: %+v", r)
	}
	_, k := tr.Classify("delist+" + strings.ToUpper(tok) + "@example.org")
	r := tr.Delist(ctx, s, k)
	if !r.Removed || !Accepts(r) {
		t.Fatalf("proof: %+v", r)
	}
	if _, _, listed := st.Lookup(ip); listed {
		t.Error("still listed")
	}
}

// countHits is an Observer that counts the hits of clients it may list.
type countHits struct{ listable atomic.Int64 }

func (c *countHits) TrapHit(_ store.TrapOutcome, listable bool) {
	if listable {
		c.listable.Add(1)
	}
}
func (c *countHits) DelistProof(store.ProofResult) {}

// A botnet hits the traps from many addresses at once while the store
// holds many listings: every hit is recorded and lists its client, every
// RCPT is answered within the traps' timeout, and each client is listed in
// memory when its hit returns, so its next check finds it.
func TestFloodOfHits(t *testing.T) {
	const (
		listings = 10000
		clients  = 64
		each     = 4
		timeout  = 5 * time.Second
	)
	path := filepath.Join(t.TempDir(), "t.db")
	storeseed.Hosts(t, path, listings)
	st, err := store.Open(path, store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Len() != listings {
		t.Fatalf("%d listings in the store, want %d", st.Len(), listings)
	}
	obs := &countHits{}
	tr := New(Options{
		Addresses: []string{"spamtrap@example.org"},
		Rules:     store.TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64},
		Store:     st,
		Observer:  obs,
		Timeout:   timeout,
	})
	ctx := context.Background()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				ip := netip.AddrFrom4([4]byte{198, 18, byte(c), byte(i)})
				start := time.Now()
				out := tr.Hit(ctx, Session{IP: ip, HELO: "bot.example", Verdict: policy.Verdict{Threshold: 3}}, "<spamtrap@example.org>")
				if took := time.Since(start); took > timeout {
					t.Errorf("%s: the hit took %v, longer than the traps' timeout", ip, took)
				}
				if !out.Listed || out.Hits != 1 {
					t.Errorf("%s: %+v, want a recorded hit that lists it", ip, out)
				}
				if _, ok := st.ListingFor(ip); !ok {
					t.Errorf("%s: not listed in memory when its hit returned", ip)
				}
			}
		})
	}
	wg.Wait()
	if n := obs.listable.Load(); n != clients*each {
		t.Errorf("%d hits observed, want %d", n, clients*each)
	}
	for c := range clients {
		for i := range each {
			ip := netip.AddrFrom4([4]byte{198, 18, byte(c), byte(i)})
			if hits, err := st.TrapHits(ctx, ip, 10); err != nil || len(hits) != 1 {
				t.Fatalf("%s: %d hits stored (%v), want 1", ip, len(hits), err)
			}
		}
	}
	if st.Len() != listings+clients*each {
		t.Errorf("%d listings, want %d", st.Len(), listings+clients*each)
	}
}
