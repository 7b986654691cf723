// Package web serves the IP lookup service: the status page and JSON API
// for one IP, the help pages every bounce links to, removal requests for
// the site's own list, and the operator's admin API.
package web

import (
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/blmilter/blmilter/cache"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Options configure a Server.
type Options struct {
	// Engine returns the current engine; it is called per request, so a
	// reload that swaps engines takes effect at once. Required.
	Engine func() *policy.Engine
	// Store is the site's own list. Nil: the pages work, but there is no
	// site listing section, no removal requests and no admin API.
	Store *store.Store
	// LateStore, when set instead of Store, returns the store as it is
	// now: nil while a daemon that started without it retries opening it.
	// Meanwhile the pages show no site listing and the store's endpoints
	// answer that it is unavailable.
	LateStore func() *store.Store
	// Health, when set, is asked by /healthz: an error is a 503 with the
	// error's text (the store is not open, say).
	Health func() error
	// OnPanic, when set, is told of each handler panic the server
	// recovered from (for blmilter_panics_total).
	OnPanic func()
	// Settings returns the current settings; it is called per request, so
	// a reload that swaps them takes effect at once. Required.
	Settings func() *Settings
	Logger   *slog.Logger
	// Now is the clock (time.Now when nil); tests move it.
	Now func() time.Time
	// Metrics, when set, is served at GET /metrics (for [metrics] listen = "").
	Metrics http.Handler
	// Stats, when set, is served as JSON at GET /admin/api/stats.
	Stats func() any
}

// Settings are what a reload may change; cmd/blmilter fills them from
// [web], [web.smtp] and [dns]. Treat a Settings as read-only once the
// server may see it: give it a new one to change anything.
type Settings struct {
	// PublicURL is the service's base URL as clients reach it, without a
	// trailing slash: links in pages and mails start with it.
	PublicURL string
	// AdminToken is the admin API's bearer token; "" turns the API off.
	AdminToken string
	// SMTP is the relay for confirmation mails; no Server: requests wait
	// for an operator without one.
	SMTP SMTP
	// At most RemovalQuota self-service removals per IP within RemovalWindow.
	RemovalQuota  int
	RemovalWindow time.Duration
	// LookupRate (per second) and LookupBurst limit each client's lookups.
	LookupRate  float64
	LookupBurst int
	// SelfServiceCategories may be removed without an operator.
	SelfServiceCategories []string
	// DNSServers answer the reverse DNS of the status page ("IP" or
	// "IP:port"; none: the system's), each query within DNSTimeout.
	DNSServers []string
	DNSTimeout time.Duration
	// OperatorEmail gets a mail when a removal request waits; "": none.
	OperatorEmail string
	// DelistDomain is the domain of the one-time delist+TOKEN addresses
	// the page offers for proof of control; "": none.
	DelistDomain string
	// DelistTTL is how long a delist address works.
	DelistTTL time.Duration
	// DeferFirst is [policy] defer_first, for the page to say until when
	// refusals are deferred.
	DeferFirst time.Duration
}

// SelfService is the rule a removal without an operator follows.
func (c *Settings) SelfService() store.SelfService {
	return store.SelfService{Categories: c.SelfServiceCategories, Quota: c.RemovalQuota, Window: c.RemovalWindow}
}

// SMTP is a relay for confirmation mails.
type SMTP struct {
	Server   string // host:port
	From     string
	Username string // "" sends without authentication
	Password string
	StartTLS bool // require STARTTLS
}

// Server is the IP lookup service.
type Server struct {
	engine  func() *policy.Engine
	store   siteStore // nil without a store
	config  func() *Settings
	log     *slog.Logger
	now     func() time.Time
	pages   map[string]*template.Template
	csrf    csrf
	lookups *limiter
	removal *limiter
	// authFails counts admin-token failures per client; authLog and
	// authLogAll bound how often they are logged.
	authFails  *limiter
	authLog    *limiter
	authLogAll *rate.Limiter
	handler    http.Handler
	metrics    http.Handler
	stats      func() any
	health     func() error
	onPanic    func()
	http       *http.Server

	rdns      atomic.Pointer[rdnsResolver]
	rdnsCache *cache.Cache[netip.Addr, ReverseDNS]

	// the notifier of the removal loop, started by Serve
	notify         chan struct{}
	notifierOnce   sync.Once
	noticesRunning bool // set in notifierOnce
	stopOnce       sync.Once
	stopNotices    chan struct{}
	noticesDone    chan struct{}
}

// Limits on what one client may ask.
const (
	maxBody         = 16 << 10 // a removal form is an email and a short text
	maxReason       = 2000
	maxEmail        = 254
	mailsPerAddress = 3 // confirmation mails per email address per day
	removalsPerHour = 5 // removal requests per client per hour
	limiterClients  = 10000
)

// New builds a Server.
func New(opts Options) (*Server, error) {
	if opts.Engine == nil {
		return nil, errors.New("web: Options.Engine is required")
	}
	if opts.Settings == nil {
		return nil, errors.New("web: Options.Settings is required")
	}
	s := &Server{engine: opts.Engine, config: opts.Settings, log: opts.Logger, now: opts.Now, metrics: opts.Metrics, stats: opts.Stats,
		health: opts.Health, onPanic: opts.OnPanic}
	switch {
	case opts.Store != nil:
		s.store = opts.Store
	case opts.LateStore != nil:
		s.store = lateStore{opts.LateStore}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("web: form secret: %w", err)
	}
	s.csrf = csrf{secret: secret, now: s.now}
	s.notify = make(chan struct{}, 1)
	s.stopNotices = make(chan struct{})
	s.noticesDone = make(chan struct{})
	s.rdnsCache = cache.New[netip.Addr, ReverseDNS](cache.Options{Size: 10000})

	cfg := s.config()
	s.lookups = newLimiter(rate.Limit(cfg.LookupRate), cfg.LookupBurst, limiterClients, s.now)
	s.removal = newLimiter(rate.Every(time.Hour/removalsPerHour), removalsPerHour, limiterClients, s.now)
	s.authFails = newLimiter(rate.Every(authFailEvery), authFailBurst, limiterClients, s.now)
	s.authLog = newLimiter(rate.Every(time.Minute), 3, limiterClients, s.now)
	s.authLogAll = rate.NewLimiter(rate.Every(6*time.Second), 20)

	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	s.pages = pages
	s.handler = s.routes()
	s.http = s.newHTTPServer()
	return s, nil
}

// Handler returns the service's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve serves the service on ln until Shutdown, and sends the mails of
// the removal loop. Like http.Server.Serve it returns http.ErrServerClosed
// after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.notifierOnce.Do(func() {
		s.noticesRunning = true
		go func() {
			defer close(s.noticesDone)
			s.runNotices(s.stopNotices)
		}()
	})
	return s.http.Serve(ln)
}

