package milter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gomilter "github.com/emersion/go-milter"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("milter: server closed")

const (
	defaultReadTimeout  = 2 * time.Minute
	defaultWriteTimeout = 10 * time.Second
)

// Negotiated with the MTA. Only AddHeader is needed (for action = "tag");
// SetSymList asks for the few macros blmilter reads.
//
// The protocol flags skip the stages blmilter has no use for. No "no reply"
// flag (SMFIP_NR_*) is ever set: Postfix leaves Nagle's algorithm on for its
// milter sockets, and an MTA that sends a command without waiting for a
// reply and then another small one stalls on the peer's delayed ACK (about
// 40 ms per session on Linux). Replying to every command costs a round trip
// on loopback and avoids that.
//
// NoUnknown and NoData are not optional: go-milter closes the session on an
// SMFIC_UNKNOWN command.
const (
	milterActions  = gomilter.OptAddHeader | gomilter.OptSetSymList
	milterProtocol = gomilter.OptNoHelo | gomilter.OptNoHeaders | gomilter.OptNoEOH |
		gomilter.OptNoBody | gomilter.OptNoUnknown | gomilter.OptNoData
)

// noReplyFlags are the protocol flags blmilter must never negotiate.
const noReplyFlags = gomilter.OptNoHeaderReply | gomilter.OptNoConnReply | gomilter.OptNoHeloReply |
	gomilter.OptNoMailReply | gomilter.OptNoRcptReply | gomilter.OptNoDataReply |
	gomilter.OptNoUnknownReply | gomilter.OptNoEOHReply | gomilter.OptNoBodyReply

// symList is the macros blmilter reads, per stage. An MTA that honours it
// (Postfix, Sendmail 8.14+) sends only these; the MTA defaults carry them too.
var symList = map[gomilter.Stage][]string{
	gomilter.StageConnect:  {"{client_addr}", "_"},
	gomilter.StageMailFrom: {"i", "{auth_authen}"},
	gomilter.StageRcptTo:   {"i"},
	gomilter.StageEOM:      {"i"},
}

// Server is the milter server: one go-milter session per MTA connection,
// with read and write deadlines and a graceful shutdown.
type Server struct {
	logger       *slog.Logger
	readTimeout  time.Duration
	writeTimeout time.Duration
	newMilter    func() gomilter.Milter
	decisions    *decisionLog

	closing atomic.Bool

	// now is a coarse clock (Unix nanoseconds) kept by a ticker while the
	// server listens, so that deadlines are re-armed without reading the
	// system clock on every packet (see conn).
	now       atomic.Int64
	clockOnce sync.Once
	clockStop chan struct{}

	mu        sync.Mutex
	listeners map[*listener]struct{}
	conns     map[*conn]struct{}
	drained   chan struct{} // closed once closing and no connection is left
	isDrained bool
}

func newServer(logger *slog.Logger, readTimeout, writeTimeout time.Duration, newMilter func() gomilter.Milter) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if readTimeout <= 0 {
		readTimeout = defaultReadTimeout
	}
	if writeTimeout <= 0 {
		writeTimeout = defaultWriteTimeout
	}
	return &Server{
		logger:       logger,
		readTimeout:  readTimeout,
		writeTimeout: writeTimeout,
		newMilter:    newMilter,
		decisions:    newDecisionLog(logger),
		listeners:    map[*listener]struct{}{},
		conns:        map[*conn]struct{}{},
		drained:      make(chan struct{}),
		clockStop:    make(chan struct{}),
	}
}

// startClock starts the coarse clock; stopListening stops it. Connections
// still open then keep their last deadlines, which bound them all the same.
func (s *Server) startClock() {
	s.clockOnce.Do(func() {
		tick := min(s.readTimeout, s.writeTimeout) / 4
		tick = min(max(tick, time.Millisecond), 250*time.Millisecond)
		s.now.Store(time.Now().UnixNano())
		go func() {
			t := time.NewTicker(tick)
			defer t.Stop()
			for {
				select {
				case now := <-t.C:
					s.now.Store(now.UnixNano())
				case <-s.clockStop:
					return
				}
			}
		}()
	})
}

// Serve accepts MTA connections on ln until Shutdown or Close, and then
// returns ErrServerClosed. Serve may be called for several listeners.
func (s *Server) Serve(ln net.Listener) error {
	l := &listener{Listener: ln, srv: s}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	s.startClock()
	s.decisions.start()

	gm := &gomilter.Server{
		NewMilter: s.newMilter,
		Actions:   milterActions,
		Protocol:  milterProtocol,
		SymList:   symList,
	}
	err := gm.Serve(l)

	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
	if s.closing.Load() {
		return ErrServerClosed
	}
	return fmt.Errorf("milter: accept on %s: %w", ln.Addr(), err)
}

