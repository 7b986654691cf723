package web

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

const xss = `<script>alert(1)</script>"'><img src=x onerror=alert(2)>`

// No input comes back unescaped, wherever it is put.
func TestXSS(t *testing.T) {
	e := newEnv(t, envOpts{smtp: "127.0.0.1:1"})
	_, page := e.get("/ip/192.0.2.50")
	csrfTok := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if csrfTok == nil {
		t.Fatal("no csrf token on page")
	}
	tests := []struct {
		name, method, path, body string
	}{
		{"ip path", "GET", "/ip/" + url.PathEscape(xss), ""},
		{"ip form", "GET", "/ip?ip=" + url.QueryEscape(xss), ""},
		{"ref", "GET", "/ip/192.0.2.1?ref=" + url.QueryEscape(xss), ""},
		{"ref json", "GET", "/api/v1/ip/192.0.2.1?ref=" + url.QueryEscape(xss), ""},
		{"api ip", "GET", "/api/v1/ip/" + url.PathEscape(xss), ""},
		{"help category", "GET", "/help/" + url.PathEscape(xss), ""},
		{"confirm token", "GET", "/confirm/" + url.PathEscape(xss), ""},
		{"confirm post", "POST", "/confirm/" + url.PathEscape(xss), "csrf=" + url.QueryEscape(xss)},
		{"removal email", "POST", "/ip/192.0.2.50/removal", url.Values{"csrf": {csrfTok[1]}, "email": {xss + "@example.org"}, "reason": {"fixed"}}.Encode()},
		{"removal reason", "POST", "/ip/192.0.2.50/removal", url.Values{"csrf": {csrfTok[1]}, "email": {"bad"}, "reason": {xss}}.Encode()},
		{"removal csrf", "POST", "/ip/192.0.2.50/removal", url.Values{"csrf": {xss}, "email": {"a@example.org"}, "reason": {xss}}.Encode()},
		{"removal ip", "POST", "/ip/" + url.PathEscape(xss) + "/removal", url.Values{"csrf": {xss}}.Encode()},
		{"unknown path", "GET", "/" + url.PathEscape(xss), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, body := e.do(tc.method, tc.path, tc.body, nil)
			for _, bad := range []string{"<script>", "<img src=x", `"'><`} {
				if strings.Contains(body, bad) {
					t.Errorf("%s %s reflects %q unescaped:\n%s", tc.method, tc.path, bad, body)
				}
			}
		})
	}
	// A listing reason set by the operator is escaped too.
	e2 := newEnv(t, envOpts{adminToken: "tok"})
	resp, _ := e2.do("POST", "/admin/api/listings", `{"prefix":"192.0.2.77","category":"local","reason":"`+strings.ReplaceAll(xss, `"`, `\"`)+`"}`,
		map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("add listing: %d", resp.StatusCode)
	}
	_, body := e2.get("/ip/192.0.2.77")
	if strings.Contains(body, "<script>") || !strings.Contains(body, "&lt;script&gt;") {
		t.Errorf("listing reason not escaped")
	}
}

func TestLookupRateLimit(t *testing.T) {
	e := newEnv(t, envOpts{lookupRate: 0.001, lookupBurst: 3})
	for i := range 3 {
		if resp, _ := e.get("/api/v1/ip/192.0.2.99"); resp.StatusCode != 200 {
			t.Fatalf("lookup %d: status %d", i, resp.StatusCode)
		}
	}
	resp, body := e.get("/api/v1/ip/192.0.2.99")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "rate_limited") {
		t.Fatalf("4th lookup: status %d %s", resp.StatusCode, body)
	}
	resp, body = e.get("/ip/192.0.2.99")
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "Too many lookups") {
		t.Fatalf("page after limit: status %d", resp.StatusCode)
	}
	// Help pages are not limited.
	if resp, _ := e.get("/help"); resp.StatusCode != 200 {
		t.Errorf("help limited: %d", resp.StatusCode)
	}
}

