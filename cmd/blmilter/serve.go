package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/blmilter/blmilter/cache"
	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/health"
	"github.com/blmilter/blmilter/logging"
	"github.com/blmilter/blmilter/metrics"
	"github.com/blmilter/blmilter/milter"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/policyd"
	"github.com/blmilter/blmilter/store"
	"github.com/blmilter/blmilter/web"
)

var serveCommand = &command{
	name:     "serve",
	synopsis: "run the milter, and the policy server and web service when configured (default)",
	help: `Runs blmilter: the milter on [milter] listen, and the Postfix policy server,
the IP lookup web service and metrics when their listen addresses are set.
Without -config the embedded default config is used.

Signals:
  SIGHUP           reload: the config file is read and a new policy engine
                   built from it whole; it takes over new SMTP sessions and
                   the old one is closed after -reload-grace. An invalid file
                   is logged and the running config stays. Local list files
                   are re-read too. Listen addresses need a restart.
  SIGTERM, SIGINT  stop accepting connections, let sessions in progress
                   finish (at most -shutdown-timeout), then exit.
  SIGUSR1          reopen the [log] file (for logrotate).`,
	run: runServe,
}

func runServe(c *cmdCtx, args []string) error {
	grace := c.flags.Duration("reload-grace", 30*time.Second, "how long a replaced policy engine keeps serving checks in progress after a reload")
	shutdownTimeout := c.flags.Duration("shutdown-timeout", 30*time.Second, "how long sessions in progress may take to finish at shutdown")
	args, err := c.parse(args)
	if err != nil {
		return err
	}
	if len(args) > 0 {
		return usageError("no arguments expected")
	}
	cfg, err := c.loadConfig()
	if err != nil {
		return err
	}
	logger, logOut, err := logging.New(cfg.Log, c.stderr)
	if err != nil {
		return err
	}
	defer logOut.Close()
	// Anything a library reports through the standard log package goes to
	// the same place as everything else.
	slog.SetDefault(logger)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	defer signal.Stop(sigs)

	d := newDaemon(c.configPath, logger)
	d.logOut = logOut
	d.grace = *grace
	d.shutdownTimeout = *shutdownTimeout
	return d.run(cfg, sigs)
}

// daemon is a running blmilter: the current policy engine and the servers
// that use it.
type daemon struct {
	configPath      string
	logger          *slog.Logger
	grace           time.Duration // a replaced engine is closed this long after a reload
	shutdownTimeout time.Duration

	// onListen and onReload, when set, are told each listening address
	// and the outcome of each SIGHUP (for tests).
	onListen func(name string, addr net.Addr)
	onReload func(err error)

	logOut   *logging.Output // nil in tests that log elsewhere
	metrics  *metrics.Metrics
	health   *health.Monitor
	resolver atomic.Pointer[dnsbl.Resolver] // for the health probes, from [dns]

	engine   atomic.Pointer[policy.Engine]
	store    *store.Store   // nil without one
	opts     policy.Options // the same store and recorder for every engine
	cfg      atomic.Pointer[policy.Config]
	reloadMu sync.Mutex
	quit     chan struct{} // closed at shutdown: retired engines close at once
	retired  sync.WaitGroup
}

func newDaemon(configPath string, logger *slog.Logger) *daemon {
	return &daemon{
		configPath:      configPath,
		logger:          logger,
		grace:           30 * time.Second,
		shutdownTimeout: 30 * time.Second,
		quit:            make(chan struct{}),
		metrics:         metrics.New(versionString()),
	}
}

// watch sets up what every engine reports to: the metrics, the health
// monitor's hit-ratio alarm and the rate-limited list error log. The
// monitor keeps list states by name across reloads.
func (d *daemon) watch(cfg *policy.Config) error {
	if err := d.setResolver(cfg); err != nil {
		return err
	}
	h := cfg.Health
	d.health = health.New(d.healthTarget, func() health.Resolver { return d.resolver.Load() }, health.Options{
		Interval:    h.Interval.Duration,
		Timeout:     h.Timeout.Duration,
		FailAfter:   h.FailAfter,
		MaxHitRatio: h.MaxHitRatio,
		MinChecks:   h.MinChecks,
		RatioWindow: h.RatioWindow.Duration,
		Logger:      d.logger,
		OnChange:    func(list string, healthy bool, _ string) { d.metrics.SetListHealthy(list, healthy) },
	})
	d.opts.Observers = append(d.opts.Observers, d.metrics, d.health, &logging.ListErrors{Log: d.logger})
	d.metrics.SetCacheStats(func() cache.Stats {
		if e := d.current(); e != nil {
			return e.CacheStats()
		}
		return cache.Stats{}
	})
	return nil
}