// Shutdown stops accepting connections and waits until the sessions in
// progress have ended (the MTA closes each when its SMTP session ends), or
// ctx is done; then it closes what is left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.stopListening()
	defer s.decisions.stop()
	select {
	case <-s.drained:
		return err
	case <-ctx.Done():
		s.closeConns()
		return ctx.Err()
	}
}

// Close stops accepting connections and closes every connection at once.
func (s *Server) Close() error {
	err := s.stopListening()
	s.closeConns()
	s.decisions.stop()
	return err
}

func (s *Server) stopListening() error {
	s.mu.Lock()
	if !s.closing.Load() {
		close(s.clockStop)
	}
	s.closing.Store(true)
	lns := make([]*listener, 0, len(s.listeners))
	for l := range s.listeners {
		lns = append(lns, l)
	}
	s.checkDrainedLocked()
	s.mu.Unlock()
	var first error
	for _, l := range lns {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) && first == nil {
			first = fmt.Errorf("milter: close listener %s: %w", l.Addr(), err)
		}
	}
	return first
}

func (s *Server) closeConns() {
	s.mu.Lock()
	cs := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// Connections returns the number of open MTA connections.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) checkDrainedLocked() {
	if s.closing.Load() && len(s.conns) == 0 && !s.isDrained {
		s.isDrained = true
		close(s.drained)
	}
}

// track registers an accepted connection; false when the server is closing.
func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.checkDrainedLocked()
	s.mu.Unlock()
}

// listener wraps accepted connections in deadlines and tracking, and rides
// out temporary accept errors (such as running out of file descriptors)
// that would make go-milter's Serve return.
type listener struct {
	net.Listener
	srv *Server
}

func (l *listener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			if l.srv.closing.Load() {
				return nil, ErrServerClosed
			}
			if temporaryAcceptError(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				l.srv.logger.Error("milter: accept failed, retrying", slog.Any("err", err), slog.Duration("in", backoff))
				time.Sleep(backoff)
				continue
			}
			return nil, err
		}
		c := newConn(nc, l.srv)
		if !l.srv.track(c) {
			nc.Close()
			return nil, ErrServerClosed
		}
		return c, nil
	}
}

func temporaryAcceptError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// conn is an MTA connection: reads and writes have deadlines of
// read_timeout and write_timeout from the time they start, so a stuck MTA
// cannot hold a session forever. Re-arming a deadline costs two clock
// reads, so it is done only once the coarse clock says a slack (a quarter
// of the timeout, at most a second) has passed since the last arming: an
// MTA gets at least the timeout less the slack and one clock tick.
//
// Reads are buffered: go-milter reads a packet's length and its body
// separately, which would be two system calls.
type conn struct {
	net.Conn
	srv        *Server
	br         *bufio.Reader
	readArmed  int64 // coarse time the read deadline was last set; 0: never
	writeArmed int64
	closeOnce  sync.Once
	closeErr   error
}

func newConn(nc net.Conn, srv *Server) *conn {
	c := &conn{Conn: nc, srv: srv}
	c.br = bufio.NewReaderSize((*netReader)(c), 1024)
	return c
}

func slack(timeout time.Duration) int64 { return int64(min(timeout/4, time.Second)) }

// netReader is the conn's own network reader under the buffer.
type netReader conn

func (r *netReader) Read(p []byte) (int, error) {
	if now := r.srv.now.Load(); r.readArmed == 0 || now-r.readArmed >= slack(r.srv.readTimeout) {
		if err := r.Conn.SetReadDeadline(time.Now().Add(r.srv.readTimeout)); err != nil {
			return 0, err
		}
		r.readArmed = max(now, 1)
	}
	return r.Conn.Read(p)
}

func (c *conn) Read(p []byte) (int, error) { return c.br.Read(p) }

func (c *conn) Write(p []byte) (int, error) {
	if now := c.srv.now.Load(); c.writeArmed == 0 || now-c.writeArmed >= slack(c.srv.writeTimeout) {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.srv.writeTimeout)); err != nil {
			return 0, err
		}
		c.writeArmed = max(now, 1)
	}
	return c.Conn.Write(p)
}

func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.Conn.Close()
		c.srv.untrack(c)
	})
	return c.closeErr
}
