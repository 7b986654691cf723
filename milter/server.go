package milter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/blmilter/blmilter/policy"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("milter: server closed")

// Server is the milter server: one goroutine per MTA connection, each
// bounded in time (Options) and in what it buffers, at most
// Options.MaxConnections at once, and a graceful shutdown.
type Server struct {
	opts      Options
	engine    func() *policy.Engine
	logger    *slog.Logger
	problems  *limitedLog // protocol errors, refusals, panics: rate-limited
	decisions *decisionLog

	closing atomic.Bool

	// now is a coarse clock (Unix nanoseconds) kept by a ticker while the
	// server runs, so that deadlines are re-armed without reading the
	// system clock on every packet (see conn.armRead).
	now       atomic.Int64
	clockOnce sync.Once
	clockStop chan struct{}
	stopOnce  sync.Once

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	drained   chan struct{} // closed once closing and no connection is left
	isDrained bool
}

// NewServer returns a milter server that asks engine() for the current
// policy engine at each SMTP connection, so a reload takes effect for the
// next connection while sessions in progress keep the engine they started
// with. The timeouts and MaxConnections of opts must be positive.
func NewServer(engine func() *policy.Engine, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{
		opts:      opts,
		engine:    engine,
		logger:    opts.Logger,
		problems:  newLimitedLog(opts.Logger, time.Second),
		decisions: newDecisionLog(opts.Logger),
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
		drained:   make(chan struct{}),
		clockStop: make(chan struct{}),
	}
}

// Kinds of trouble, for the rate-limited log (one line a second per kind).
const (
	kindOrder          = "command out of order"
	kindMalformed      = "malformed packet"
	kindTooLong        = "packet too long"
	kindUnknownCommand = "unknown command"
	kindReadTimeout    = "read timeout"
	kindWriteTimeout   = "write timeout"
	kindSessionTimeout = "session timeout"
	kindConnLimit      = "connection limit"
	kindPanic          = "panic"
)

// protocolError ends one connection; kind is one of the kinds above.
type protocolError struct {
	kind   string
	detail string
}

func (e *protocolError) Error() string { return e.kind + ": " + e.detail }

func protoErr(kind, format string, args ...any) error {
	return &protocolError{kind: kind, detail: fmt.Sprintf(format, args...)}
}

// startClock starts the coarse clock; it runs until the server is closed
// or has drained.
func (s *Server) startClock() {
	s.clockOnce.Do(func() {
		tick := min(s.opts.ReadTimeout, s.opts.WriteTimeout) / 4
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

func (s *Server) stopClock() { s.stopOnce.Do(func() { close(s.clockStop) }) }

// Serve accepts MTA connections on ln until Shutdown or Close, and then
// returns ErrServerClosed. Serve may be called for several listeners.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	s.startClock()
	s.decisions.start()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if temporaryAcceptError(err) {
				// Running out of file descriptors must not end the milter.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger.Error("milter: accept failed, retrying", slog.Any("err", err), slog.Duration("in", backoff))
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("milter: accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		c := newConn(nc, s)
		if err := s.track(c); err != nil {
			nc.Close()
			if errors.Is(err, ErrServerClosed) {
				continue // Accept fails next, on the closed listener
			}
			// Postfix applies milter_default_action to the refused session.
			s.problems.log(slog.LevelWarn, kindConnLimit, "milter: connection refused: max_connections reached",
				slog.Int("max_connections", s.opts.MaxConnections))
			continue
		}
		go s.serveConn(c)
	}
}

var errFull = errors.New("milter: too many connections")

// track registers an accepted connection, unless the server is closing or
// full.
func (s *Server) track(c *conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return ErrServerClosed
	}
	if len(s.conns) >= s.opts.MaxConnections {
		return errFull
	}
	s.conns[c] = struct{}{}
	return nil
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.checkDrainedLocked()
	s.mu.Unlock()
}

// serveConn serves one MTA connection to its end. A panic ends this
// connection only (the MTA then applies its default action) and is logged
// and counted.
func (s *Server) serveConn(c *conn) {
	defer c.release()
	defer func() {
		if p := recover(); p != nil {
			s.panicked("milter: session panicked; connection closed", p, c.remote())
		}
	}()
	s.logEnd(c, c.serve())
}

// logEnd logs why a connection ended, when that is worth a line: protocol
// errors and timeouts, at most one line a second per kind. An MTA closing
// the connection, with or without QUIT, is the normal end.
func (s *Server) logEnd(c *conn, err error) {
	if err == nil || c.closedHere.Load() {
		return
	}
	var pe *protocolError
	switch {
	case errors.As(err, &pe):
	case errors.Is(err, errEOF):
		return
	case errors.Is(err, errReadDeadline), errors.Is(err, errWriteDeadline):
		kind := kindReadTimeout
		if errors.Is(err, errWriteDeadline) {
			kind = kindWriteTimeout
		}
		if !time.Now().Before(c.sessionEnd) {
			kind = kindSessionTimeout
		}
		pe = &protocolError{kind: kind, detail: err.Error()}
	default:
		s.logger.Debug("milter: connection ended", slog.Any("err", err), c.remote())
		return
	}
	s.problems.log(slog.LevelWarn, pe.kind, "milter: connection closed", slog.String("err", pe.detail), c.remote())
}

// panicked logs a recovered panic with its stack and counts it.
func (s *Server) panicked(msg string, p any, attrs ...slog.Attr) {
	if s.opts.OnPanic != nil {
		s.opts.OnPanic()
	}
	attrs = append(attrs, slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
	s.problems.log(slog.LevelError, kindPanic, msg, attrs...)
}

// checkNow runs a policy check on the caller's goroutine. A check that
// panics lets the client through: a broken check must not refuse mail.
func (s *Server) checkNow(ip netip.Addr, check func() (policy.Verdict, bool)) (v policy.Verdict, ok bool) {
	defer func() {
		if p := recover(); p != nil {
			s.panicked("milter: policy check panicked; client let through", p, slog.String("ip", ip.String()))
			v, ok = policy.Verdict{IP: ip, Action: policy.ActionAccept}, true
		}
	}()
	return check()
}

// pendingCheck is a policy check running on its own goroutine. The check
// writes only here; the session that started it reads the verdict after
// done is closed, or drops it unread when its SMTP session ends first.
type pendingCheck struct {
	done    chan struct{}
	verdict policy.Verdict
}

func (s *Server) startCheck(eng *policy.Engine, ip netip.Addr) *pendingCheck {
	p := &pendingCheck{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		// The engine bounds the check with its deadline.
		p.verdict, _ = s.checkNow(ip, func() (policy.Verdict, bool) {
			return eng.Check(context.Background(), ip), true
		})
	}()
	return p
}

// Shutdown stops accepting connections and waits until the sessions in
// progress have ended (the MTA closes each when its SMTP session ends), or
// ctx is done; then it closes what is left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.stopListening()
	defer s.decisions.stop()
	defer s.stopClock()
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
	s.stopClock()
	return err
}

func (s *Server) stopListening() error {
	s.mu.Lock()
	s.closing.Store(true)
	lns := make([]net.Listener, 0, len(s.listeners))
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
		c.closeHere()
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

func temporaryAcceptError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
