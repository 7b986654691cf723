package web

import (
	"context"
	"encoding/json"
	"html"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/policy"
)

// row returns the table row of the named list on a status page.
func row(t *testing.T, body, list string) string {
	t.Helper()
	re := regexp.MustCompile(`(?s)<tr class="([a-z_]+)">\s*<td data-label="List">` + regexp.QuoteMeta(list) + `.*?</tr>`)
	m := re.FindString(body)
	if m == "" {
		t.Fatalf("no row for %q in\n%s", list, body)
	}
	return m
}

func TestStatusPage(t *testing.T) {
	e := newEnv(t, envOpts{})
	tests := []struct {
		name     string
		path     string
		rows     map[string]string // list -> text its row must contain
		contains []string
		lacks    []string
	}{
		{
			name: "listed",
			path: "/ip/192.0.2.1",
			rows: map[string]string{
				"Test ZEN":    `class="result">listed<`,
				"Broken List": `not listed`,
				"Site list":   `not listed`,
			},
			contains: []string{"Mail from this address would be refused now.", "550 5.7.1", "listed by Test ZEN", "dsl-192-0-2-1.dyn.example.net", "looks generic", "PTR record that names"},
			lacks:    []string{"zen.test"[:0] + "Ask for removal"},
		},
		{
			name:     "unlisted",
			path:     "/ip/192.0.2.99",
			rows:     map[string]string{"Test ZEN": "not listed", "Broken List": "not listed"},
			contains: []string{"Not listed", "Mail from this address would be accepted.", "mail.example.org", "resolves back to this address"},
			lacks:    []string{"550 5.7.1", "looks generic", "Ask for removal"},
		},
		{
			name:     "error list",
			path:     "/ip/192.0.2.3",
			rows:     map[string]string{"Broken List": "could not check", "Test ZEN": "not listed"},
			contains: []string{"Not listed by the lists that answered", "no PTR record"},
			lacks:    []string{`class="result">listed<`, "127.255.255.254", "550 5.7.1"},
		},
		{
			name:     "IPv6",
			path:     "/ip/2001:db8::25",
			rows:     map[string]string{"Test ZEN": `class="result">listed<`},
			contains: []string{"IP <span class=\"ip\">2001:db8::25</span>", "Spam source v6", "Spam source</a>", "550 5.7.1"},
		},
		{
			name:     "site listing",
			path:     "/ip/192.0.2.50",
			rows:     map[string]string{"Site list": `class="result">listed<`, "Test ZEN": "not listed"},
			contains: []string{"On this site's own list", "Spam to our users on 2026-11-20", "Listed since", "until removed", "Ask for removal", `action="/ip/192.0.2.50/removal"`, `name="csrf"`, "counts toward that limit"},
		},
		{
			name:     "loopback",
			path:     "/ip/127.0.0.2",
			rows:     map[string]string{"Test ZEN": `class="result">listed<`, "Site list": `class="result">listed<`, "Broken List": "not listed"},
			contains: []string{"loopback address", "Listed for the browser test", "Ask for removal", "RFC 5782 test point", "Spam source</a>", "127.0.0.2"},
			lacks:    []string{"550 5.7.1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.get(tc.path)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d\n%s", resp.StatusCode, body)
			}
			for list, want := range tc.rows {
				if r := row(t, body, list); !strings.Contains(r, want) {
					t.Errorf("row %q lacks %q:\n%s", list, want, r)
				}
			}
			for _, c := range tc.contains {
				if !strings.Contains(body, c) {
					t.Errorf("page lacks %q", c)
				}
			}
			for _, c := range tc.lacks {
				if c != "" && strings.Contains(body, c) {
					t.Errorf("page has %q", c)
				}
			}
			// A list's zone may carry an access key: never on a page.
			if strings.Contains(body, "zen.test") || strings.Contains(body, "broken.test") {
				t.Errorf("page shows a list zone")
			}
		})
	}
}

// An error or degraded list is never shown as listed, also in JSON.
func TestErrorListNeverListed(t *testing.T) {
	e := newEnv(t, envOpts{})
	_, body := e.get("/api/v1/ip/192.0.2.3")
	var r Report
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if r.Status != "incomplete" || r.Verdict.Refused {
		t.Errorf("status %q refused %v, want incomplete and not refused", r.Status, r.Verdict.Refused)
	}
	for _, l := range r.Lists {
		if l.Name == "Broken List" && l.Result != ResultError {
			t.Errorf("Broken List result %q, want %q", l.Result, ResultError)
		}
	}

	// Degraded: the list answers "listed" but fails its health checks.
	e.eng.SetListHealthy("Test ZEN", false)
	_, page := e.get("/ip/192.0.2.1")
	if r := row(t, page, "Test ZEN"); !strings.Contains(r, "could not check") || strings.Contains(r, `class="result">listed<`) {
		t.Errorf("degraded row:\n%s", r)
	}
	_, body = e.get("/api/v1/ip/192.0.2.1")
	if !strings.Contains(body, `"result": "list_degraded"`) {
		t.Errorf("json lacks list_degraded:\n%s", body)
	}
}

