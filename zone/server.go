package zone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// ErrServerClosed is returned by the Serve methods after Shutdown or Close.
var ErrServerClosed = errors.New("zone: server closed")

// Server is the zone's authoritative DNS server. Update feeds it; it
// answers nothing (SERVFAIL) until the first Update.
type Server struct {
	opts Options
	log  *slog.Logger
	tpl  template
	apex apex
	tsig dns.TsigProvider // nil without a key

	snap atomic.Pointer[snapshot]

	updateMu sync.Mutex
	listings []Listing // as last given, for rebuilding at an expiry
	expiry   *time.Timer
	// notify and transferNets change with Reconfigure.
	notify       atomic.Pointer[notifier]
	transferNets atomic.Pointer[[]netip.Prefix]

	stats stats

	mu         sync.Mutex
	closing    bool
	packetConn map[net.PacketConn]struct{}
	tcp        map[*dns.Server]struct{}
	wg         sync.WaitGroup
	done       chan struct{}
}

// New checks the options and makes a server; nothing listens until Serve.
func New(opts Options) (*Server, error) {
	opts.Zone.NS = slices.Clone(opts.Zone.NS)
	opts.Transfer = slices.Clone(opts.Transfer)
	if opts.TSIG != nil {
		k := *opts.TSIG
		opts.TSIG = &k
	}
	if err := opts.normalize(); err != nil {
		return nil, fmt.Errorf("zone: %w", err)
	}
	s := &Server{
		opts:       opts,
		log:        opts.Logger.With("component", "zone", "zone", opts.Name),
		tpl:        parseTemplate(opts.TXT),
		apex:       newApex(opts.Name),
		packetConn: map[net.PacketConn]struct{}{},
		tcp:        map[*dns.Server]struct{}{},
		done:       make(chan struct{}),
	}
	if opts.TSIG != nil {
		s.tsig = tsigKey{opts.TSIG}
	}
	s.notify.Store(newNotifier(s, opts.Notify))
	s.transferNets.Store(&opts.Transfer)
	return s, nil
}

// Serial returns the serial being served; 0 before the first Update.
func (s *Server) Serial() uint32 {
	if sn := s.snap.Load(); sn != nil {
		return sn.serial
	}
	return 0
}

// Update makes listings the zone's content. When the records differ from
// those served, the serial moves on, the difference goes into the IXFR
// journal, OnSerial is told and the secondaries are notified; the new
// content is served when Update returns. Listings that have expired are
// left out, and each is taken out at its expiry without another Update.
// It returns the serial served and whether it changed. Update does not
// keep listings' backing array beyond the call.
func (s *Server) Update(listings []Listing) (serial uint32, changed bool) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	s.listings = slices.Clone(listings)
	return s.rebuild()
}

// rebuild builds the zone from s.listings; updateMu is held.
func (s *Server) rebuild() (uint32, bool) {
	start := time.Now()
	now := s.opts.Now()
	b := s.opts.Zone.compile(s.tpl, s.listings, now)
	s.scheduleExpiry(b.next, now)

	old := s.snap.Load()
	var serial uint32
	switch {
	case old == nil && b.digest == s.opts.Digest && s.opts.Serial != 0:
		// What the last run published: the serial stands.
		serial = s.opts.Serial
	case old == nil:
		serial = nextSerial(s.opts.Serial, now)
	case b.digest == old.b.digest:
		return old.serial, false
	default:
		serial = nextSerial(old.serial, now)
	}
	sn := s.opts.Zone.newSnapshot(&s.apex, b, serial, nil)
	if old != nil {
		del, add := diffTrees(old.b.tree, b.tree, sn)
		sn.journal = appendJournal(old.journal, &change{from: old.serial, to: serial, del: del, add: add}, s.opts.JournalRecords)
	}
	if old != nil || serial != s.opts.Serial {
		if s.opts.OnSerial != nil {
			if err := s.opts.OnSerial(serial, b.digest); err != nil {
				s.log.Error("saving the zone's serial; serving it all the same", "serial", serial, "err", err)
			}
		}
	}
	s.snap.Store(sn)
	names, rrs := b.tree.records()
	s.log.Info("zone updated", "serial", serial, "listings", b.listings, "names", names, "records", rrs,
		"took", time.Since(start).Round(time.Millisecond))
	if old != nil || serial != s.opts.Serial {
		s.notify.Load().kick()
	}
	return serial, true
}

// scheduleExpiry arranges a rebuild when the next listing expires.
func (s *Server) scheduleExpiry(next, now time.Time) {
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
	if next.IsZero() {
		return
	}
	s.expiry = time.AfterFunc(next.Sub(now), func() {
		s.updateMu.Lock()
		defer s.updateMu.Unlock()
		select {
		case <-s.done:
			return
		default:
		}
		s.rebuild()
	})
}

