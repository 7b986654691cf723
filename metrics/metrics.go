// Package metrics exports blmilter's Prometheus metrics: checks and their
// actions, each list's results, durations and health, the cache, the front
// ends and config reloads. Label values are bounded: list names come from the
// config and results and actions are fixed words; an IP is never a label.
package metrics

import (
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/blmilter/blmilter/cache"
	"github.com/blmilter/blmilter/policy"
)

// Metrics holds every blmilter series on its own registry.
type Metrics struct {
	Registry *prometheus.Registry

	checks         *prometheus.CounterVec
	checkDuration  prometheus.Histogram
	listResults    *prometheus.CounterVec
	listDuration   *prometheus.HistogramVec
	listHealthy    *prometheus.GaugeVec
	wouldReject    *prometheus.CounterVec
	wouldRejectOne *prometheus.CounterVec
	allowOverrides *prometheus.CounterVec
	milterSessions prometheus.Gauge
	policydReqs    *prometheus.CounterVec
	reloads        *prometheus.CounterVec
	panics         *prometheus.CounterVec
	listState      *prometheus.GaugeVec
	storeUp        prometheus.Gauge
	evidence       *evidence

	mu        sync.RWMutex
	cacheStat func() cache.Stats

	// per-list counters resolved once, so the check path does no label lookups
	listMu   sync.RWMutex
	listCtrs map[string]*listCounters
}

type listCounters struct {
	listed, clean, errored, degraded, unproven prometheus.Counter
	duration                                   prometheus.Observer
	wouldReject, wouldRejectOne                prometheus.Counter
	allowOverride                              prometheus.Counter
}

// New builds the metrics on a fresh registry, with Go runtime, process and
// build-info collectors.
func New(version string) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry(), listCtrs: map[string]*listCounters{}}
	f := func(c prometheus.Collector) { m.Registry.MustRegister(c) }
	m.checks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "blmilter_checks_total", Help: "Client checks by the action decided.",
	}, []string{"action"})
	m.checkDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "blmilter_check_duration_seconds", Help: "Time to decide on one client, cache hits included.",
		Buckets: []float64{.0001, .001, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5},
	})
	m.listResults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "blmilter_list_results_total", Help: "Answers from each list (cache misses only): listed, clean, error; degraded or unproven (not yet checked) for every answer of a list whose answers do not count.",
	}, []string{"list", "result"})
	m.listDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "blmilter_list_duration_seconds", Help: "Time one list took to answer.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5},
	}, []string{"list"})
	m.listHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "blmilter_list_healthy", Help: "1 when the list passes its health checks, 0 when it is degraded or not yet checked (unproven).",
	}, []string{"list"})
	m.listState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "blmilter_list_state", Help: "1 for the list's health state now (healthy, degraded or unproven: not yet checked), 0 for the others.",
	}, []string{"list", "state"})
	m.wouldReject = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "blmilter_list_would_reject_total", Help: "Checks a list would have refused on its own weight, dry-run and degraded lists included.",
	}, []string{"list"})
	m.wouldRejectOne = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "blmilter_list_would_reject_alone_total", Help: "Of those, checks no other block list listed.",
	}, []string{"list"})
	m.allowOverrides = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "blmilter_allow_overrides_total", Help: "Checks an allow list took below the threshold.",
	}, []string{"list"})
	m.milterSessions = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "blmilter_milter_sessions_in_flight", Help: "Milter connections open now.",
	})
	m.policydReqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "blmilter_policyd_requests_total", Help: "Policy delegation requests by the action answered.",
	}, []string{"action"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "blmilter_config_reloads_total", Help: "Config reloads by result: ok or error.",
	}, []string{"result"})
	m.panics = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "blmilter_panics_total", Help: "Panics recovered while serving a client: that client was let go, the process lived on.",
	}, []string{"server"})
	m.storeUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "blmilter_store_up", Help: "1 when the store (the site's own list) is open, 0 while blmilter runs without it.",
	})
	for _, c := range []prometheus.Collector{m.checks, m.checkDuration, m.listResults, m.listDuration,
		m.listHealthy, m.wouldReject, m.wouldRejectOne, m.allowOverrides, m.milterSessions, m.policydReqs, m.reloads,
		m.panics, m.listState, m.storeUp} {
		f(c)
	}
	for _, a := range []policy.Action{policy.ActionAccept, policy.ActionReject, policy.ActionTempfail, policy.ActionTag, policy.ActionLog} {
		m.checks.WithLabelValues(string(a))
	}
	for _, r := range []string{"ok", "error"} {
		m.reloads.WithLabelValues(r)
	}
	for _, s := range PanicServers {
		m.panics.WithLabelValues(s)
	}
	m.evidence = newEvidence(f)
	f(newCacheCollector(m))
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "blmilter_build_info", Help: "Always 1; the version label says which build runs.",
		ConstLabels: prometheus.Labels{"version": version},
	}, func() float64 { return 1 }))
	return m
}

