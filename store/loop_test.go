package store

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var selfRule = SelfService{Categories: []string{"spam-source", "zombie"}, Quota: 2, Window: 90 * day}

// Mail from the listed address to its one-time delist address removes the
// listing; a wrong token, another address's token or a used one does not.
func TestProveControl(t *testing.T) {
	c := newClock()
	s := openTest(t, Options{Now: c.Now, PollInterval: -1})
	ctx := context.Background()
	ip := netip.MustParseAddr("192.0.2.7")
	other := netip.MustParseAddr("192.0.2.8")
	hit(t, s, c, "192.0.2.7", trapRules)
	hit(t, s, c, "192.0.2.8", trapRules)

	tok, exp, err := s.DelistToken(ctx, ip, day)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != DelistTokenLen || strings.ToLower(tok) != tok || !exp.Equal(c.Now().Add(day)) {
		t.Fatalf("token %q until %v", tok, exp)
	}
	// The page shows one address all day.
	if again, _, _ := s.DelistToken(ctx, ip, day); again != tok {
		t.Errorf("a second view got another token: %q, %q", tok, again)
	}
	otherTok, _, _ := s.DelistToken(ctx, other, day)
	ev := ControlEvidence{HELO: "mail.example.net", PTR: "mail.example.net", TLS: "TLSv1.3 TLS_AES_256_GCM_SHA384", QueueID: "4XYZ"}

	for _, tc := range []struct {
		name, token string
		from        netip.Addr
		why         string
	}{
		{"wrong token", "aaaaaaaaaaaaaaaa", ip, ProofInvalidToken},
		{"short token", "abc", ip, ProofInvalidToken},
		{"another address's token", otherTok, ip, ProofOtherAddress},
		{"its token from another address", tok, other, ProofOtherAddress},
	} {
		res, err := s.ProveControl(ctx, tc.token, tc.from, ev, selfRule)
		if err != nil || res.Removed || res.Why != tc.why {
			t.Errorf("%s: %+v, %v; want %q", tc.name, res, err, tc.why)
		}
	}
	if !listedAt(s, "192.0.2.7") {
		t.Fatal("a failed proof removed the listing")
	}
	res, err := s.ProveControl(ctx, strings.ToUpper(tok), ip, ev, selfRule) // local parts may come in upper case
	if err != nil || !res.Removed || res.Prefix.String() != "192.0.2.7/32" {
		t.Fatalf("proof: %+v, %v", res, err)
	}
	if listedAt(s, "192.0.2.7") {
		t.Fatal("still listed after the proof")
	}
	h, _ := s.History(ctx, ip, c.Now())
	if len(h.Events) == 0 || h.Events[0].By != ByProof || !strings.Contains(h.Events[0].Detail, "HELO mail.example.net") || !strings.Contains(h.Events[0].Detail, "TLSv1.3") {
		t.Errorf("the removal's evidence: %+v", h.Events)
	}
	if n, _ := s.SelfServiceRemovals(ctx, ip, c.Now().Add(-time.Hour)); n != 1 {
		t.Errorf("the proof used %d of the quota, want 1", n)
	}
	// Once only.
	hit(t, s, c, "192.0.2.7", trapRules)
	if res, _ := s.ProveControl(ctx, tok, ip, ev, selfRule); res.Removed || res.Why != ProofInvalidToken {
		t.Errorf("second use: %+v", res)
	}
	// A token expires.
	tok2, _, _ := s.DelistToken(ctx, ip, day)
	c.Add(day)
	if res, _ := s.ProveControl(ctx, tok2, ip, ev, selfRule); res.Removed || res.Why != ProofInvalidToken {
		t.Errorf("expired token: %+v", res)
	}
	// Beyond the quota, or for a listing it does not cover, a person decides.
	tok3, _, _ := s.DelistToken(ctx, ip, day)
	if res, _ := s.ProveControl(ctx, tok3, ip, ev, SelfService{Categories: []string{"zombie"}, Quota: 2, Window: day}); res.Removed || res.Why != ProofNeedsOperator {
		t.Errorf("category not self-service: %+v", res)
	}
	if res, _ := s.ProveControl(ctx, tok3, ip, ev, SelfService{Categories: selfRule.Categories, Quota: 1, Window: 90 * day}); res.Removed || res.Why != ProofNeedsOperator {
		t.Errorf("quota used: %+v", res)
	}
}