// setResolver builds the health probes' resolver from [dns].
func (d *daemon) setResolver(cfg *policy.Config) error {
	r, err := dnsbl.NewResolver(cfg.DNS.Servers, cfg.DNS.Timeout.Duration)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	d.resolver.Store(r)
	return nil
}

// healthTarget is the engine the monitor marks; a nil interface, not a nil
// engine, while there is none.
func (d *daemon) healthTarget() health.Target {
	if e := d.current(); e != nil {
		return e
	}
	return nil
}

// exportHealth sets blmilter_list_healthy for every probed list of e.
func (d *daemon) exportHealth(e *policy.Engine) {
	for _, l := range e.Lists() {
		if l.Kind == policy.KindDNS && l.Health {
			d.metrics.SetListHealthy(l.Name, l.Healthy)
		}
	}
}

// stats is what /admin/api/stats and `blmilter stats` show.
func (d *daemon) stats() any {
	return struct {
		metrics.Stats
		Health []health.Status `json:"health"`
	}{d.metrics.Stats(), d.health.Statuses()}
}

// current returns the engine that judges new sessions; the front ends
// take it as a function so a reload can swap it.
func (d *daemon) current() *policy.Engine { return d.engine.Load() }

// runner is one server started by serve: serve blocks until shutdown
// (returning nil then) or failure; shutdown stops it gracefully. ln is
// its listener, closed directly when blmilter fails to start.
type runner struct {
	name     string
	ln       net.Listener
	serve    func() error
	shutdown func(ctx context.Context) error
}

// starter starts one part of blmilter from the config, or returns no
// runner when the config leaves that part off. The policy server, the web
// service and metrics plug in here (see startPolicyd, startWeb,
// startMetrics).
type starter func(d *daemon, cfg *policy.Config) ([]runner, error)

var starters = []starter{startMilter, startPolicyd, startWeb, startMetrics}

// run serves until SIGTERM/SIGINT arrives on sigs (SIGHUP reloads) or a
// server fails.
func (d *daemon) run(cfg *policy.Config, sigs <-chan os.Signal) error {
	defer d.openStore(cfg, true)()
	if err := d.watch(cfg); err != nil {
		return err
	}

	e, err := policy.NewEngine(cfg, d.opts)
	if err != nil {
		return fmt.Errorf("build policy engine: %w", err)
	}
	d.engine.Store(e)
	d.cfg.Store(cfg)
	d.exportHealth(e)
	defer d.closeEngines()

	// The probes stop before the engines close (defers run in reverse).
	probeCtx, stopProbes := context.WithCancel(context.Background())
	probesDone := make(chan struct{})
	go func() {
		defer close(probesDone)
		d.health.Run(probeCtx)
	}()
	defer func() {
		stopProbes()
		<-probesDone
	}()

	var runners []runner
	for _, start := range starters {
		rs, err := start(d, cfg)
		if err != nil {
			for _, r := range runners {
				r.ln.Close()
			}
			return err
		}
		runners = append(runners, rs...)
	}
	if len(runners) == 0 {
		return errors.New("nothing to serve: [milter] listen, [policyd] listen and [web] listen are all empty")
	}

	errc := make(chan error, len(runners))
	for _, r := range runners {
		go func() {
			if err := r.serve(); err != nil {
				errc <- fmt.Errorf("%s: %w", r.name, err)
				return
			}
			errc <- nil
		}()
	}
	d.logger.Info("blmilter started", slog.String("version", versionString()), slog.String("config", d.configName()), slog.Int("lists", len(cfg.Lists)))

	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				_, err := d.reload()
				d.metrics.ConfigReload(err == nil)
				if err != nil {
					d.logger.Error("reload failed; the running config stays", slog.Any("err", err))
				}
				if d.onReload != nil {
					d.onReload(err)
				}
				continue
			case syscall.SIGUSR1:
				if d.logOut != nil {
					if err := d.logOut.Reopen(); err != nil {
						d.logger.Error("log file not reopened; still writing to the old one", slog.Any("err", err))
					} else {
						d.logger.Info("log file reopened")
					}
				}
				continue
			}
			d.logger.Info("shutting down", slog.String("signal", sig.String()))
			return d.shutdown(runners)
		case err := <-errc:
			if err == nil {
				continue
			}
			d.logger.Error("server failed; shutting down", slog.Any("err", err))
			d.shutdown(runners)
			return err
		}
	}
}

func (d *daemon) configName() string {
	if d.configPath == "" {
		return "(embedded default)"
	}
	return d.configPath
}

