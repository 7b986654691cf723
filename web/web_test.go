package web

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/blmilter/blmilter/policy"
)

func TestRoutes(t *testing.T) {
	e := newEnv(t, envOpts{adminToken: "s3cret"})
	tests := []struct {
		name, path string
		status     int
		contains   []string
		ctype      string
	}{
		{"index", "/", 200, []string{"Is an IP address listed?", `action="/ip"`}, "text/html"},
		{"status listed", "/ip/192.0.2.1", 200, []string{"Test ZEN", "Compromised machine (zombie)", "127.0.0.4", "Compromised host, see https://lists.example/why", "550 5.7.1"}, "text/html"},
		{"status clean", "/ip/192.0.2.99", 200, []string{"Not listed", "mail.example.org", "resolves back to this address"}, "text/html"},
		{"api", "/api/v1/ip/192.0.2.1", 200, []string{`"status": "listed"`}, "application/json"},
		{"help", "/help", 200, []string{`href="/help/zombie"`, `href="/help/open-proxy"`, `href="/help/spam-source"`, `href="/help/dynamic"`, `href="/help/local"`}, "text/html"},
		{"help zombie", "/help/zombie", 200, []string{"malware scan", "botnet"}, "text/html"},
		{"help open-proxy", "/help/open-proxy", 200, []string{"without authentication", "any port"}, "text/html"},
		{"help spam-source", "/help/spam-source", 200, []string{"spam traps"}, "text/html"},
		{"help dynamic", "/help/dynamic", 200, []string{"provider&#39;s mail relay", "PTR record"}, "text/html"},
		{"help local", "/help/local", 200, []string{"removal", "counts toward"}, "text/html"},
		{"help unknown", "/help/nonsense", 404, []string{"No such category"}, "text/html"},
		{"healthz", "/healthz", 200, []string{"ok"}, "text/plain"},
		{"css", "/static/style.css", 200, []string{"@media"}, "text/css"},
		{"confirm page", "/confirm/abcdefABCDEF0123456789-_", 200, []string{"Confirm removal request", `method="post"`}, "text/html"},
		{"not found", "/nope", 404, []string{"Page not found"}, "text/html"},
		{"api not found", "/api/v2/x", 404, []string{`"error": "not_found"`}, "application/json"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.get(tc.path)
			if resp.StatusCode != tc.status {
				t.Fatalf("GET %s: status %d, want %d\n%s", tc.path, resp.StatusCode, tc.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tc.ctype) {
				t.Errorf("Content-Type %q, want %s", ct, tc.ctype)
			}
			for _, c := range tc.contains {
				if !strings.Contains(body, c) {
					t.Errorf("GET %s: body lacks %q", tc.path, c)
				}
			}
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
				t.Errorf("CSP %q", csp)
			}
			if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("no nosniff")
			}
		})
	}
}

func TestNoExternalResources(t *testing.T) {
	e := newEnv(t, envOpts{})
	ext := regexp.MustCompile(`(?i)(src|href)="(https?:)?//`)
	for _, p := range []string{"/", "/ip/192.0.2.1", "/ip/192.0.2.50", "/help", "/help/dynamic"} {
		_, body := e.get(p)
		if m := ext.FindString(body); m != "" {
			t.Errorf("%s loads an external resource: %s", p, m)
		}
		if !strings.Contains(body, `name="viewport"`) {
			t.Errorf("%s has no viewport meta", p)
		}
	}
}

func TestLookupFormRedirects(t *testing.T) {
	e := newEnv(t, envOpts{})
	tests := []struct{ in, loc string }{
		{"192.0.2.1", "/ip/192.0.2.1"},
		{" 192.0.2.1 ", "/ip/192.0.2.1"},
		{"2001:DB8::25", "/ip/2001:db8::25"},
		{"::ffff:192.0.2.1", "/ip/192.0.2.1"},
		{"[2001:db8::1]", "/ip/2001:db8::1"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			resp, _ := e.get("/ip?ip=" + url.QueryEscape(tc.in))
			if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != tc.loc {
				t.Fatalf("status %d location %q, want 303 %q", resp.StatusCode, resp.Header.Get("Location"), tc.loc)
			}
		})
	}
}

func TestBadIP(t *testing.T) {
	e := newEnv(t, envOpts{})
	tests := []struct{ name, path, why string }{
		{"garbage", "/ip/1.2.3.4.5", "not an IPv4 address"},
		{"letters", "/ip/not-an-ip", "host name"},
		{"hostname", "/ip/mail.example.org", "looks like a host name"},
		{"octet too big", "/ip/192.0.2.256", "not an IPv4 address"},
		{"cidr form", "/ip?ip=192.0.2.0%2F24", "network (CIDR)"},
		{"zone", "/ip/fe80::1%25eth0", "zone"},
		{"empty form", "/ip?ip=", "no IP address"},
		{"too long", "/ip/" + strings.Repeat("1", 100), "too long"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.get(tc.path)
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400", resp.StatusCode)
			}
			if !strings.Contains(body, tc.why) {
				t.Errorf("page does not say why (%q):\n%s", tc.why, body)
			}
		})
	}
	t.Run("api", func(t *testing.T) {
		resp, body := e.get("/api/v1/ip/999.1.1.1")
		var out map[string]string
		if resp.StatusCode != 400 || json.Unmarshal([]byte(body), &out) != nil || out["error"] != "invalid_ip" || out["message"] == "" {
			t.Fatalf("status %d body %s", resp.StatusCode, body)
		}
	})
}

// Without a store the pages work; removal and admin are off.
func TestNoStore(t *testing.T) {
	e := newEnv(t, envOpts{noStore: true, adminToken: "tok"})
	if resp, body := e.get("/ip/192.0.2.1"); resp.StatusCode != 200 || !strings.Contains(body, "Test ZEN") || strings.Contains(body, "Ask for removal") {
		t.Errorf("status page without store: %d", resp.StatusCode)
	}
	if resp, _ := e.do("POST", "/ip/192.0.2.50/removal", "", nil); resp.StatusCode != 404 {
		t.Errorf("removal without store: %d, want 404", resp.StatusCode)
	}
	if resp, _ := e.do("GET", "/admin/api/listings", "", map[string]string{"Authorization": "Bearer tok"}); resp.StatusCode != 404 {
		t.Errorf("admin without store: %d, want 404", resp.StatusCode)
	}
	if resp, _ := e.get("/confirm/abc"); resp.StatusCode != 404 {
		t.Errorf("confirm without store: %d, want 404", resp.StatusCode)
	}
}

func TestHealthz(t *testing.T) {
	e := newEnv(t, envOpts{})
	if resp, body := e.get("/healthz"); resp.StatusCode != 200 || body != "ok\n" {
		t.Errorf("healthz: %d %q", resp.StatusCode, body)
	}
	srv, err := New(Options{Engine: func() *policy.Engine { return nil }, Settings: func() *Settings { return e.cfg }})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	srv.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/healthz", nil))
	if w.Code != 503 {
		t.Errorf("healthz without engine: %d, want 503", w.Code)
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without engine succeeded")
	}
}

func TestMetricsMount(t *testing.T) {
	e := newEnv(t, envOpts{})
	srv, err := New(Options{Engine: e.srv.engine, Settings: e.srv.config, Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("blmilter_up 1\n"))
	})})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	srv.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if w.Code != 200 || w.Body.String() != "blmilter_up 1\n" {
		t.Errorf("metrics: %d %q", w.Code, w.Body.String())
	}
	w = httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if w.Code != 404 {
		t.Errorf("metrics without handler: %d, want 404", w.Code)
	}
}
