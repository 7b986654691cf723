package web

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

// explodingList is a site's list with a bug: asked about one address, it
// panics, as a corrupt snapshot or a nil map would.
type explodingList struct{ bomb netip.Addr }

func (l explodingList) Lookup(ip netip.Addr) (string, string, bool) {
	if ip == l.bomb {
		panic("site list bug")
	}
	return "", "", false
}

// A handler that panics answers that request 500; the service goes on,
// the panic is logged once with its stack and counted.
func TestHandlerPanicIsOneRequest(t *testing.T) {
	bomb := netip.MustParseAddr("198.18.66.6")
	eng := testengine.New(t, nil, `
[[list]]
name = "Site list"
store = true
weight = 5
`, policy.Deps{StoreList: explodingList{bomb}})
	logs := &testkit.Buffer{}
	var panics atomic.Int64
	srv, err := New(Options{
		Engine: func() *policy.Engine { return eng },
		Settings: func() *Settings {
			return &Settings{PublicURL: "http://lookup.test", LookupRate: 1000, LookupBurst: 1000}
		},
		Logger:  slog.New(slog.NewTextHandler(logs, nil)),
		OnPanic: func() { panics.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	base := serveLoopback(t, srv)

	for i := range 3 {
		code, body := get(t, base+"/api/v1/ip/"+bomb.String())
		if code != http.StatusInternalServerError || strings.Contains(body, "site list bug") {
			t.Fatalf("request %d for the address that panics: %d %q, want a plain 500", i, code, body)
		}
	}
	if code, _ := get(t, base+"/ip/198.18.1.1"); code != http.StatusOK {
		t.Errorf("another address after the panics: %d, want 200", code)
	}
	if panics.Load() != 3 {
		t.Errorf("panics counted: %d, want 3", panics.Load())
	}
	if n := strings.Count(logs.String(), "request handler panicked"); n != 3 {
		t.Errorf("%d panic lines logged, want 3 (one each):\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "explodingList.Lookup") {
		t.Errorf("the stack is not in the log:\n%s", logs.String())
	}
}

// /healthz says 503 with the reason the daemon gives (a missing store).
func TestHealthzReportsProblem(t *testing.T) {
	eng := testengine.New(t, nil, "[[list]]\nname = \"Site list\"\nstore = true\n", policy.Deps{})
	var problem atomic.Pointer[error]
	srv, err := New(Options{
		Engine:    func() *policy.Engine { return eng },
		Settings:  func() *Settings { return &Settings{PublicURL: "http://lookup.test", LookupRate: 1, LookupBurst: 1} },
		LateStore: func() *store.Store { return nil },
		Health: func() error {
			if p := problem.Load(); p != nil {
				return *p
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	base := serveLoopback(t, srv)
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("healthy: %d %q", code, body)
	}
	e := errors.New("store unavailable: database is locked")
	problem.Store(&e)
	if code, body := get(t, base+"/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "database is locked") {
		t.Errorf("with a problem: %d %q, want 503 with the reason", code, body)
	}
	// The store's endpoints say it is not there instead of panicking.
	if code, _ := get(t, base+"/confirm/"+strings.Repeat("a", 43)); code == http.StatusInternalServerError {
		t.Error("confirm page without the store: 500")
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