// DeferState says which listings their owners may remove, from memory;
// NoteDeferral starts the window and counts, and the history tells it.
func TestDeferState(t *testing.T) {
	c := newClock()
	s := openTest(t, Options{Now: c.Now, PollInterval: -1})
	ctx := context.Background()
	add(t, s, "192.0.2.7", "spam-source")
	add(t, s, "192.0.2.8", "local")
	add(t, s, "198.51.100.0/24", "spam-source")
	add(t, s, "198.51.100.9", "spam-source")
	add(t, s, "2001:db8:1:2::/64", "spam-source")
	add(t, s, "2001:db9::/32", "spam-source")

	if ok, _ := s.DeferState(netip.MustParseAddr("192.0.2.7")); ok {
		t.Error("self-removable before the rule is set")
	}
	s.SetSelfService(selfRule)
	for ip, want := range map[string]bool{
		"192.0.2.7":       true,  // one address, a self-service category
		"192.0.2.8":       false, // an operator's category
		"198.51.100.1":    false, // a network
		"198.51.100.9":    false, // inside a listed network
		"2001:db8:1:2::5": true,  // an IPv6 /64, as the traps list
		"2001:db9:5::1":   false,
		"203.0.113.1":     false, // not listed
	} {
		if ok, _ := s.DeferState(netip.MustParseAddr(ip)); ok != want {
			t.Errorf("%s: self-removable %v, want %v", ip, ok, want)
		}
	}
	ip := netip.MustParseAddr("192.0.2.7")
	first := c.Now()
	s.NoteDeferral(ip, first)
	c.Add(time.Hour)
	s.NoteDeferral(ip, c.Now())
	if _, f := s.DeferState(ip); !f.Equal(first) {
		t.Errorf("first deferral %v, want %v", f, first)
	}
	s.Flush()
	// A rebuild keeps it (from the database now).
	s.SetSelfService(selfRule)
	if _, f := s.DeferState(ip); !f.Equal(first) {
		t.Errorf("after a rebuild: first deferral %v, want %v", f, first)
	}
	if err := s.RemoveListing(ctx, netip.PrefixFrom(ip, 32), "self-service"); err != nil {
		t.Fatal(err)
	}
	h, _ := s.History(ctx, ip, c.Now())
	if h.Deferral == nil || h.Deferral.Count != 2 || !h.Deferral.Since.Equal(first) || h.Deferral.Removed == nil {
		t.Errorf("deferral in the history: %+v", h.Deferral)
	}
	// A new listing period starts its own window.
	add(t, s, "192.0.2.7", "spam-source")
	if ok, f := s.DeferState(ip); !ok || !f.IsZero() {
		t.Errorf("a new period: %v, %v", ok, f)
	}
	// Quota used: no longer self-removable.
	s.SetSelfService(SelfService{Categories: selfRule.Categories, Quota: 0, Window: day})
	if ok, _ := s.DeferState(ip); ok {
		t.Error("self-removable without quota")
	}
}

// The status link of a request is signed: it finds its request, and any
// other text finds none. Decisions leave notices until they are marked.
func TestStatusTokenAndNotices(t *testing.T) {
	c := newClock()
	s := openTest(t, Options{Now: c.Now, PollInterval: -1})
	ctx := context.Background()
	add(t, s, "192.0.2.7", "local")
	r, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.7", Email: "a@example.org", ToOperator: true})
	if err != nil {
		t.Fatal(err)
	}
	tok := s.StatusToken(r.ID)
	got, err := s.RequestByStatusToken(ctx, tok)
	if err != nil || got.ID != r.ID {
		t.Fatalf("by status token: %+v, %v", got, err)
	}
	for _, bad := range []string{"", "1", fmt.Sprint(r.ID) + "-x", "0" + tok, tok + "a", strings.Replace(tok, tok[:1], "9", 1)} {
		if _, err := s.RequestByStatusToken(ctx, bad); err == nil {
			t.Errorf("%q found a request", bad)
		}
	}
	ns, _ := s.PendingNotices(ctx, c.Now().Add(-day), true)
	if len(ns) != 1 || ns[0].Kind != NoticeWaiting {
		t.Fatalf("notices %+v, want the operator's", ns)
	}
	if ns, _ := s.PendingNotices(ctx, c.Now().Add(-day), false); len(ns) != 0 {
		t.Errorf("notices for the operator without one: %+v", ns)
	}
	if err := s.MarkNotified(ctx, r.ID, NoticeWaiting, c.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.DenyRequest(ctx, r.ID, "cli:op"); err != nil {
		t.Fatal(err)
	}
	ns, _ = s.PendingNotices(ctx, c.Now().Add(-day), true)
	if len(ns) != 1 || ns[0].Kind != NoticeOutcome || ns[0].Request.Status != StatusDenied {
		t.Fatalf("notices %+v, want the requester's outcome", ns)
	}
	s.MarkNotified(ctx, r.ID, NoticeOutcome, c.Now())
	if ns, _ := s.PendingNotices(ctx, c.Now().Add(-day), true); len(ns) != 0 {
		t.Errorf("notices after both were sent: %+v", ns)
	}
	// The key survives a reopen: old links still work.
	path := s.Path()
	s.Close()
	s2, err := Open(path, Options{PollInterval: -1, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got, err := s2.RequestByStatusToken(ctx, tok); err != nil || got.ID != r.ID {
		t.Errorf("after a reopen: %+v, %v", got, err)
	}
}
