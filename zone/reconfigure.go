package zone

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// Reconfigure changes, while the server serves, what the zone publishes
// besides its listings (TTL, NS, SOA fields, codes, TXT template, public
// URL), who may transfer it and whom it notifies. The name must stay
// (a new zone is a new server), and so do the TSIG key and the tuning
// options New took. New content is built and served at once: a change of
// records moves the serial on, goes into the IXFR journal and is notified
// like a change of listings. Nothing changes when z, transfer or notify
// is invalid.
func (s *Server) Reconfigure(z Zone, transfer []netip.Prefix, notify []string) error {
	z.NS = slices.Clone(z.NS)
	z.Codes = maps.Clone(z.Codes)
	if err := z.normalize(); err != nil {
		return fmt.Errorf("zone: %w", err)
	}
	if z.Name != s.opts.Name {
		return fmt.Errorf("zone: the name %s cannot change to %s while serving", s.opts.Name, z.Name)
	}
	nets := make([]netip.Prefix, len(transfer))
	for i, p := range transfer {
		if !p.IsValid() {
			return fmt.Errorf("zone: transfer: invalid network %v", p)
		}
		nets[i] = p.Masked()
	}
	check := Options{Notify: notify}
	if err := check.normalizeNotify(); err != nil {
		return fmt.Errorf("zone: %w", err)
	}

	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	select {
	case <-s.done:
		return ErrServerClosed
	default:
	}
	s.transferNets.Store(&nets)
	if old := s.notify.Load(); !slices.Equal(old.addrs(), notify) {
		n := newNotifier(s, slices.Clone(notify))
		s.notify.Store(n)
		old.stop()
		old.wait()
		n.start()
	}
	s.opts.Zone = z
	s.tpl = parseTemplate(z.TXT)
	if s.snap.Load() != nil {
		s.rebuild()
	}
	return nil
}

// addrs are the notifier's targets.
func (n *notifier) addrs() []string {
	out := make([]string, len(n.targets))
	for i, t := range n.targets {
		out[i] = t.addr
	}
	return out
}

// SetPublished tells a server that was not fed yet what the zone published
// last, as Options.Serial and Digest tell New: for a daemon whose store,
// which keeps them, opened after the server was made. Once the server has
// been fed it changes nothing.
func (s *Server) SetPublished(serial uint32, digest string) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	if s.snap.Load() == nil {
		s.opts.Serial, s.opts.Digest = serial, digest
	}
}
