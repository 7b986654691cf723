package main

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/store"
)

// list show IP prints the address's history for the operator: the trap
// hits in detail (the trap included, as nowhere else), the listing events
// with who made them, and the days.
func TestListShowHistory(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "h.db")
	s, err := store.Open(db, store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	rules := store.TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64}
	if _, err := s.RecordTrapHit(ctx, store.TrapHit{IP: netip.MustParseAddr("198.18.5.1"), HELO: "bot.example", MailFrom: "x@forged.example",
		Trap: "hidden@trap.example.org", QueueID: "4QID", RDNS: "dsl.example.net"}, rules); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveListing(ctx, netip.MustParsePrefix("198.18.5.1/32"), "cli:bob"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	code, out, errText := storeRun(t, listCmd, "show", "198.18.5.1", "-db", db)
	if code != 1 || !strings.Contains(errText, "not listed") {
		t.Errorf("exit %d, stderr %q; want 1, not listed", code, errText)
	}
	for _, want := range []string{"HISTORY OF 198.18.5.1", "first seen", "removed", "cli:bob", "listed", "traps",
		"hidden@trap.example.org", "x@forged.example", "4QID", "dsl.example.net", "bot.example"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, out, _ := storeRun(t, listCmd, "show", "198.18.5.2", "-db", db); !strings.Contains(out, "no record") {
		t.Errorf("an address never seen:\n%s", out)
	}
}

// requests list shows what waits for the operator first.
func TestRequestsListWaitingFirst(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "w.db")
	s, err := store.Open(db, store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []store.NewRequest{
		{IP: "192.0.2.1", Email: "pending@example.org"},
		{IP: "192.0.2.2", Email: "waiting@example.org", ToOperator: true},
		{IP: "192.0.2.3", Email: "pending2@example.org"},
	} {
		if _, err := s.CreateRequest(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	_, out, _ := storeRun(t, requestsCmd, "list", "-db", db)
	w, p := strings.Index(out, "waiting@"), strings.Index(out, "pending@")
	if w < 0 || p < 0 || w > p {
		t.Errorf("waiting requests are not first:\n%s", out)
	}
}
