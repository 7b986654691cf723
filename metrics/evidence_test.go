package metrics

import (
	"testing"
	"time"

	"github.com/blmilter/blmilter/store"
)

func TestEvidenceMetrics(t *testing.T) {
	m := New("test")
	m.TrapHit(store.TrapOutcome{}, false)                                     // an allowed client: counted, not listed
	m.TrapHit(store.TrapOutcome{Listed: true, Started: true}, true)           // listed
	m.TrapHit(store.TrapOutcome{Listed: true}, true)                          // extended
	m.TrapHit(store.TrapOutcome{Listed: true, Started: true, Level: 2}, true) // relisted
	m.DelistProof(store.ProofResult{Removed: true})
	m.DelistProof(store.ProofResult{Why: store.ProofOtherAddress})
	m.DelistProof(store.ProofResult{Why: store.ProofInvalidToken})
	values := func() map[string]float64 {
		mfs, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, mm := range mf.GetMetric() {
				name := mf.GetName()
				for _, l := range mm.GetLabel() {
					name += "/" + l.GetValue()
				}
				switch {
				case mm.GetCounter() != nil:
					got[name] = mm.GetCounter().GetValue()
				case mm.GetGauge() != nil:
					got[name] = mm.GetGauge().GetValue()
				}
			}
		}
		return got
	}
	got := values()
	for name, want := range map[string]float64{
		"blmilter_trap_hits_total":             4,
		"blmilter_trap_listings_total":         1,
		"blmilter_trap_relistings_total":       1,
		"blmilter_delist_proofs_total/removed": 1,
		"blmilter_delist_proofs_total/refused": 2,
		"blmilter_removal_requests_waiting":    0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}

	// The waiting requests are read at each scrape.
	m.SetWaitingRequests(func() (int, time.Time, error) { return 3, time.Now().Add(-2 * time.Hour), nil })
	got = values()
	if got["blmilter_removal_requests_waiting"] != 3 {
		t.Errorf("waiting: %v", got["blmilter_removal_requests_waiting"])
	}
	if w := got["blmilter_removal_requests_oldest_waiting_seconds"]; w < 7199 || w > 7300 {
		t.Errorf("oldest waiting: %vs, want about 7200", w)
	}
}
