package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/blmilter/blmilter/policy"
)

func sampleDecision(ref string, at time.Time) policy.Decision {
	return policy.Decision{
		Ref:  ref,
		Time: at,
		Verdict: policy.Verdict{
			IP:        netip.MustParseAddr("192.0.2.7"),
			Action:    policy.ActionReject,
			Score:     8,
			Threshold: 3,
			Hits: []policy.Hit{
				{List: "Spamhaus ZEN", Category: "zombie", Code: netip.MustParseAddr("127.0.0.4"), Reason: "https://check.spamhaus.org/", Weight: 3},
				{List: "local", Category: "spam-source", Reason: "trap hits", Weight: 5},
				{List: "Test list", Category: "dynamic", Code: netip.MustParseAddr("127.0.0.10"), DryRun: true},
			},
			Errors: []policy.ListError{{List: "Slow list", Err: "timeout", OnError: "ignore"}},
		},
		Reply: policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "client [192.0.2.7] listed by Spamhaus ZEN (zombie); see https://lookup.example.org/ip/192.0.2.7", Ref: ref},
	}
}

func TestDecisionRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	at := time.Now().Add(-time.Hour).Truncate(time.Millisecond) // times are kept to the millisecond
	d := sampleDecision("r1", at)
	s.RecordDecision(d)
	s.RecordDecision(policy.Decision{Time: at}) // no ref: nothing to find it by
	s.Flush()

	got, err := s.Decision(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(at) {
		t.Errorf("time %v, want %v", got.Time, at)
	}
	back := got.Decision()
	back.Time = d.Time // compared above; the monotonic reading does not survive storage
	if !reflect.DeepEqual(back, d) {
		t.Errorf("recorded\n%+v\nread back\n%+v", d, back)
	}
	if _, err := s.Decision(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown ref: %v, want ErrNotFound", err)
	}
	var n int
	s.db.QueryRow(`SELECT count(*) FROM decisions`).Scan(&n)
	if n != 1 {
		t.Errorf("%d decisions stored, want 1", n)
	}
}

// The lookup page shows what the filter saw even after the listing behind
// it has expired.
func TestDecisionOutlivesListing(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	exp := time.Now().Add(100 * time.Millisecond)
	if _, err := s.AddListing(ctx, Listing{Prefix: mustPrefix(t, "192.0.2.7"), Category: "spam-source", ExpiresAt: &exp}); err != nil {
		t.Fatal(err)
	}
	s.RecordDecision(sampleDecision("r-exp", time.Now()))
	s.Flush()
	time.Sleep(time.Until(exp) + 10*time.Millisecond)
	if _, _, listed := s.Lookup(mustAddr(t, "192.0.2.7")); listed {
		t.Fatal("listing did not expire")
	}
	got, err := s.Decision(ctx, "r-exp")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Hits) != 3 || got.Hits[1].List != "local" || got.Reply.Code != 550 {
		t.Errorf("decision after expiry: %+v", got)
	}
}

func countDecisions(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.db.QueryRow(`SELECT count(*) FROM decisions`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPruneDecisions(t *testing.T) {
	ctx := context.Background()
	t.Run("by age", func(t *testing.T) {
		s := openTest(t, Options{DecisionMaxAge: 24 * time.Hour})
		now := time.Now()
		s.RecordDecision(sampleDecision("old", now.Add(-25*time.Hour)))
		s.RecordDecision(sampleDecision("new", now.Add(-23*time.Hour)))
		s.Flush()
		if err := s.Prune(ctx, now); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Decision(ctx, "old"); !errors.Is(err, ErrNotFound) {
			t.Errorf("old decision: %v, want pruned", err)
		}
		if _, err := s.Decision(ctx, "new"); err != nil {
			t.Errorf("new decision: %v", err)
		}
	})
	t.Run("by count, on insert", func(t *testing.T) {
		s := openTest(t, Options{DecisionMaxRows: 10})
		start := time.Now()
		for i := range 25 {
			s.RecordDecision(sampleDecision(fmt.Sprintf("r%d", i), start.Add(time.Duration(i)*time.Second)))
		}
		s.Flush()
		if n := countDecisions(t, s); n != 10 {
			t.Errorf("%d decisions kept, want 10", n)
		}
		for _, ref := range []string{"r15", "r24"} {
			if _, err := s.Decision(ctx, ref); err != nil {
				t.Errorf("newest decision %s: %v", ref, err)
			}
		}
		if _, err := s.Decision(ctx, "r14"); !errors.Is(err, ErrNotFound) {
			t.Errorf("r14: %v, want pruned", err)
		}
	})
	t.Run("periodically", func(t *testing.T) {
		s := openTest(t, Options{DecisionMaxAge: time.Hour, PruneInterval: 20 * time.Millisecond})
		s.RecordDecision(sampleDecision("old", time.Now().Add(-2*time.Hour)))
		s.Flush()
		deadline := time.Now().Add(10 * time.Second)
		for countDecisions(t, s) != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the pruner never ran")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// With the writer stuck behind another process's write lock, RecordDecision
// must still return at once, dropping and counting what does not fit.
func TestRecordDecisionNeverBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busy.db")
	s, err := Open(path, Options{DecisionBuffer: 8, BusyTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	lock := lockWrites(t, path)
	if _, err := lock.Exec(`INSERT INTO meta (key, value) VALUES ('lock', 1)`); err != nil {
		t.Fatal(err)
	}

	const n = 2000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			s.RecordDecision(sampleDecision(fmt.Sprintf("r%d", i), time.Now()))
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		lock.Rollback()
		t.Fatal("RecordDecision blocked while the database was locked")
	}
	dropped := s.DroppedDecisions()
	// At most the queue plus one batch in the writer's hands get through.
	if dropped < n-8-maxBatch {
		t.Errorf("dropped %d of %d with a queue of 8", dropped, n)
	}
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	s.Flush()
	if got := countDecisions(t, s); got != n-int(dropped) {
		t.Errorf("%d decisions stored, want %d recorded minus %d dropped", got, n, dropped)
	}
}

func TestCloseWritesQueuedDecisions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "close.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		s.RecordDecision(sampleDecision(fmt.Sprintf("r%d", i), time.Now()))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.RecordDecision(sampleDecision("late", time.Now())) // after Close: dropped, no panic
	if s.DroppedDecisions() != 1 {
		t.Errorf("dropped %d, want the one recorded after Close", s.DroppedDecisions())
	}
	s.Flush() // after Close: returns

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := countDecisions(t, s); n != 100 {
		t.Errorf("%d decisions after Close and reopen, want 100", n)
	}
}