func (s *Server) newHTTPServer() *http.Server { return NewHTTPServer(s.handler, s.log) }

// NewHTTPServer is an http.Server for h with the limits a public service
// needs: a slow or idle client holds a connection for seconds, not
// forever, and a request's header is small. The metrics listener uses it
// too.
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		// Long enough for a status page whose lists time out and for sending
		// a confirmation mail through a slow relay.
		WriteTimeout:   60 * time.Second,
		IdleTimeout:    60 * time.Second,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// ListenAndServe listens on addr and serves.
func (s *Server) ListenAndServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("web: listen %s: %w", addr, err)
	}
	return s.Serve(ln)
}

// Shutdown stops accepting connections and waits for requests in progress
// and the notifier.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	s.notifierOnce.Do(func() {}) // none starts after this
	s.stopOnce.Do(func() { close(s.stopNotices) })
	if s.noticesRunning {
		select {
		case <-s.noticesDone:
		case <-ctx.Done():
		}
	}
	return err
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", cacheFor(24*time.Hour, http.FileServerFS(static))))
	mux.HandleFunc("GET /{$}", s.handleIndex)
	mux.HandleFunc("GET /ip", s.handleIPForm)
	mux.HandleFunc("GET /ip/{ip}", s.limited(s.handleStatus))
	mux.HandleFunc("POST /ip/{ip}/removal", s.handleRemoval)
	mux.HandleFunc("GET /confirm/{token}", s.handleConfirmPage)
	mux.HandleFunc("POST /confirm/{token}", s.handleConfirm)
	mux.HandleFunc("GET /request/{token}", s.handleRequest)
	mux.HandleFunc("GET /api/v1/ip/{ip}", s.limited(s.handleAPI))
	mux.HandleFunc("GET /help", s.handleHelp)
	mux.HandleFunc("GET /help/{category}", s.handleHelpCategory)
	mux.HandleFunc("GET /healthz", s.handleHealth)
	s.adminRoutes(mux)
	if s.metrics != nil {
		mux.Handle("GET /metrics", s.metrics)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") || strings.HasPrefix(r.URL.Path, "/admin/") {
			writeJSONError(w, http.StatusNotFound, "not_found", "no such endpoint")
			return
		}
		s.errorPage(w, r, http.StatusNotFound, "Page not found", "There is no page at this address.")
	})
	return RecoverPanics(securityHeaders(mux), s.log, s.onPanic)
}

// securityHeaders forbids everything the pages do not need: they load only
// their own style sheet, run no scripts and are never framed. The
// confirmation link carries its token in the path, hence no-referrer.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

func cacheFor(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(d.Seconds())))
		next.ServeHTTP(w, r)
	})
}

// limited applies the per-client lookup rate to h, as the current
// settings have it.
func (s *Server) limited(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cfg := s.config()
		s.lookups.setLimit(rate.Limit(cfg.LookupRate), cfg.LookupBurst)
		if !s.lookups.allow(remoteIP(r)) {
			w.Header().Set("Retry-After", "10")
			if strings.HasPrefix(r.URL.Path, "/api/") {
				writeJSONError(w, http.StatusTooManyRequests, "rate_limited", "too many lookups from your address; slow down")
				return
			}
			s.errorPage(w, r, http.StatusTooManyRequests, "Too many lookups",
				"Your address has made too many lookups in a short time. Wait a minute and try again.")
			return
		}
		h(w, r)
	}
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if s.engine() == nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "no engine")
		return
	}
	if s.health != nil {
		if err := s.health(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, err)
			return
		}
	}
	fmt.Fprintln(w, "ok")
}