func TestRemovalRateLimit(t *testing.T) {
	e := newEnv(t, envOpts{}) // no relay: requests wait for the operator without mail
	tok := e.srv.csrf.token("removal", "192.0.2.50")
	for i := range removalsPerHour + 1 {
		form := url.Values{"csrf": {tok}, "email": {"admin" + string(rune('a'+i)) + "@example.org"}, "reason": {"fixed"}}
		resp, body := e.do("POST", "/ip/192.0.2.50/removal", form.Encode(), nil)
		want := 200
		if i == removalsPerHour {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want {
			t.Fatalf("request %d: status %d, want %d\n%s", i, resp.StatusCode, want, body)
		}
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t, envOpts{})
	good := e.srv.csrf.token("removal", "192.0.2.50")
	otherIP := e.srv.csrf.token("removal", "192.0.2.1")
	otherForm := e.srv.csrf.token("confirm", "192.0.2.50")
	old := csrf{secret: e.srv.csrf.secret, now: func() time.Time { return time.Now().Add(-5 * time.Hour) }}.token("removal", "192.0.2.50")
	foreign := csrf{secret: []byte("another server's secret........."), now: time.Now}.token("removal", "192.0.2.50")
	tests := []struct {
		name, tok string
		status    int
	}{
		{"missing", "", 403},
		{"garbage", "abc", 403},
		{"other ip", otherIP, 403},
		{"other form", otherForm, 403},
		{"expired", old, 403},
		{"other secret", foreign, 403},
		{"good", good, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			form := url.Values{"email": {"x@example.org"}, "reason": {"fixed"}}
			if tc.tok != "" {
				form.Set("csrf", tc.tok)
			}
			resp, _ := e.do("POST", "/ip/192.0.2.50/removal", form.Encode(), nil)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
	t.Run("confirm", func(t *testing.T) {
		resp, _ := e.do("POST", "/confirm/sometoken", "csrf=", nil)
		if resp.StatusCode != 403 {
			t.Fatalf("confirm without csrf: %d", resp.StatusCode)
		}
	})
}

func TestBodyLimit(t *testing.T) {
	e := newEnv(t, envOpts{})
	tok := e.srv.csrf.token("removal", "192.0.2.50")
	body := url.Values{"csrf": {tok}, "email": {"x@example.org"}, "reason": {strings.Repeat("a", maxBody)}}.Encode()
	resp, _ := e.do("POST", "/ip/192.0.2.50/removal", body, nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("oversized form: status %d, want 400", resp.StatusCode)
	}
}

func TestAdminToken(t *testing.T) {
	t.Run("no token configured", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		for _, h := range []map[string]string{nil, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}} {
			if resp, _ := e.do("GET", "/admin/api/listings", "", h); resp.StatusCode != 404 {
				t.Errorf("headers %v: status %d, want 404", h, resp.StatusCode)
			}
		}
	})
	e := newEnv(t, envOpts{adminToken: "correct-horse"})
	tests := []struct {
		name   string
		hdr    string
		status int
	}{
		{"none", "", 401},
		{"wrong", "Bearer correct-hors", 401},
		{"longer", "Bearer correct-horse-battery", 401},
		{"basic", "Basic Y29ycmVjdC1ob3JzZQ==", 401},
		{"right", "Bearer correct-horse", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h map[string]string
			if tc.hdr != "" {
				h = map[string]string{"Authorization": tc.hdr}
			}
			resp, body := e.do("GET", "/admin/api/listings", "", h)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
		})
	}
}

// The statistics behind `blmilter stats` are behind the admin token, and
// need no store.
func TestAdminStats(t *testing.T) {
	stats := func() any { return map[string]int{"would_reject": 7} }
	tests := []struct {
		name   string
		opts   envOpts
		hdr    string
		status int
	}{
		{"no token configured", envOpts{stats: stats, noStore: true}, "Bearer x", 404},
		{"wrong token", envOpts{adminToken: "s3cret", stats: stats, noStore: true}, "Bearer nope", 401},
		{"no statistics", envOpts{adminToken: "s3cret", noStore: true}, "Bearer s3cret", 404},
		{"right token without store", envOpts{adminToken: "s3cret", stats: stats, noStore: true}, "Bearer s3cret", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opts)
			resp, body := e.do("GET", "/admin/api/stats", "", map[string]string{"Authorization": tc.hdr})
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			var got map[string]int
			if tc.status == 200 && (json.Unmarshal([]byte(body), &got) != nil || got["would_reject"] != 7) {
				t.Fatalf("body %s", body)
			}
		})
	}
}
