package policyd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blmilter/blmilter/internal/sockets"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/traps"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("policyd: server closed")

// WriteTimeout bounds writing one reply; Postfix reads it at once.
const WriteTimeout = 10 * time.Second

// Options are the policy server's settings; cmd/blmilter fills them from
// the [policyd] section.
type Options struct {
	Logger *slog.Logger
	// ReadTimeout is how long a connection may wait for (or in) a request.
	ReadTimeout time.Duration
	// MaxConnections is the most connections served at once; more are
	// closed at once.
	MaxConnections int
	// OnAnswer, when set, is told the kind of each answer (see
	// AnswerKind), for metrics.
	OnAnswer func(kind string)
	// Traps, when set, returns the current spam traps and delist
	// addresses (nil: none), asked at each recipient.
	Traps func() *traps.Traps
	// OnPanic, when set, is told of each panic the server recovered from
	// while serving a connection, for metrics.
	OnPanic func()
}

// Server is a policy delegation server. Create it with NewServer; it may
// serve several listeners at once.
type Server struct {
	// OnAnswer, when set before Serve, is told the kind of each answer
	// (see AnswerKind), for metrics.
	OnAnswer func(kind string)

	engine       func() *policy.Engine
	traps        func() *traps.Traps
	log          *slog.Logger
	onPanic      func()
	writeTimeout time.Duration
	// The limits a reload may change (SetLimits); read per connection.
	readTimeout atomic.Int64 // time.Duration
	maxConns    atomic.Int64

	// ctx is the parent of every check; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	inShutdown atomic.Bool
	mu         sync.Mutex
	listeners  map[net.Listener]struct{}
	conns      map[*conn]struct{}
	// refused connections not yet logged, and when the last line was
	refused       int
	refusedLogged time.Time
	wg            sync.WaitGroup // connection goroutines
}

// NewServer returns a server that asks engine() for the current engine at
// each request, so a reload can swap engines under open connections.
// opts.ReadTimeout and opts.MaxConnections must be positive.
func NewServer(engine func() *policy.Engine, opts Options) *Server {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		OnAnswer:     opts.OnAnswer,
		engine:       engine,
		traps:        opts.Traps,
		log:          logger,
		onPanic:      opts.OnPanic,
		writeTimeout: WriteTimeout,
		listeners:    map[net.Listener]struct{}{},
		conns:        map[*conn]struct{}{},
	}
	s.SetLimits(opts.ReadTimeout, opts.MaxConnections)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// SetLimits changes the read timeout and the connection limit of a running
// server (a reload): the timeout applies from each connection's next read,
// the limit from the next accepted connection.
func (s *Server) SetLimits(readTimeout time.Duration, maxConnections int) {
	s.readTimeout.Store(int64(readTimeout))
	s.maxConns.Store(int64(maxConnections))
}

// Serve accepts connections on ln until Shutdown or Close, and then returns
// ErrServerClosed. Connections beyond the limit are closed at once, which
// Postfix handles as an unavailable policy service
// (smtpd_policy_service_default_action).
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.inShutdown.Load() {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	s.log.Debug("policy server listening", "addr", ln.Addr().String())

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.inShutdown.Load() {
				return ErrServerClosed
			}
			// Running out of file descriptors passes; wait as net/http does.
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("policy server accept failed; retrying", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("policyd: accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		s.mu.Lock()
		if s.inShutdown.Load() {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		if maxConns := s.maxConns.Load(); int64(len(s.conns)) >= maxConns {
			// One line a second at most: a flood must not flood the log.
			s.refused++
			now := time.Now()
			refused, logIt := s.refused, now.Sub(s.refusedLogged) >= time.Second
			if logIt {
				s.refused, s.refusedLogged = 0, now
			}
			s.mu.Unlock()
			nc.Close()
			if logIt {
				s.log.Warn("policy connections refused: too many connections",
					"refused", refused, "max_connections", maxConns)
			}
			continue
		}
		c := newConn(s, nc)
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// Shutdown stops accepting, closes idle connections, lets each busy one
// finish its current request, and returns when all are gone or ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.inShutdown.Store(true)
	s.closeListeners()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.closeIdle() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("policyd: shutdown: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// Close stops the server at once: listeners and connections are closed and
// checks in flight are cancelled. It returns when every connection is gone.
func (s *Server) Close() error {
	s.inShutdown.Store(true)
	s.cancel()
	err := s.closeListeners()
	s.mu.Lock()
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) closeListeners() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for ln := range s.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("policyd: close listener %s: %w", ln.Addr(), err))
		}
	}
	return errors.Join(errs...)
}

// closeIdle closes the connections waiting for a request and returns how
// many connections remain.
func (s *Server) closeIdle() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.idle.Load() {
			c.nc.Close()
		}
	}
	return len(s.conns)
}

// panicked counts a recovered panic.
func (s *Server) panicked() {
	if s.onPanic != nil {
		s.onPanic()
	}
}

