package policy_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

// Delist-and-deliver: a client refused only by a listing of the site's own
// list that its owner may remove gets 451 for defer_first after its first
// refusal, then the usual 550; any other refusal is a 550 from the start.
func TestDeferFirst(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set(qname("198.18.0.3", "zen.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	st, err := store.Open(filepath.Join(t.TempDir(), "d.db"), store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	for ip, cat := range map[string]string{"198.18.0.1": "spam-source", "198.18.0.2": "local", "198.18.0.3": "spam-source", "198.18.0.4": "spam-source"} {
		if _, err := st.AddListing(ctx, store.Listing{Prefix: netip.MustParsePrefix(ip + "/32"), Category: cat}); err != nil {
			t.Fatal(err)
		}
	}
	st.SetSelfService(store.SelfService{Categories: []string{"spam-source"}, Quota: 2, Window: 90 * 24 * time.Hour})
	// 198.18.0.4 was first deferred five hours ago: its window is over.
	st.NoteDeferral(netip.MustParseAddr("198.18.0.4"), time.Now().Add(-5*time.Hour))

	e := newEngine(t, srv, `
[web]
public_url = "https://lookup.example.org"
[policy]
threshold = 3
defer_first = "4h"
[[list]]
name = "ZEN"
zone = "zen.test"
weight = 3
health = false
[[list]]
name = "site"
store = true
weight = 5
`, policy.Deps{StoreList: st, Recorder: st})

	tests := []struct {
		ip       string
		action   policy.Action
		deferred bool
	}{
		{"198.18.0.1", policy.ActionTempfail, true}, // self-removable, first refusal
		{"198.18.0.2", policy.ActionReject, false},  // a category an operator decides
		{"198.18.0.3", policy.ActionReject, false},  // refused by another list as well
		{"198.18.0.4", policy.ActionReject, false},  // its window is over
	}
	for _, tc := range tests {
		v := e.Check(ctx, netip.MustParseAddr(tc.ip))
		if v.Action != tc.action || v.Deferred != tc.deferred {
			t.Errorf("%s: %s deferred=%v, want %s deferred=%v", tc.ip, v.Action, v.Deferred, tc.action, tc.deferred)
		}
		if !v.Deferred {
			continue
		}
		r := e.Reply(&v)
		if r.Code != 451 || r.Enhanced != "4.7.1" || !strings.Contains(r.Text, "https://lookup.example.org/ip/"+tc.ip) {
			t.Errorf("%s: reply %+v", tc.ip, r)
		}
	}
	// The first deferral started the window; the page's inspection does
	// not count as one.
	e.Inspect(ctx, netip.MustParseAddr("198.18.0.2"))
	if _, first := st.DeferState(netip.MustParseAddr("198.18.0.1")); first.IsZero() || time.Since(first) > time.Minute {
		t.Errorf("first deferral of 198.18.0.1: %v", first)
	}
	// Without defer_first the same client is refused at once.
	e2 := newEngine(t, srv, `
[policy]
threshold = 3
[[list]]
name = "site"
store = true
weight = 5
`, policy.Deps{StoreList: st})
	if v := e2.Check(ctx, netip.MustParseAddr("198.18.0.1")); v.Action != policy.ActionReject || v.Deferred {
		t.Errorf("without defer_first: %s deferred=%v", v.Action, v.Deferred)
	}
}