// SetCacheStats tells the metrics where to read the cache counters (the
// current engine's, which changes on reload).
func (m *Metrics) SetCacheStats(f func() cache.Stats) {
	m.mu.Lock()
	m.cacheStat = f
	m.mu.Unlock()
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

func (m *Metrics) list(name string) *listCounters {
	m.listMu.RLock()
	c := m.listCtrs[name]
	m.listMu.RUnlock()
	if c != nil {
		return c
	}
	m.listMu.Lock()
	defer m.listMu.Unlock()
	if c = m.listCtrs[name]; c != nil {
		return c
	}
	c = &listCounters{
		listed:         m.listResults.WithLabelValues(name, "listed"),
		clean:          m.listResults.WithLabelValues(name, "clean"),
		errored:        m.listResults.WithLabelValues(name, "error"),
		degraded:       m.listResults.WithLabelValues(name, "degraded"),
		unproven:       m.listResults.WithLabelValues(name, "unproven"),
		duration:       m.listDuration.WithLabelValues(name),
		wouldReject:    m.wouldReject.WithLabelValues(name),
		wouldRejectOne: m.wouldRejectOne.WithLabelValues(name),
		allowOverride:  m.allowOverrides.WithLabelValues(name),
	}
	m.listCtrs[name] = c
	return c
}

// ObserveAnswer counts one answer of one DNS list (policy.Observer). The
// answers of a degraded list count as "degraded", and those of a list not
// yet proven by a probe as "unproven", whatever they said.
func (m *Metrics) ObserveAnswer(list, result string, state policy.ListState, took time.Duration) {
	c := m.list(list)
	switch {
	case state == policy.ListDegraded:
		c.degraded.Inc()
	case state == policy.ListUnproven:
		c.unproven.Inc()
	case result == "listed":
		c.listed.Inc()
	case result == "clean":
		c.clean.Inc()
	default:
		c.errored.Inc()
	}
	c.duration.Observe(took.Seconds())
}

// ObserveCheck counts one decision and what each list would have done
// (policy.Observer).
func (m *Metrics) ObserveCheck(v policy.Verdict) {
	m.checks.WithLabelValues(string(v.Action)).Inc()
	m.checkDuration.Observe(v.Duration.Seconds())
	if len(v.Hits) == 0 || v.Threshold <= 0 {
		return
	}
	var block, allow float64
	blockLists := 0
	for _, h := range v.Hits {
		if h.ListWeight > 0 {
			blockLists++
		}
	}
	for _, h := range v.Hits {
		if h.ListWeight >= v.Threshold {
			c := m.list(h.List)
			c.wouldReject.Inc()
			if blockLists == 1 {
				c.wouldRejectOne.Inc()
			}
		}
		if h.Weight > 0 {
			block += h.Weight
		} else {
			allow += h.Weight
		}
	}
	if block >= v.Threshold && block+allow < v.Threshold {
		for _, h := range v.Hits {
			if h.Weight < 0 {
				m.list(h.List).allowOverride.Inc()
			}
		}
	}
}

// SetListHealthy exports a list's health state.
func (m *Metrics) SetListHealthy(list string, healthy bool) {
	v := 0.0
	if healthy {
		v = 1
	}
	m.listHealthy.WithLabelValues(list).Set(v)
}

// SetListState exports a list's health state: blmilter_list_healthy, and
// blmilter_list_state with 1 for the state it is in.
func (m *Metrics) SetListState(list string, state policy.ListState) {
	m.SetListHealthy(list, state == policy.ListHealthy)
	for _, s := range []policy.ListState{policy.ListHealthy, policy.ListDegraded, policy.ListUnproven} {
		v := 0.0
		if s == state {
			v = 1
		}
		m.listState.WithLabelValues(list, s.String()).Set(v)
	}
}

// ForgetList drops the health series of a list no longer configured, so
// an alert on a renamed list does not fire forever.
func (m *Metrics) ForgetList(list string) {
	m.listHealthy.DeleteLabelValues(list)
	m.listState.DeletePartialMatch(prometheus.Labels{"list": list})
}

// SetStoreUp exports whether the store is open.
func (m *Metrics) SetStoreUp(up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.storeUp.Set(v)
}

// PanicServers are the servers blmilter_panics_total counts, each present
// from the start with 0; "lookup" is the engine's DNS work (a check's
// lookups, a background fetch of listing texts).
var PanicServers = []string{"milter", "policyd", "web", "metrics", "health", "store", "zone", "lookup"}

// Panic counts one panic recovered in a goroutine serving a client of
// server (one of PanicServers).
func (m *Metrics) Panic(server string) { m.panics.WithLabelValues(server).Inc() }

// PolicydRequest counts one policy delegation answer by its action word
// (DUNNO, REJECT for 5xx, DEFER for 4xx, PREPEND).
func (m *Metrics) PolicydRequest(action string) { m.policydReqs.WithLabelValues(action).Inc() }

// ConfigReload counts one reload; ok reports whether the new config took.
func (m *Metrics) ConfigReload(ok bool) {
	if ok {
		m.reloads.WithLabelValues("ok").Inc()
	} else {
		m.reloads.WithLabelValues("error").Inc()
	}
}

// CountSessions wraps a milter listener so blmilter_milter_sessions_in_flight
// follows the connections it accepts.
func (m *Metrics) CountSessions(ln net.Listener) net.Listener {
	return &countingListener{Listener: ln, g: m.milterSessions}
}

type countingListener struct {
	net.Listener
	g prometheus.Gauge
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.g.Inc()
	return &countingConn{Conn: c, g: l.g}, nil
}

type countingConn struct {
	net.Conn
	g    prometheus.Gauge
	once sync.Once
}

func (c *countingConn) Close() error {
	c.once.Do(c.g.Dec)
	return c.Conn.Close()
}

// cacheCollector reads the cache counters at scrape time.
type cacheCollector struct {
	m                                *Metrics
	hits, misses, evictions, entries *prometheus.Desc
}

func newCacheCollector(m *Metrics) *cacheCollector {
	return &cacheCollector{
		m:         m,
		hits:      prometheus.NewDesc("blmilter_cache_hits_total", "Checks answered from the cache.", nil, nil),
		misses:    prometheus.NewDesc("blmilter_cache_misses_total", "Checks that had to ask the lists.", nil, nil),
		evictions: prometheus.NewDesc("blmilter_cache_evictions_total", "Entries pushed out of the cache by its size bound.", nil, nil),
		entries:   prometheus.NewDesc("blmilter_cache_entries", "Entries in the cache now.", nil, nil),
	}
}

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.hits
	ch <- c.misses
	ch <- c.evictions
	ch <- c.entries
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.RLock()
	f := c.m.cacheStat
	c.m.mu.RUnlock()
	var s cache.Stats
	if f != nil {
		s = f()
	}
	ch <- prometheus.MustNewConstMetric(c.hits, prometheus.CounterValue, float64(s.Hits))
	ch <- prometheus.MustNewConstMetric(c.misses, prometheus.CounterValue, float64(s.Misses))
	ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Entries))
}