// appendJournal adds c and drops the oldest changes beyond max records. A
// change bigger than max empties the journal: secondaries then get the
// whole zone.
func appendJournal(j []*change, c *change, max int) []*change {
	size := func(c *change) int { return len(c.del) + len(c.add) + 2 }
	if size(c) > max {
		return nil
	}
	out := append(slices.Clone(j), c)
	total := 0
	for _, x := range out {
		total += size(x)
	}
	for total > max {
		total -= size(out[0])
		out = out[1:]
	}
	return out
}

// serialAfter reports whether a is after b in RFC 1982 serial arithmetic.
func serialAfter(a, b uint32) bool {
	d := a - b
	return d != 0 && d < 1<<31
}

// nextSerial is the serial after prev: the clock's Unix time when that is
// after prev, else prev+1. The clock keeps a restart that lost the last
// serial, or a fresh store, ahead of what secondaries hold.
func nextSerial(prev uint32, now time.Time) uint32 {
	if clock := uint32(now.Unix()); serialAfter(clock, prev) {
		return clock
	}
	return prev + 1
}

// ServeUDP answers the queries that come in on pc until Shutdown or Close
// and then returns ErrServerClosed. It reads pc with Options.Workers
// goroutines. It may be called for several sockets.
func (s *Server) ServeUDP(pc net.PacketConn) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		pc.Close()
		return ErrServerClosed
	}
	s.packetConn[pc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	s.notify.Load().start()

	errs := make(chan error, s.opts.Workers)
	var wg sync.WaitGroup
	for range s.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if uc, ok := pc.(*net.UDPConn); ok {
				errs <- s.readUDPBatched(uc)
			} else {
				errs <- s.readUDP(pc)
			}
		}()
	}
	wg.Wait()
	close(errs)
	s.mu.Lock()
	delete(s.packetConn, pc)
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return ErrServerClosed
	}
	for err := range errs {
		if err != nil {
			return fmt.Errorf("zone: udp %s: %w", pc.LocalAddr(), err)
		}
	}
	return nil
}

// ServeTCP answers queries and transfers on l until Shutdown or Close and
// then returns ErrServerClosed. It may be called for several listeners.
func (s *Server) ServeTCP(l net.Listener) error {
	srv := &dns.Server{
		Listener:      newLimitListener(l, s.opts.MaxTCPConns, s.opts.MaxTCPConnsPerIP, &s.stats),
		Net:           "tcp",
		Handler:       s,
		TsigProvider:  s.tsig,
		ReadTimeout:   5 * time.Second,
		WriteTimeout:  10 * time.Second,
		IdleTimeout:   func() time.Duration { return s.opts.TCPIdleTimeout },
		MaxTCPQueries: 1000,
	}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.tcp[srv] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	s.notify.Load().start()
	err := srv.ActivateAndServe()
	s.mu.Lock()
	delete(s.tcp, srv)
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return ErrServerClosed
	}
	if err != nil {
		return fmt.Errorf("zone: tcp %s: %w", l.Addr(), err)
	}
	return nil
}

// Serve serves UDP on pc and TCP on l, the usual pair on one address, and
// returns when both end.
func (s *Server) Serve(pc net.PacketConn, l net.Listener) error {
	errs := make(chan error, 2)
	go func() { errs <- s.ServeUDP(pc) }()
	go func() { errs <- s.ServeTCP(l) }()
	err1, err2 := <-errs, <-errs
	if err1 != nil && !errors.Is(err1, ErrServerClosed) {
		return err1
	}
	if err2 != nil && !errors.Is(err2, ErrServerClosed) {
		return err2
	}
	return ErrServerClosed
}

// Shutdown stops listening, lets the transfers and queries under way end
// (until ctx is done), stops the NOTIFY retries and the expiry timer.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return s.wait(ctx)
	}
	s.closing = true
	close(s.done)
	pcs := make([]net.PacketConn, 0, len(s.packetConn))
	for pc := range s.packetConn {
		pcs = append(pcs, pc)
	}
	tcps := make([]*dns.Server, 0, len(s.tcp))
	for srv := range s.tcp {
		tcps = append(tcps, srv)
	}
	s.mu.Unlock()

	s.updateMu.Lock()
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.updateMu.Unlock()
	s.notify.Load().stop()

	var errs []error
	for _, pc := range pcs {
		// A UDP answer is written as soon as it is made: closing the
		// socket loses at most the packets not read yet.
		if err := pc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, srv := range tcps {
		if err := srv.ShutdownContext(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.wait(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close stops the server at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (s *Server) wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		s.notify.Load().wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
