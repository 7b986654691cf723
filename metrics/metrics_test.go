package metrics

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
)

// scrape fetches /metrics and returns the value of one series, -1 when absent.
func scrape(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := httptestClient.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var httptestClient = httptestClientFor()

func TestSeriesMove(t *testing.T) {
	s := dnstest.Start(t)
	listed := netip.MustParseAddr("192.0.2.7")
	s.Set(dnsbl.QueryName(listed, "bl.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
	s.Set(dnsbl.QueryName(listed, "shadow.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	m := New("test")
	e := testengine.New(t, s, `
[[list]]
name = "Test BL"
zone = "bl.test"
weight = 3
codes = { "127.0.0.4" = "zombie" }
[[list]]
name = "Shadow BL"
zone = "shadow.test"
weight = 3
dry_run = true
`, policy.Deps{Observers: []policy.Observer{m}})
	m.SetCacheStats(e.CacheStats)
	m.SetListHealthy("Test BL", true)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	ctx := context.Background()
	e.Check(ctx, listed)                              // miss, reject
	e.Check(ctx, listed)                              // hit, reject
	e.Check(ctx, netip.MustParseAddr("192.0.2.8"))    // miss, accept
	e.Check(ctx, netip.MustParseAddr("198.51.100.1")) // miss, accept

	want := map[string]float64{
		`blmilter_checks_total{action="reject"}`:                        2,
		`blmilter_checks_total{action="accept"}`:                        2,
		`blmilter_list_results_total{list="Test BL",result="listed"}`:   1,
		`blmilter_list_results_total{list="Test BL",result="clean"}`:    2,
		`blmilter_list_results_total{list="Shadow BL",result="listed"}`: 1,
		`blmilter_list_duration_seconds_count{list="Test BL"}`:          3,
		`blmilter_check_duration_seconds_count`:                         4,
		`blmilter_cache_hits_total`:                                     1,
		`blmilter_cache_misses_total`:                                   3,
		`blmilter_cache_entries`:                                        3,
		`blmilter_list_healthy{list="Test BL"}`:                         1,
		// Both lists would have rejected 192.0.2.7 on their own, twice
		// (cached checks count too); neither alone.
		`blmilter_list_would_reject_total{list="Shadow BL"}`:       2,
		`blmilter_list_would_reject_alone_total{list="Shadow BL"}`: 0,
		`blmilter_build_info{version="test"}`:                      1,
	}
	for series, v := range want {
		if got := scrape(t, srv.URL, series); got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}

	m.SetListHealthy("Test BL", false)
	m.ConfigReload(false)
	m.PolicydRequest("DUNNO")
	if got := scrape(t, srv.URL, `blmilter_panics_total{server="milter"}`); got != 0 {
		t.Errorf("blmilter_panics_total{server=\"milter\"} = %v before any panic, want 0 (present)", got)
	}
	m.Panic("milter")
	for series, v := range map[string]float64{
		`blmilter_panics_total{server="milter"}`:          1,
		`blmilter_list_healthy{list="Test BL"}`:           0,
		`blmilter_config_reloads_total{result="error"}`:   1,
		`blmilter_config_reloads_total{result="ok"}`:      0,
		`blmilter_policyd_requests_total{action="DUNNO"}`: 1,
		`blmilter_milter_sessions_in_flight`:              0,
	} {
		if got := scrape(t, srv.URL, series); got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
}

func TestSessionsInFlight(t *testing.T) {
	m := New("test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := m.CountSessions(ln)
	defer cl.Close()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	accepted := make(chan net.Conn)
	go func() {
		c, err := cl.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := <-accepted
	if got := scrape(t, srv.URL, "blmilter_milter_sessions_in_flight"); got != 1 {
		t.Fatalf("in flight with one session = %v", got)
	}
	sc.Close()
	sc.Close() // closing twice must not count twice
	if got := scrape(t, srv.URL, "blmilter_milter_sessions_in_flight"); got != 0 {
		t.Fatalf("in flight after close = %v", got)
	}
}

// Label values are bounded: never an IP.
func TestNoIPLabels(t *testing.T) {
	m := New("test")
	m.ObserveCheck(policy.Verdict{IP: netip.MustParseAddr("192.0.2.1"), Action: policy.ActionReject, Threshold: 3,
		Hits: []policy.Hit{{List: "L", Weight: 3, ListWeight: 3}}})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := httptestClient.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(body), "192.0.2.1") {
		t.Fatal("an IP appears in the metrics")
	}
}

func httptestClientFor() *http.Client { return &http.Client{} }

// The stats summary reads the same counters /metrics shows.
func TestStatsSummary(t *testing.T) {
	m := New("test")
	m.SetListHealthy("Shadow BL", false)
	m.ObserveAnswer("Shadow BL", "listed", policy.ListHealthy, time.Millisecond)
	m.ObserveAnswer("Shadow BL", "clean", policy.ListDegraded, time.Millisecond)
	m.ObserveAnswer("Shadow BL", "listed", policy.ListUnproven, time.Millisecond)
	m.ObserveAnswer("Shadow BL", "error", policy.ListUnproven, time.Millisecond)
	m.ObserveAnswer("Allow", "listed", policy.ListHealthy, time.Millisecond)
	// Shadow BL alone would have refused; the allow list took the score
	// below the threshold.
	m.ObserveCheck(policy.Verdict{Action: policy.ActionAccept, Threshold: 3, Hits: []policy.Hit{
		{List: "Shadow BL", Weight: 3, ListWeight: 3},
		{List: "Allow", Weight: -5, ListWeight: -5},
	}})
	st := m.Stats()
	if st.Checks["accept"] != 1 || st.Checks["reject"] != 0 {
		t.Errorf("checks %v", st.Checks)
	}
	if len(st.Lists) != 2 {
		t.Fatalf("lists %+v", st.Lists)
	}
	allow, shadow := st.Lists[0], st.Lists[1]
	if shadow.List != "Shadow BL" || shadow.Listed != 1 || shadow.Degraded != 1 || shadow.Unproven != 2 || shadow.Errors != 0 || shadow.WouldReject != 1 || shadow.Alone != 1 ||
		shadow.Healthy == nil || *shadow.Healthy {
		t.Errorf("Shadow BL %+v", shadow)
	}
	if allow.List != "Allow" || allow.Overridden != 1 || allow.Healthy != nil {
		t.Errorf("Allow %+v", allow)
	}
}

// A list's state is one gauge per state with 1 for the current one; a list
// no longer configured loses its state series; the store and the panics
// are there from the start.
func TestStateSeries(t *testing.T) {
	m := New("test")
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	for _, s := range PanicServers {
		if got := scrape(t, srv.URL, `blmilter_panics_total{server="`+s+`"}`); got != 0 {
			t.Errorf("panics of %s before any: %v, want 0 (present)", s, got)
		}
	}
	m.Panic("policyd")
	if got := scrape(t, srv.URL, `blmilter_panics_total{server="policyd"}`); got != 1 {
		t.Errorf("policyd panics: %v, want 1", got)
	}
	m.SetStoreUp(false)
	if got := scrape(t, srv.URL, "blmilter_store_up"); got != 0 {
		t.Errorf("blmilter_store_up = %v, want 0", got)
	}
	m.SetStoreUp(true)
	if got := scrape(t, srv.URL, "blmilter_store_up"); got != 1 {
		t.Errorf("blmilter_store_up = %v, want 1", got)
	}
	for _, tc := range []struct {
		state   policy.ListState
		healthy float64
	}{{policy.ListUnproven, 0}, {policy.ListHealthy, 1}, {policy.ListDegraded, 0}} {
		m.SetListState("BL", tc.state)
		if got := scrape(t, srv.URL, `blmilter_list_healthy{list="BL"}`); got != tc.healthy {
			t.Errorf("%s: blmilter_list_healthy = %v, want %v", tc.state, got, tc.healthy)
		}
		for _, s := range []policy.ListState{policy.ListHealthy, policy.ListDegraded, policy.ListUnproven} {
			want := 0.0
			if s == tc.state {
				want = 1
			}
			if got := scrape(t, srv.URL, `blmilter_list_state{list="BL",state="`+s.String()+`"}`); got != want {
				t.Errorf("%s: state %s = %v, want %v", tc.state, s, got, want)
			}
		}
	}
	m.ForgetList("BL")
	if got := scrape(t, srv.URL, `blmilter_list_healthy{list="BL"}`); got != -1 {
		t.Errorf("a forgotten list's blmilter_list_healthy is still there: %v", got)
	}
	if got := scrape(t, srv.URL, `blmilter_list_state{list="BL",state="degraded"}`); got != -1 {
		t.Errorf("a forgotten list's blmilter_list_state is still there: %v", got)
	}
}