func (s *Server) remove(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Listen opens the listener for a [policyd] listen value: "host:port",
// "inet:host:port" (also "inet6:" and "tcp:"), or "unix:/path". A stale
// unix socket left by a crash is removed, but only when nothing answers on
// it; the new socket gets mode (0660 when 0).
func Listen(spec string, mode os.FileMode) (net.Listener, error) {
	network, addr, err := sockets.ParsePolicySpec(spec)
	if err != nil {
		return nil, err
	}
	if network != "unix" {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, fmt.Errorf("policyd: listen %q: %w", spec, err)
		}
		return ln, nil
	}
	if mode == 0 {
		mode = 0o660
	}
	ln, err := sockets.ListenUnix(addr, mode)
	if err != nil {
		return nil, fmt.Errorf("policyd: listen %q: %w", spec, err)
	}
	return ln, nil
}

func remoteName(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return "unix"
}

// Buffers are pooled: Postfix opens a connection per smtpd process, and
// processes come and go (max_use).
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, MaxLineLength) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 1024) }}
)

// conn is one policy client connection.
type conn struct {
	s       *Server
	nc      net.Conn
	remote  string
	r       *bufio.Reader
	w       *bufio.Writer
	idle    atomic.Bool // waiting for the first byte of a request
	req     Request
	memo    memo
	pending pendingLog
	attrs   []slog.Attr
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{s: s, nc: nc, remote: remoteName(nc)}
	c.idle.Store(true)
	return c
}

func (c *conn) serve() {
	s := c.s
	c.r = readerPool.Get().(*bufio.Reader)
	c.r.Reset(c.nc)
	c.w = writerPool.Get().(*bufio.Writer)
	c.w.Reset(c.nc)
	defer func() {
		c.nc.Close()
		c.r.Reset(nil)
		readerPool.Put(c.r)
		c.w.Reset(nil)
		writerPool.Put(c.w)
		s.remove(c)
	}()
	// A panic outside a check (decide has its own) ends this connection
	// only; Postfix opens another.
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("policy connection panicked; closed it", "remote", c.remote, "panic", p, "stack", string(debug.Stack()))
			s.panicked()
		}
	}()
	for {
		// The order matters for Shutdown: mark idle, then look at the flag.
		c.idle.Store(true)
		if s.inShutdown.Load() {
			return
		}
		if err := c.nc.SetReadDeadline(time.Now().Add(time.Duration(s.readTimeout.Load()))); err != nil {
			return
		}
		if _, err := c.r.Peek(1); err != nil {
			c.readError(err, true)
			return
		}
		c.idle.Store(false)
		if err := ParseRequest(c.r, &c.req); err != nil {
			c.readError(err, false)
			return
		}
		action := c.decide()
		if err := c.nc.SetWriteDeadline(time.Now().Add(s.writeTimeout)); err != nil {
			return
		}
		c.w.WriteString("action=")
		c.w.WriteString(action)
		c.w.WriteString("\n\n")
		err := c.w.Flush()
		c.logDecision()
		if s.OnAnswer != nil {
			s.OnAnswer(AnswerKind(action))
		}
		if err != nil {
			s.log.Warn("policy reply not written", "remote", c.remote, "err", err)
			return
		}
	}
}

// readError logs why a connection ends. A peer closing or going quiet
// between requests is normal; anything else is worth a warning.
func (c *conn) readError(err error, betweenRequests bool) {
	var ne net.Error
	switch {
	case c.s.inShutdown.Load() && (errors.Is(err, net.ErrClosed) || betweenRequests):
		// Closed by Shutdown or Close.
	case err == io.EOF && betweenRequests:
	case errors.As(err, &ne) && ne.Timeout() && betweenRequests:
		c.s.log.Debug("idle policy connection closed", "remote", c.remote, "read_timeout", time.Duration(c.s.readTimeout.Load()))
	case errors.As(err, &ne) && ne.Timeout():
		c.s.log.Warn("policy connection closed: request not finished in time",
			"remote", c.remote, "read_timeout", time.Duration(c.s.readTimeout.Load()))
	case errors.Is(err, ErrLineTooLong), errors.Is(err, ErrTooManyAttributes):
		c.s.log.Warn("policy connection dropped: bad request", "remote", c.remote, "err", err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		c.s.log.Warn("policy connection closed in the middle of a request", "remote", c.remote)
	default:
		c.s.log.Warn("policy connection read failed", "remote", c.remote, "err", err)
	}
}

// AnswerKind names the kind of a policy answer with a fixed word, for
// metrics: "REJECT" for 5xx, "DEFER" for 4xx, else its action word
// ("DUNNO", "PREPEND").
func AnswerKind(action string) string {
	word, _, _ := strings.Cut(action, " ")
	switch {
	case len(word) == 3 && word[0] == '5':
		return "REJECT"
	case len(word) == 3 && word[0] == '4':
		return "DEFER"
	}
	return word
}
