package store

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Writers that commit while rebuilds run each return only once a rebuild
// that read their commit has ended, rebuilds never overlap, and one
// rebuild serves many writers.
func TestRebuildGroupServesEveryCommit(t *testing.T) {
	var (
		g         rebuildGroup
		commits   atomic.Int64 // the last commit of any writer
		published atomic.Int64 // the last commit the rebuilds have shown
		running   atomic.Int32
		rebuilds  atomic.Int64
	)
	rebuild := func() {
		if running.Add(1) != 1 {
			t.Error("two rebuilds at once")
		}
		defer running.Add(-1)
		read := commits.Load()
		time.Sleep(2 * time.Millisecond) // writers commit while it runs
		published.Store(read)
		rebuilds.Add(1)
	}
	const writers, each = 64, 20
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				c := commits.Add(1)
				g.after(rebuild)
				if p := published.Load(); p < c {
					t.Errorf("a writer returned with commit %d not shown (the snapshot shows up to %d)", c, p)
					return
				}
			}
		})
	}
	wg.Wait()
	n := rebuilds.Load()
	t.Logf("%d writes, %d rebuilds", writers*each, n)
	if n > writers*each/4 {
		t.Errorf("%d rebuilds for %d writes: the writers did not share them", n, writers*each)
	}
}

// A rebuild that panics ends the call that ran it; the writers waiting for
// it and the ones after them carry on.
func TestRebuildGroupSurvivesAPanic(t *testing.T) {
	var g rebuildGroup
	started := make(chan struct{})
	release := make(chan struct{})
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		g.after(func() {
			close(started)
			<-release
			panic("rebuild failed")
		})
	}()
	<-started
	waited := make(chan struct{})
	go func() {
		g.after(func() {}) // waits for the panicking rebuild, then runs its own
		close(waited)
	}()
	close(release)
	if r := <-panicked; r != "rebuild failed" {
		t.Fatalf("the caller that ran the rebuild got %v, want its panic", r)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("a writer waiting for the rebuild that panicked never returned")
	}
	ran := false
	g.after(func() { ran = true })
	if !ran {
		t.Error("after a panic, the next writer's rebuild did not run")
	}
}
