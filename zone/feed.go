package zone

import (
	"context"
	"time"
)

// Feeder keeps a Server's listings in step with a source that says when
// they change. With the store, the daemon wires it as:
//
//	f := zone.NewFeeder(srv, func() []zone.Listing { return fromStore(st.LiveListings()) })
//	st.OnChange(func(netip.Prefix) { f.Changed() })
//	f.Sync()       // the zone is loaded before it is served
//	go f.Run(ctx)
//
// The store calls OnChange for changes made through it at once, and for
// those made by other processes (the command line) and for expiries
// within its PollInterval. A burst of changes costs one rebuild: Changed
// only marks the listings stale.
type Feeder struct {
	srv  *Server
	load func() []Listing
	kick chan struct{}
}

// NewFeeder makes a feeder that gives srv what load returns.
func NewFeeder(srv *Server, load func() []Listing) *Feeder {
	return &Feeder{srv: srv, load: load, kick: make(chan struct{}, 1)}
}

// Changed marks the listings stale. It never blocks, so it is safe in the
// store's OnChange callback.
func (f *Feeder) Changed() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Sync gives the server the listings now.
func (f *Feeder) Sync() {
	start := time.Now()
	ls := f.load()
	serial, changed := f.srv.Update(ls)
	if changed {
		f.srv.log.Debug("zone fed", "listings", len(ls), "serial", serial, "took", time.Since(start).Round(time.Millisecond))
	}
}

// Run updates the server after each change until ctx ends.
func (f *Feeder) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
			f.Sync()
		}
	}
}
