package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/blmilter/blmilter/cache"
	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/health"
	"github.com/blmilter/blmilter/internal/sockets"
	"github.com/blmilter/blmilter/logging"
	"github.com/blmilter/blmilter/metrics"
	"github.com/blmilter/blmilter/milter"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/policyd"
	"github.com/blmilter/blmilter/store"
	"github.com/blmilter/blmilter/traps"
	"github.com/blmilter/blmilter/web"
	"github.com/blmilter/blmilter/zone"
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
                   are re-read too. A setting a reload cannot apply (listen
                   addresses, sockets, the store path, the milter's limits:
                   "blmilter help config" marks each) keeps its running value,
                   and the log names it until the next restart.
  SIGTERM, SIGINT  stop accepting connections, let sessions in progress
                   finish (at most -shutdown-timeout), then exit.
  SIGUSR1          reopen the [log] file (for logrotate).`,
	setup: func(fs *flag.FlagSet) func(c *cmdCtx, args []string) error {
		grace := fs.Duration("reload-grace", 30*time.Second, "how long a replaced policy engine keeps serving checks in progress after a reload")
		shutdownTimeout := fs.Duration("shutdown-timeout", 30*time.Second, "how long sessions in progress may take to finish at shutdown")
		return func(c *cmdCtx, args []string) error {
			if len(args) > 0 {
				return usageError("no arguments expected")
			}
			cfg, err := loadConfig(c.configPath)
			if err != nil {
				return err
			}
			logger, logOut, err := logging.New(logOptions(cfg), c.stderr)
			if err != nil {
				return err
			}
			defer logOut.Close()
			// Anything a library reports through the standard log package
			// goes to the same place as everything else.
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
	},
}

// A server is one of blmilter's network servers, started and stopped alike.
type server interface {
	// Serve serves ln until Shutdown, then returns the service's closed
	// error (see service.closed).
	Serve(ln net.Listener) error
	// Shutdown stops accepting and lets what is in progress finish, until
	// ctx ends.
	Shutdown(ctx context.Context) error
}

// service is how serve runs one server: where it listens in a config (or
// that the config leaves it off), how it is built, and what its Serve
// returns once shut down. Adding a server is adding one entry.
type service struct {
	name string
	// listen opens the listener; a nil listener means the config leaves
	// the service off.
	listen func(cfg *config.Config) (net.Listener, error)
	// build makes the server, and optionally what applies a reloaded
	// config's live settings to it.
	build  func(d *daemon, cfg *config.Config) (server, func(*config.Config), error)
	closed error
}

var services = []service{
	{name: "milter", listen: listenMilter, build: buildMilter, closed: milter.ErrServerClosed},
	{name: "policyd", listen: listenPolicyd, build: buildPolicyd, closed: policyd.ErrServerClosed},
	{name: "web", listen: listenTCP(func(c *config.Config) string { return c.Web.Listen }), build: buildWeb, closed: http.ErrServerClosed},
	{name: "metrics", listen: listenTCP(func(c *config.Config) string { return c.Metrics.Listen }), build: buildMetrics, closed: http.ErrServerClosed},
	{name: "zone", listen: listenZone, build: buildZone, closed: zone.ErrServerClosed},
}

// daemon is a running blmilter: the current policy engine, the servers
// that use it and what outlives an engine (store, metrics, health).
type daemon struct {
	configPath      string
	logger          *slog.Logger
	logOut          *logging.Output // nil in tests that log elsewhere
	grace           time.Duration   // a replaced engine is closed this long after a reload
	shutdownTimeout time.Duration

	// onListen and onReload, when set, are told each listening address
	// and the outcome of each SIGHUP (for tests).
	onListen func(name string, addr net.Addr)
	onReload func(err error)
	// depsHook, when set, may change what every engine reports to and
	// asks (tests give it a site list that panics).
	depsHook func(*policy.Deps)

	metrics  *metrics.Metrics
	health   *health.Monitor
	resolver atomic.Pointer[dnsbl.Resolver] // for the health probes, from [dns]
	zone     *zone.Server                   // nil unless [zone] is served
	deps     policy.Deps                    // the same for every engine
	// firstRound bounds how long start waits for the first probe round
	// before the milter and the policy server take connections.
	firstRound time.Duration

	// store is the site's own list, nil while it is not open ([store]
	// required = false lets blmilter start without it and retry).
	store     atomic.Pointer[store.Store]
	storeErr  atomic.Pointer[string] // why it is not open
	storeKick chan struct{}          // SIGHUP: retry opening it now
	// storeWaiters are told when the store opens (see whenStore).
	storeMu      sync.Mutex
	storeWaiters []func(*store.Store)

	engine  atomic.Pointer[policy.Engine]
	web     atomic.Pointer[web.Settings]
	traps   atomic.Pointer[traps.Traps]   // nil: no traps and no delist addresses
	started *config.Config                // what restart-only settings run with
	config  atomic.Pointer[config.Config] // the config whose live settings apply
	live    []func(*config.Config)

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
		firstRound:      5 * time.Second,
		storeKick:       make(chan struct{}, 1),
	}
}

// running is a started server.
type running struct {
	service
	srv server
	ln  net.Listener
}

// run serves until SIGTERM/SIGINT arrives on sigs (SIGHUP reloads) or a
// server fails. It binds the listeners first, so a daemon that cannot bind
// logs only why it did not start.
func (d *daemon) run(cfg *config.Config, sigs <-chan os.Signal) (err error) {
	d.started = cfg
	d.config.Store(cfg)
	running := false
	defer func() {
		if err != nil && !running {
			d.startFailed(err)
		}
	}()
	servers, err := d.listen(cfg)
	if err != nil {
		return err
	}
	closeListeners := func() {
		for _, r := range servers {
			r.ln.Close()
		}
	}
	closeStore, err := d.openStore(cfg)
	if err != nil {
		closeListeners()
		return err
	}
	defer closeStore()
	d.metrics.SetWaitingRequests(d.waitingRequests)
	if err := d.watch(cfg); err != nil {
		closeListeners()
		return err
	}
	if d.depsHook != nil {
		d.depsHook(&d.deps)
	}
	e, err := newEngine(cfg, d.deps)
	if err != nil {
		closeListeners()
		return fmt.Errorf("build policy engine: %w", err)
	}
	d.engine.Store(e)
	d.health.Sync()
	d.web.Store(webSettings(cfg))
	defer d.closeEngines()

	if err := d.build(cfg, servers); err != nil {
		closeListeners()
		return err
	}
	d.checkSockets(cfg, servers)

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
	// No client is judged before the lists had their first probe round:
	// until a list passes one, its hits do not count.
	d.awaitFirstRound()

	errc := make(chan error, len(servers))
	for _, r := range servers {
		go func() {
			if err := r.srv.Serve(r.ln); !errors.Is(err, r.closed) {
				errc <- fmt.Errorf("%s: %w", r.name, err)
				return
			}
			errc <- nil
		}()
	}
	running = true
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
			return d.shutdown(servers)
		case err := <-errc:
			if err == nil {
				continue
			}
			d.logger.Error("server failed; shutting down", slog.Any("err", err))
			d.shutdown(servers)
			return err
		}
	}
}

// startFailed puts why blmilter did not start into the configured log
// file; main prints it on stderr too (and only there when the log is
// stderr, so it is not said twice).
func (d *daemon) startFailed(err error) {
	if d.logOut == nil || d.logOut.File() == "" {
		return
	}
	d.logger.Error("blmilter did not start", slog.Any("err", err))
}

// awaitFirstRound waits (at most firstRound) until every list has had its
// first probe round, and names the lists still not proven: mail flows
// without them until they pass.
func (d *daemon) awaitFirstRound() {
	ctx, cancel := context.WithTimeout(context.Background(), d.firstRound)
	defer cancel()
	start := time.Now()
	if left := d.health.WaitChecked(ctx); len(left) > 0 {
		d.logger.Warn("lists not yet checked: their hits do not count until they pass a probe round; mail flows without them meanwhile",
			slog.Any("lists", left), slog.String("waited", time.Since(start).Round(time.Millisecond).String()))
	}
}

// listen opens the listener of every service the config turns on; on any
// failure the listeners opened so far are closed.
func (d *daemon) listen(cfg *config.Config) ([]running, error) {
	var rs []running
	for _, s := range services {
		ln, err := s.listen(cfg)
		if err != nil {
			for _, r := range rs {
				r.ln.Close()
			}
			return nil, err
		}
		if ln == nil {
			continue
		}
		rs = append(rs, running{service: s, ln: ln})
	}
	if len(rs) == 0 {
		return nil, errors.New("nothing to serve: [milter] listen, [policyd] listen, [web] listen and [zone] listen are all empty")
	}
	return rs, nil
}

// build makes the server of every listener.
func (d *daemon) build(cfg *config.Config, rs []running) error {
	for i := range rs {
		r := &rs[i]
		srv, live, err := r.build(d, cfg)
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		r.srv = srv
		if live != nil {
			d.live = append(d.live, live)
		}
		d.logger.Info("listening", slog.String("server", r.name), slog.String("addr", r.ln.Addr().Network()+":"+r.ln.Addr().String()))
		if d.onListen != nil {
			d.onListen(r.name, r.ln.Addr())
		}
	}
	return nil
}

// checkSockets says loudly when the MTA's group cannot reach a unix
// socket: Postfix then fails open and mail passes unfiltered. A socket
// left in root's group without socket_group gets a warning: no MTA runs
// as root, so only the socket's mode could let it in.
func (d *daemon) checkSockets(cfg *config.Config, rs []running) {
	groups := map[string]string{"milter": cfg.Milter.SocketGroup, "policyd": cfg.Policyd.SocketGroup}
	for _, r := range rs {
		if r.ln.Addr().Network() != "unix" {
			continue
		}
		path, group := r.ln.Addr().String(), groups[r.name]
		if group == "" {
			if rootOnly(path) {
				d.logger.Warn("the socket belongs to root's group and socket_group is not set: an MTA not running as root cannot connect, and fails open; set socket_group to the MTA's group (postfix, smmsp)",
					slog.String("server", r.name), slog.String("socket", path))
			}
			continue
		}
		if err := sockets.Access(path, group, 0); err != nil {
			d.logger.Error("the MTA cannot reach the socket: it will fail open and mail will pass unfiltered; fix the directories' modes or socket_group",
				slog.String("server", r.name), slog.Any("err", err))
		}
	}
}

// rootOnly reports whether the socket at path is in group 0 and closed to
// others.
func rootOnly(path string) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Gid == 0 && fi.Mode().Perm()&0o002 == 0
}

// shutdown stops every server at once, each letting its sessions finish
// within the shutdown timeout.
func (d *daemon) shutdown(servers []running) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.shutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(servers))
	for i, r := range servers {
		wg.Go(func() {
			if err := r.srv.Shutdown(ctx); err != nil {
				errs[i] = fmt.Errorf("%s: shutdown: %w", r.name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (d *daemon) configName() string {
	if d.configPath == "" {
		return "(embedded default)"
	}
	return d.configPath
}

// current returns the engine that judges new sessions; the front ends
// take it as a function so a reload can swap it.
func (d *daemon) current() *policy.Engine { return d.engine.Load() }

// reload builds a new engine from the config file and swaps it in; the
// old engine is closed after the grace period, so checks in progress
// finish on it. The other live settings apply at once; each restart-only
// setting that differs from the running one is logged. On any problem
// the running config stays: reload returns the engine in use and the
// error. Local list files are re-read either way.
func (d *daemon) reload() (*policy.Engine, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	d.retryStoreNow()
	old := d.engine.Load()
	cfg, err := loadConfig(d.configPath)
	if err == nil {
		var e *policy.Engine
		e, err = newEngine(cfg, d.deps)
		if err == nil {
			if rerr := d.setResolver(cfg); rerr != nil {
				e.Close()
				return old, fmt.Errorf("reload %s: %w", d.configName(), rerr)
			}
			if d.started != nil {
				for _, c := range config.RestartChanges(d.started, cfg) {
					d.logger.Warn("setting changed; it takes effect at the next restart",
						slog.String("key", c.Key), slog.String("running", c.Old), slog.String("file", c.New))
				}
			}
			// The new engine started each list in the state the monitor
			// knows (a new or changed list unproven); Sync catches up on a
			// probe that ended meanwhile and probes the new lists now.
			d.engine.Store(e)
			d.health.Sync()
			d.config.Store(cfg)
			d.web.Store(webSettings(cfg))
			d.setTraps(cfg)
			if st := d.store.Load(); st != nil {
				st.SetDecisionLimits(cfg.Store.DecisionMaxAge.Duration, cfg.Store.DecisionMaxRows)
				st.SetRetention(retention(cfg))
				st.SetSelfService(selfService(cfg))
			}
			if d.logOut != nil {
				d.logOut.SetLevel(logLevel(cfg))
			}
			for _, apply := range d.live {
				apply(cfg)
			}
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

// retryStore is told to try opening the store now (a SIGHUP).
func (d *daemon) retryStoreNow() {
	select {
	case d.storeKick <- struct{}{}:
	default:
	}
}

// retire closes a replaced engine after the grace period (at once when
// blmilter is shutting down).
func (d *daemon) retire(e *policy.Engine) {
	if e == nil {
		return
	}
	d.retired.Go(func() {
		t := time.NewTimer(d.grace)
		defer t.Stop()
		select {
		case <-t.C:
		case <-d.quit:
		}
		if err := e.Close(); err != nil {
			d.logger.Warn("closing replaced policy engine", slog.Any("err", err))
		}
	})
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

// watch sets up what every engine reports to: the metrics, the health
// monitor's hit-ratio alarm and the rate-limited list error log. The
// monitor keeps list states by name across reloads.
func (d *daemon) watch(cfg *config.Config) error {
	if err := d.setResolver(cfg); err != nil {
		return err
	}
	hopts := healthOptions(cfg, d.logger)
	hopts.OnChange = func(list string, s policy.ListState, _ string) { d.metrics.SetListState(list, s) }
	hopts.OnRemove = d.metrics.ForgetList
	hopts.OnPanic = func() { d.metrics.Panic("health") }
	d.health = health.New(d.healthTarget, func() health.Resolver { return d.resolver.Load() }, hopts)
	d.deps.Health = d.health
	d.deps.Logger = d.logger
	d.deps.Observers = append(d.deps.Observers, d.metrics, d.health, &logging.ListErrors{Log: d.logger})
	d.deps.OnPanic = func() { d.metrics.Panic("lookup") }
	d.metrics.SetCacheStats(func() cache.Stats {
		if e := d.current(); e != nil {
			return e.CacheStats()
		}
		return cache.Stats{}
	})
	return nil
}

// setResolver builds the health probes' resolver from [dns].
func (d *daemon) setResolver(cfg *config.Config) error {
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

// stats is what /admin/api/stats and `blmilter stats` show.
func (d *daemon) stats() any {
	r := statsReport{Stats: d.metrics.Stats(), Health: d.health.Statuses()}
	if d.zone != nil {
		s := d.zone.Stats()
		r.Zone = &s
	}
	return r
}

// openStore opens the site's own list ([store] path) before the first
// engine is built. Every engine asks it through siteList, across reloads,
// as the store list and the decision recorder.
//
// A store that cannot be opened stops the start, unless [store] required
// = false: then blmilter starts without the site's own list, says so on
// /healthz and blmilter_store_up, and retries in the background until the
// store opens; the engines use it from that moment.
//
// Store changes need no cache invalidation: the engine asks the store on
// every check and caches only DNS answers.
func (d *daemon) openStore(cfg *config.Config) (closeStore func(), err error) {
	d.deps.StoreList = siteList{d}
	d.deps.Recorder = siteList{d}
	d.config.CompareAndSwap(nil, cfg)
	st, err := store.Open(cfg.Store.Path, storeOptions(cfg, d.logger))
	if err != nil && cfg.Store.Required {
		return nil, fmt.Errorf("store %s cannot be opened: %w; blmilter does not start without the site's own list "+
			"(with [store] required = false it starts without it and keeps trying)", cfg.Store.Path, err)
	}
	stop := make(chan struct{})
	var retrying sync.WaitGroup
	if err == nil {
		d.storeOpened(st)
	} else {
		d.storeMissing(err)
		d.logger.Error("store unavailable: running without the site's own list, removal requests and decision records; retrying in the background",
			slog.String("path", cfg.Store.Path), slog.Any("err", err))
		retrying.Go(func() { d.retryStore(cfg.Store.Path, stop) })
	}
	return func() {
		close(stop)
		retrying.Wait()
		if st := d.store.Load(); st != nil {
			if err := st.Close(); err != nil {
				d.logger.Warn("closing store", slog.Any("err", err))
			}
		}
	}, nil
}

// Backoff of the store retries.
const (
	storeRetryMin = time.Second
	storeRetryMax = time.Minute
)

// retryStore tries to open the store until it opens or stop is closed,
// backing off from storeRetryMin to storeRetryMax; a SIGHUP tries at once.
func (d *daemon) retryStore(path string, stop <-chan struct{}) {
	wait := storeRetryMin
	for {
		t := time.NewTimer(wait)
		select {
		case <-stop:
			t.Stop()
			return
		case <-d.storeKick:
			t.Stop()
		case <-t.C:
		}
		st, err := d.tryOpenStore(path)
		if err == nil {
			d.storeOpened(st)
			d.logger.Info("store opened: the site's own list is used from now on", slog.String("path", path))
			return
		}
		d.storeMissing(err)
		wait = min(2*wait, storeRetryMax)
		d.logger.Warn("store still unavailable", slog.String("path", path), slog.Any("err", err), slog.String("retry_in", wait.String()))
	}
}

// tryOpenStore is one attempt to open the store with the live settings; a
// panic in it is a failed attempt.
func (d *daemon) tryOpenStore(path string) (st *store.Store, err error) {
	defer func() {
		if p := recover(); p != nil {
			d.metrics.Panic("store")
			d.logger.Error("opening the store panicked", slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return store.Open(path, storeOptions(d.config.Load(), d.logger))
}

// storeOpened makes st the site's own list of every engine and of the web
// service.
func (d *daemon) storeOpened(st *store.Store) {
	d.storeMu.Lock()
	d.store.Store(st)
	waiters := d.storeWaiters
	d.storeWaiters = nil
	d.storeMu.Unlock()
	for _, f := range waiters {
		f(st)
	}
	d.storeErr.Store(nil)
	d.metrics.SetStoreUp(true)
	if cfg := d.config.Load(); cfg != nil {
		st.SetSelfService(selfService(cfg))
		d.setTraps(cfg)
	}
	if cfg := d.config.Load(); storeUnused(cfg, st.Len()) {
		d.logger.Warn(storeUnusedWarning, slog.String("path", cfg.Store.Path))
	}
}

func (d *daemon) storeMissing(err error) {
	msg := err.Error()
	d.storeErr.Store(&msg)
	d.metrics.SetStoreUp(false)
}

// healthProblem is what /healthz reports: nil when blmilter runs whole.
func (d *daemon) healthProblem() error {
	if d.store.Load() == nil {
		reason := "not open"
		if p := d.storeErr.Load(); p != nil {
			reason = *p
		}
		return fmt.Errorf("store unavailable, the site's own list is not used: %s", reason)
	}
	return nil
}

// siteList is the store as the engines see it: the site's own list and
// the decision recorder while the store is open, nothing while it is not.
type siteList struct{ d *daemon }

func (s siteList) Lookup(ip netip.Addr) (category, reason string, listed bool) {
	if st := s.d.store.Load(); st != nil {
		return st.Lookup(ip)
	}
	return "", "", false
}

// Available tells Inspect whether the list could be asked.
func (s siteList) Available() bool { return s.d.store.Load() != nil }

func (s siteList) RecordDecision(dec policy.Decision) {
	if st := s.d.store.Load(); st != nil {
		st.RecordDecision(dec)
	}
}

// DeferState and NoteDeferral are delist-and-deliver's (policy.Deferrer).
func (s siteList) DeferState(ip netip.Addr) (bool, time.Time) {
	if st := s.d.store.Load(); st != nil {
		return st.DeferState(ip)
	}
	return false, time.Time{}
}

func (s siteList) NoteDeferral(ip netip.Addr, at time.Time) {
	if st := s.d.store.Load(); st != nil {
		st.NoteDeferral(ip, at)
	}
}

// storeUnused reports whether the store is in use (by the lookup service,
// or it holds listings) but no [[list]] uses it to refuse mail.
func storeUnused(cfg *config.Config, listings int) bool {
	return !cfg.StoreListed() && (cfg.Web.Listen != "" || listings > 0)
}

// setTraps builds the spam traps and delist addresses of cfg for the
// front ends; they need the store, and come the moment it opens.
func (d *daemon) setTraps(cfg *config.Config) {
	st := d.store.Load()
	if st == nil {
		d.traps.Store(nil)
		return
	}
	d.traps.Store(traps.New(trapsOptions(cfg, st, d.logger, d.metrics)))
}

// currentTraps returns the traps the front ends ask at each recipient.
func (d *daemon) currentTraps() *traps.Traps { return d.traps.Load() }

// waitingRequests counts the removal requests waiting for an operator, for
// the metrics; none while the store is not open.
func (d *daemon) waitingRequests() (int, time.Time, error) {
	st := d.store.Load()
	if st == nil {
		return 0, time.Time{}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return st.WaitingRequests(ctx)
}

// storeUnusedWarning is said wherever the site's own list is filled but no
// [[list]] uses it to refuse mail.
const storeUnusedWarning = "the site's own list refuses no mail: no [[list]] has store = true, so its listings are shown by the lookup service but not used"

// socketGroup applies a unix socket's group after listen made it with its mode.
func socketGroup(ln net.Listener, group string) error {
	if group == "" || ln.Addr().Network() != "unix" {
		return nil
	}
	if err := sockets.SetGroup(ln.Addr().String(), group); err != nil {
		ln.Close()
		return err
	}
	return nil
}

// prepareSocketDir creates the directory of a unix socket spec (read by
// parse) when it is missing, with the socket's group.
func prepareSocketDir(parse func(string) (string, string, error), spec, group string) error {
	network, path, err := parse(spec)
	if err != nil || network != "unix" {
		return nil // Listen reports a bad spec
	}
	return sockets.PrepareDir(path, group)
}

func listenMilter(cfg *config.Config) (net.Listener, error) {
	m := &cfg.Milter
	if m.Listen == "" {
		return nil, nil
	}
	if err := prepareSocketDir(sockets.ParseMilterSpec, m.Listen, m.SocketGroup); err != nil {
		return nil, fmt.Errorf("milter: %w", err)
	}
	ln, err := milter.Listen(m.Listen, socketMode(m.SocketMode))
	if err != nil {
		return nil, err
	}
	if err := socketGroup(ln, m.SocketGroup); err != nil {
		return nil, fmt.Errorf("milter: %w", err)
	}
	return ln, nil
}

func buildMilter(d *daemon, cfg *config.Config) (server, func(*config.Config), error) {
	opts := milterOptions(cfg, d.logger)
	opts.OnPanic = func() { d.metrics.Panic("milter") }
	opts.Traps = d.currentTraps
	return countedMilter{milter.NewServer(d.current, opts), d.metrics}, nil, nil
}

// countedMilter counts the milter's sessions in the metrics.
type countedMilter struct {
	*milter.Server
	m *metrics.Metrics
}

func (s countedMilter) Serve(ln net.Listener) error { return s.Server.Serve(s.m.CountSessions(ln)) }

func listenPolicyd(cfg *config.Config) (net.Listener, error) {
	p := &cfg.Policyd
	if p.Listen == "" {
		return nil, nil
	}
	if err := prepareSocketDir(sockets.ParsePolicySpec, p.Listen, p.SocketGroup); err != nil {
		return nil, fmt.Errorf("policyd: %w", err)
	}
	ln, err := policyd.Listen(p.Listen, socketMode(p.SocketMode))
	if err != nil {
		return nil, err
	}
	if err := socketGroup(ln, p.SocketGroup); err != nil {
		return nil, fmt.Errorf("policyd: %w", err)
	}
	return ln, nil
}

func buildPolicyd(d *daemon, cfg *config.Config) (server, func(*config.Config), error) {
	opts := policydOptions(cfg, d.logger)
	opts.OnAnswer = d.metrics.PolicydRequest
	opts.Traps = d.currentTraps
	opts.OnPanic = func() { d.metrics.Panic("policyd") }
	s := policyd.NewServer(d.current, opts)
	live := func(cfg *config.Config) {
		s.SetLimits(cfg.Policyd.ReadTimeout.Duration, cfg.Policyd.MaxConnections)
	}
	return s, live, nil
}

// listenTCP listens on the HOST:PORT addr(cfg), if it is set.
func listenTCP(addr func(*config.Config) string) func(*config.Config) (net.Listener, error) {
	return func(cfg *config.Config) (net.Listener, error) {
		a := addr(cfg)
		if a == "" {
			return nil, nil
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", a, err)
		}
		return ln, nil
	}
}

// buildWeb is the IP lookup web service; it serves /metrics too unless
// [metrics] listen has its own address.
func buildWeb(d *daemon, cfg *config.Config) (server, func(*config.Config), error) {
	opts := web.Options{
		Engine:    d.current,
		LateStore: d.store.Load,
		Health:    d.healthProblem,
		OnPanic:   func() { d.metrics.Panic("web") },
		Settings:  d.web.Load,
		Logger:    d.logger,
		Stats:     d.stats,
	}
	if cfg.Metrics.Listen == "" {
		opts.Metrics = d.metrics.Handler()
	}
	w, err := web.New(opts)
	return w, nil, err
}

// buildMetrics serves /metrics on [metrics] listen of its own, with the
// web service's limits: a scraper gets the same timeouts and header bound
// as any client.
func buildMetrics(d *daemon, cfg *config.Config) (server, func(*config.Config), error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metrics.Handler())
	h := web.RecoverPanics(mux, d.logger, func() { d.metrics.Panic("metrics") })
	return web.NewHTTPServer(h, d.logger), nil, nil
}
