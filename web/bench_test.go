package web

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// BenchmarkStatusPage renders the status page of a listed IP: every list
// asked (Inspect asks the DNS lists afresh, here on loopback), reverse DNS,
// the site's list, and the template.
func BenchmarkStatusPage(b *testing.B) {
	e := newEnv(b, envOpts{lookupRate: 1e9, lookupBurst: 1 << 30})
	h := e.srv.Handler()
	req := httptest.NewRequest("GET", "/ip/192.0.2.1", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d", w.Code)
		}
	}
}

// BenchmarkAPI is the JSON API under concurrent clients; it reports
// requests per second.
func BenchmarkAPI(b *testing.B) {
	e := newEnv(b, envOpts{lookupRate: 1e9, lookupBurst: 1 << 30})
	h := e.srv.Handler()
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		req := httptest.NewRequest("GET", "/api/v1/ip/192.0.2.1", nil)
		for pb.Next() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				b.Errorf("status %d", w.Code)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}