// shutdown stops every runner at once, each letting its sessions finish
// within the shutdown timeout.
func (d *daemon) shutdown(runners []runner) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.shutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(runners))
	for i, r := range runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.shutdown(ctx); err != nil {
				errs[i] = fmt.Errorf("%s: shutdown: %w", r.name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// reload builds a new engine from the config file and swaps it in; the
// old engine is closed after the grace period, so checks in progress
// finish on it. On any problem the running engine stays: reload returns
// the engine in use and the error. Local list files are re-read either way.
func (d *daemon) reload() (*policy.Engine, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	old := d.engine.Load()
	cfg, err := loadConfig(d.configPath)
	if err == nil {
		var e *policy.Engine
		e, err = policy.NewEngine(cfg, d.opts)
		if err == nil {
			if rerr := d.setResolver(cfg); rerr != nil {
				e.Close()
				return old, fmt.Errorf("reload %s: %w", d.configName(), rerr)
			}
			d.warnRestartNeeded(d.cfg.Load(), cfg)
			// The monitor tells the new engine which lists are degraded
			// at its next round; until then they start healthy.
			d.engine.Store(e)
			d.cfg.Store(cfg)
			d.retire(old)
			d.logger.Info("config reloaded", slog.String("config", d.configName()), slog.Int("lists", len(cfg.Lists)))
			return e, nil
		}
	}
	if old != nil {
		old.ReloadFiles()
	}
	return old, fmt.Errorf("reload %s: %w", d.configName(), err)
}

// warnRestartNeeded logs the settings a reload cannot change: the sockets
// stay open as they are.
func (d *daemon) warnRestartNeeded(old, cfg *policy.Config) {
	if old == nil {
		return
	}
	for _, c := range []struct{ key, old, new string }{
		{"milter.listen", old.Milter.Listen, cfg.Milter.Listen},
		{"milter.socket_mode", old.Milter.SocketMode, cfg.Milter.SocketMode},
		{"milter.read_timeout", old.Milter.ReadTimeout.String(), cfg.Milter.ReadTimeout.String()},
		{"milter.write_timeout", old.Milter.WriteTimeout.String(), cfg.Milter.WriteTimeout.String()},
		{"milter.max_connections", strconv.Itoa(old.Milter.MaxConnections), strconv.Itoa(cfg.Milter.MaxConnections)},
		{"milter.session_timeout", old.Milter.SessionTimeout.String(), cfg.Milter.SessionTimeout.String()},
		{"policyd.listen", old.Policyd.Listen, cfg.Policyd.Listen},
		{"web.listen", old.Web.Listen, cfg.Web.Listen},
		{"metrics.listen", old.Metrics.Listen, cfg.Metrics.Listen},
		{"store.path", old.Store.Path, cfg.Store.Path},
		{"log", fmt.Sprintf("%+v", old.Log), fmt.Sprintf("%+v", cfg.Log)},
		{"health", fmt.Sprintf("%+v", old.Health), fmt.Sprintf("%+v", cfg.Health)},
	} {
		if c.old != c.new {
			d.logger.Warn("setting changed; it takes effect at the next restart", slog.String("key", c.key), slog.String("running", c.old), slog.String("file", c.new))
		}
	}
}

// retire closes a replaced engine after the grace period (at once when
// blmilter is shutting down).
func (d *daemon) retire(e *policy.Engine) {
	if e == nil {
		return
	}
	d.retired.Add(1)
	go func() {
		defer d.retired.Done()
		t := time.NewTimer(d.grace)
		defer t.Stop()
		select {
		case <-t.C:
		case <-d.quit:
		}
		if err := e.Close(); err != nil {
			d.logger.Warn("closing replaced policy engine", slog.Any("err", err))
		}
	}()
}

func (d *daemon) closeEngines() {
	close(d.quit)
	d.retired.Wait()
	if e := d.engine.Swap(nil); e != nil {
		if err := e.Close(); err != nil {
			d.logger.Warn("closing policy engine", slog.Any("err", err))
		}
	}
}

func (d *daemon) listening(name string, addr net.Addr) {
	d.logger.Info("listening", slog.String("server", name), slog.String("addr", addr.Network()+":"+addr.String()))
	if d.onListen != nil {
		d.onListen(name, addr)
	}
}

func startMilter(d *daemon, cfg *policy.Config) ([]runner, error) {
	if cfg.Milter.Listen == "" {
		return nil, nil
	}
	mode, err := socketMode(cfg.Milter.SocketMode)
	if err != nil {
		return nil, fmt.Errorf("milter.socket_mode: %w", err)
	}
	ln, err := milter.Listen(cfg.Milter.Listen, mode)
	if err != nil {
		return nil, err
	}
	d.listening("milter", ln.Addr())
	ln = d.metrics.CountSessions(ln)
	s := milter.NewServer(d.current, milter.Options{
		Logger:         d.logger,
		ReadTimeout:    cfg.Milter.ReadTimeout.Duration,
		WriteTimeout:   cfg.Milter.WriteTimeout.Duration,
		MaxConnections: cfg.Milter.MaxConnections,
		SessionTimeout: cfg.Milter.SessionTimeout.Duration,
		OnPanic:        func() { d.metrics.Panic("milter") },
	})
	return []runner{{
		name: "milter",
		ln:   ln,
		serve: func() error {
			if err := s.Serve(ln); !errors.Is(err, milter.ErrServerClosed) {
				return err
			}
			return nil
		},
		shutdown: s.Shutdown,
	}}, nil
}

// socketMode parses an octal file mode such as "0660"; "" is 0660.
func socketMode(s string) (os.FileMode, error) {
	if s == "" {
		return 0o660, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("want an octal mode such as \"0660\", got %q", s)
	}
	return os.FileMode(m), nil
}

// The functions below start the parts of blmilter that live in other
// packages. Each reads its own section of the config and returns no runner
// when that section leaves it off.

// openStore opens the site's own list ([store] path) before the first
// engine is built and shares it with every engine, across reloads, as the
// store list and the decision recorder. With create false a missing
// database is left alone (for commands that only read). A store that cannot
// be opened is logged and blmilter goes on without it: the mail must flow.
//
// Store changes need no cache invalidation: the engine asks the store on
// every check and caches only DNS answers.
func (d *daemon) openStore(cfg *policy.Config, create bool) (closeStore func()) {
	path := cfg.Store.Path
	if path == "" {
		return func() {}
	}
	if !create {
		if _, err := os.Stat(path); err != nil {
			return func() {}
		}
	}
	st, err := store.Open(path, store.Options{
		Logger:          d.logger,
		DecisionMaxAge:  cfg.Store.DecisionMaxAge.Duration,
		DecisionMaxRows: cfg.Store.DecisionMaxRows,
	})
	if err != nil {
		d.logger.Error("store unavailable: running without the site's own list, removal requests and decision records",
			slog.String("path", path), slog.Any("err", err))
		return func() {}
	}
	d.store = st
	d.opts.StoreList = st
	d.opts.Recorder = st
	return func() {
		if err := st.Close(); err != nil {
			d.logger.Warn("closing store", slog.Any("err", err))
		}
	}
}

// startPolicyd starts the Postfix policy delegation server on [policyd] listen.
func startPolicyd(d *daemon, cfg *policy.Config) ([]runner, error) {
	if cfg.Policyd.Listen == "" {
		return nil, nil
	}
	mode, err := socketMode(cfg.Policyd.SocketMode)
	if err != nil {
		return nil, fmt.Errorf("policyd.socket_mode: %w", err)
	}
	ln, err := policyd.Listen(cfg.Policyd.Listen, mode)
	if err != nil {
		return nil, err
	}
	d.listening("policyd", ln.Addr())
	s := policyd.NewServer(d.current, d.logger, cfg.Policyd)
	s.OnAnswer = d.metrics.PolicydRequest
	return []runner{{
		name: "policyd",
		ln:   ln,
		serve: func() error {
			if err := s.Serve(ln); !errors.Is(err, policyd.ErrServerClosed) {
				return err
			}
			return nil
		},
		shutdown: s.Shutdown,
	}}, nil
}

// startWeb starts the IP lookup web service on [web] listen.
func startWeb(d *daemon, cfg *policy.Config) ([]runner, error) {
	if cfg.Web.Listen == "" {
		return nil, nil
	}
	opts := web.Options{
		Engine: d.current,
		Store:  d.store,
		Config: d.cfg.Load,
		Logger: d.logger,
		Stats:  d.stats,
	}
	if cfg.Metrics.Listen == "" {
		opts.Metrics = d.metrics.Handler()
	}
	w, err := web.New(opts)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Web.Listen)
	if err != nil {
		return nil, fmt.Errorf("web: listen on %s: %w", cfg.Web.Listen, err)
	}
	d.listening("web", ln.Addr())
	return []runner{{
		name: "web",
		ln:   ln,
		serve: func() error {
			if err := w.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
		shutdown: w.Shutdown,
	}}, nil
}

// startMetrics serves /metrics on [metrics] listen of its own; without
// one, the web service serves it (startWeb).
func startMetrics(d *daemon, cfg *policy.Config) ([]runner, error) {
	if cfg.Metrics.Listen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Metrics.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", cfg.Metrics.Listen, err)
	}
	d.listening("metrics", ln.Addr())
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metrics.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	return []runner{{
		name: "metrics",
		ln:   ln,
		serve: func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
		shutdown: srv.Shutdown,
	}}, nil
}
