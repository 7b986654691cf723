package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/policy"
)

// A read-only store reads what is there, writes nothing and migrates
// nothing: SQLite's mode=ro refuses any write, even root's, so opening and
// reading prove that no write is attempted.
func TestReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "blmilter.db")
	rw, err := Open(path, Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rw.AddListing(ctx, Listing{Prefix: netip.MustParsePrefix("192.0.2.7/32"), Category: "zombie"}); err != nil {
		t.Fatal(err)
	}
	if _, err := rw.CreateRequest(ctx, NewRequest{IP: "192.0.2.7", Email: "a@example.org", Reason: "fixed"}); err != nil {
		t.Fatal(err)
	}

	// Another process holds the write lock the whole time: a reader must
	// not wait for it.
	lock := lockWrites(t, path)

	start := time.Now()
	ro, err := Open(path, Options{ReadOnly: true, PollInterval: -1, BusyTimeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("read-only open: %v", err)
	}
	defer ro.Close()
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("read-only open waited %v for the writer", el)
	}
	if !ro.ReadOnly() {
		t.Error("ReadOnly() = false")
	}
	if ls, err := ro.Listings(ctx); err != nil || len(ls) != 1 || ro.Len() != 1 {
		t.Errorf("Listings: %v, %v", ls, err)
	}
	if rs, err := ro.Requests(ctx, ""); err != nil || len(rs) != 1 {
		t.Errorf("Requests: %v, %v", rs, err)
	}
	if _, err := ro.AddListing(ctx, Listing{Prefix: netip.MustParsePrefix("192.0.2.8/32"), Category: "zombie"}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("AddListing on a read-only store: %v, want ErrReadOnly", err)
	}
	ro.RecordDecision(policy.Decision{Ref: "X"})
	ro.Flush() // returns: there is no writer
	if ro.DroppedDecisions() != 1 {
		t.Errorf("a decision recorded on a read-only store: dropped %d", ro.DroppedDecisions())
	}
	lock.Rollback()
	rw.Close()

	// A missing file is not created.
	missing := filepath.Join(dir, "missing.db")
	if _, err := Open(missing, Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "missing.db") {
		t.Errorf("read-only open of a missing file: %v", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read-only open created the file: %v", err)
	}

	// A file without the schema is not migrated, and left as it was.
	empty := filepath.Join(dir, "empty.db")
	db, err := sql.Open("sqlite", dsn(empty, time.Second, false))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE unrelated (x)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before, _ := os.ReadFile(empty)
	if _, err := Open(empty, Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("read-only open of an old schema: %v", err)
	}
	if after, _ := os.ReadFile(empty); !bytes.Equal(before, after) {
		t.Error("read-only open changed the file")
	}
}

// The decision limits follow SetDecisionLimits (a reload), and 0 is no bound.
func TestSetDecisionLimits(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{PollInterval: -1})
	now := time.Now()
	for i, ref := range []string{"A", "B", "C", "D"} {
		s.RecordDecision(policy.Decision{Ref: ref, Time: now.Add(time.Duration(i-4) * time.Hour), Verdict: policy.Verdict{Action: policy.ActionReject}})
	}
	s.Flush()
	count := func() int {
		var n int
		if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM decisions").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := s.Prune(ctx, now); err != nil || count() != 4 {
		t.Fatalf("without limits: %d decisions, %v", count(), err)
	}
	s.SetDecisionLimits(150*time.Minute, 0) // drops A and B (4h and 3h old)
	if err := s.Prune(ctx, now); err != nil || count() != 2 {
		t.Fatalf("max age 2h30m: %d decisions, %v", count(), err)
	}
	s.SetDecisionLimits(0, 1)
	if err := s.Prune(ctx, now); err != nil || count() != 1 {
		t.Fatalf("max rows 1: %d decisions, %v", count(), err)
	}
	if _, err := s.Decision(ctx, "D"); err != nil {
		t.Errorf("the newest decision was pruned: %v", err)
	}
}
