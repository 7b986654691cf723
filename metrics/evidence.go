package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/blmilter/blmilter/store"
)

// evidence are the series of the site's own list as it fills and empties:
// spam trap hits and the listings they make, proofs of control, and the
// removal requests waiting for an operator.
type evidence struct {
	trapHits       prometheus.Counter
	trapListings   prometheus.Counter
	trapRelistings prometheus.Counter
	proofs         *prometheus.CounterVec

	mu      sync.RWMutex
	waiting func() (n int, oldest time.Time, err error)
}

func newEvidence(register func(prometheus.Collector)) *evidence {
	e := &evidence{
		trapHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "blmilter_trap_hits_total", Help: "Mail to spam trap addresses, listed or not (allowed and authenticated clients are never listed).",
		}),
		trapListings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "blmilter_trap_listings_total", Help: "Clients listed by spam trap hits for the first time (or the first time the history remembers).",
		}),
		trapRelistings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "blmilter_trap_relistings_total", Help: "Clients listed again by spam trap hits after an earlier listing ended, each time for longer.",
		}),
		proofs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blmilter_delist_proofs_total", Help: "Mails to delist addresses by result: removed, or refused (wrong token, another address, beyond self-service).",
		}, []string{"result"}),
	}
	for _, r := range []string{"removed", "refused"} {
		e.proofs.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{e.trapHits, e.trapListings, e.trapRelistings, e.proofs} {
		register(c)
	}
	register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "blmilter_removal_requests_waiting", Help: "Removal requests waiting for an operator.",
	}, func() float64 { n, _ := e.waitingNow(); return float64(n) }))
	register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "blmilter_removal_requests_oldest_waiting_seconds", Help: "How long the oldest removal request has waited for an operator; 0 when none waits.",
	}, func() float64 {
		_, oldest := e.waitingNow()
		if oldest.IsZero() {
			return 0
		}
		return time.Since(oldest).Seconds()
	}))
	return e
}

func (e *evidence) waitingNow() (int, time.Time) {
	e.mu.RLock()
	f := e.waiting
	e.mu.RUnlock()
	if f == nil {
		return 0, time.Time{}
	}
	n, oldest, err := f()
	if err != nil {
		return 0, time.Time{}
	}
	return n, oldest
}

// SetWaitingRequests tells the metrics how to count the removal requests
// waiting for an operator (the store's WaitingRequests); it is asked at
// each scrape.
func (m *Metrics) SetWaitingRequests(f func() (n int, oldest time.Time, err error)) {
	m.evidence.mu.Lock()
	m.evidence.waiting = f
	m.evidence.mu.Unlock()
}

// TrapHit counts a trap hit and the listing it made (traps.Observer).
func (m *Metrics) TrapHit(o store.TrapOutcome, listable bool) {
	m.evidence.trapHits.Inc()
	if !listable || !o.Started {
		return
	}
	if o.Level > 0 {
		m.evidence.trapRelistings.Inc()
	} else {
		m.evidence.trapListings.Inc()
	}
}

// DelistProof counts a proof of control (traps.Observer).
func (m *Metrics) DelistProof(r store.ProofResult) {
	if r.Removed {
		m.evidence.proofs.WithLabelValues("removed").Inc()
	} else {
		m.evidence.proofs.WithLabelValues("refused").Inc()
	}
}