func TestAPISchema(t *testing.T) {
	e := newEnv(t, envOpts{})
	resp, body := e.get("/api/v1/ip/192.0.2.1")
	if resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("no CORS header")
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ip", "ip_version", "checked_at", "status", "verdict", "reply", "lists", "site_listing", "reverse_dns", "page_url"} {
		if _, ok := m[k]; !ok {
			t.Errorf("missing field %q", k)
		}
	}
	var r Report
	json.Unmarshal([]byte(body), &r)
	if r.IP != "192.0.2.1" || r.IPVersion != 4 || r.Status != "listed" || r.Verdict.Action != "reject" || !r.Verdict.Refused {
		t.Errorf("report %+v", r)
	}
	if r.Reply == nil || r.Reply.Code != 550 || r.Reply.Enhanced != "5.7.1" || !strings.Contains(r.Reply.Text, "http://lookup.test/ip/192.0.2.1") {
		t.Errorf("reply %+v", r.Reply)
	}
	if r.PageURL != "http://lookup.test/ip/192.0.2.1" {
		t.Errorf("page_url %q", r.PageURL)
	}
	byName := map[string]ListInfo{}
	for _, l := range r.Lists {
		byName[l.Name] = l
	}
	z := byName["Test ZEN"]
	if z.Result != ResultListed || z.Category != "zombie" || z.CategoryText == "" || len(z.Codes) != 1 || z.Codes[0] != "127.0.0.4" ||
		z.Reason != "Compromised host, see https://lists.example/why" || z.ExpiresAt == nil || z.TTLSeconds <= 0 || z.Kind != "dns" || z.HelpURL != "http://lookup.test/help/zombie" {
		t.Errorf("ZEN row %+v", z)
	}
	if b := byName["Broken List"]; b.Result != ResultNotListed {
		t.Errorf("Broken row %+v", b)
	}
	if !r.ReverseDNS.Generic || len(r.ReverseDNS.Names) != 1 || !r.ReverseDNS.Names[0].ForwardConfirmed {
		t.Errorf("reverse dns %+v", r.ReverseDNS)
	}
	if r.SiteListing != nil {
		t.Errorf("site_listing %+v, want null", r.SiteListing)
	}

	// The site's own listing: network, category, dates; nothing about requesters.
	_, body = e.get("/api/v1/ip/192.0.2.50")
	json.Unmarshal([]byte(body), &r)
	if r.SiteListing == nil || r.SiteListing.Network != "192.0.2.50" || r.SiteListing.Category != "spam-source" || r.SiteListing.ListedSince.IsZero() ||
		r.SiteListing.RemovalURL != "http://lookup.test/ip/192.0.2.50/removal" {
		t.Errorf("site_listing %+v", r.SiteListing)
	}
	if !strings.Contains(body, `"expires_at": null`) {
		t.Errorf("expires_at of a listing without expiry must be null:\n%s", body)
	}

	// IPv6 and an exempt address.
	_, body = e.get("/api/v1/ip/2001:db8::25")
	json.Unmarshal([]byte(body), &r)
	if r.IPVersion != 6 || r.Status != "listed" {
		t.Errorf("v6: %+v", r)
	}
	_, body = e.get("/api/v1/ip/127.0.0.2")
	r = Report{}
	json.Unmarshal([]byte(body), &r)
	if r.Verdict.Exempt != "loopback" || r.Verdict.Refused {
		t.Errorf("loopback verdict %+v", r.Verdict)
	}
}

// A ref from a bounce shows what the filter saw then, even after the
// listing is gone; a ref of another IP shows nothing.
func TestDecisionRef(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	v := e.eng.Check(ctx, ipListed)
	rep := e.eng.Reply(&v)
	if rep.Ref == "" {
		t.Fatal("engine gave no ref")
	}
	e.eng.FlushDecisions() // the list's text is fetched after the reply
	e.st.Flush()
	// The list drops the IP: the page now says not listed, the ref still tells.
	e.dns.Set("1.2.0.192.zen.test", dnsTestNX())
	_, body := e.get("/ip/192.0.2.1?ref=" + rep.Ref)
	for _, want := range []string{"Your bounce", rep.Ref, "Test ZEN", "127.0.0.4", "Compromised host", html.EscapeString(rep.Text)} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if r := row(t, body, "Test ZEN"); !strings.Contains(r, "not listed") {
		t.Errorf("current row should be not listed:\n%s", r)
	}
	_, js := e.get("/api/v1/ip/192.0.2.1?ref=" + rep.Ref)
	var r Report
	json.Unmarshal([]byte(js), &r)
	if r.Decision == nil || !r.Decision.Found || r.Decision.Time == nil || time.Since(*r.Decision.Time) > time.Minute || r.Decision.Action != string(policy.ActionReject) ||
		len(r.Decision.Hits) == 0 || r.Decision.Hits[0].Code != "127.0.0.4" || r.Decision.Reply == nil || r.Decision.Reply.Code != 550 {
		t.Errorf("decision %+v", r.Decision)
	}
	// Another IP's page with this ref: not found.
	_, body = e.get("/ip/192.0.2.99?ref=" + rep.Ref)
	if !strings.Contains(body, "No decision with this reference") || strings.Contains(body, "Compromised host") {
		t.Errorf("ref leaked to another IP's page")
	}
}
