package store

import "sync"

// rebuildGroup lets writers share rebuilds of the snapshot, as a database
// shares one fsync among the transactions that wait for it (group commit).
// A writer that has committed needs a rebuild that reads its commit: one
// that starts after the commit. A rebuild already running may have read
// the database before it, so the writer waits for that one to end and for
// the next to run; that next rebuild serves every writer that committed
// before it started. Under a flood of writes the rebuilds run back to back,
// as many as their own time allows, however many writers there are, and
// no writer waits for more than the end of one rebuild and the whole of
// the next.
type rebuildGroup struct {
	mu      sync.Mutex
	running bool
	started uint64        // rebuilds begun
	ended   uint64        // rebuilds finished: every one begun before the running one, if any
	wake    chan struct{} // closed when the running rebuild ends
}

// after returns once a rebuild that started after the call has ended. It
// runs that rebuild itself when none is running, and otherwise waits for
// the running one and then for the next, which the first waiter to find
// none running runs. A panic in rebuild passes to the caller that ran it;
// the rebuild counts as ended, as one that failed does, and the group
// stays usable.
func (g *rebuildGroup) after(rebuild func()) {
	g.mu.Lock()
	want := g.started + 1 // the first rebuild to start from now on
	for g.ended < want {
		if g.running {
			wake := g.wake
			g.mu.Unlock()
			<-wake
			g.mu.Lock()
			continue
		}
		g.run(rebuild)
	}
	g.mu.Unlock()
}

// run runs rebuild as the group's next, without g.mu while it runs; it is
// called and returns with g.mu held.
func (g *rebuildGroup) run(rebuild func()) {
	g.running = true
	g.started++
	if g.wake == nil {
		g.wake = make(chan struct{})
	}
	g.mu.Unlock()
	returned := false
	defer func() {
		g.mu.Lock()
		g.running = false
		g.ended = g.started
		close(g.wake)
		g.wake = make(chan struct{})
		if !returned {
			g.mu.Unlock() // a panic unwinds past after, which would unlock
		}
	}()
	rebuild()
	returned = true
}
