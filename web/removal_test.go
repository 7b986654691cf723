package web

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit/smtpsink"
)

// mailWait bounds the wait for a mail the lookup service sends.
const mailWait = 10 * time.Second

var (
	csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	linkRe = regexp.MustCompile(`http://lookup\.test(/confirm/[A-Za-z0-9_-]+)`)
)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf token in page:\n%s", page)
	}
	return m[1]
}

// The whole removal flow: the form on the status page, the mail through a
// real SMTP server, the link followed (GET shows a button, POST confirms),
// and the listing gone from the engine's verdicts.
func TestRemovalFlow(t *testing.T) {
	sink := smtpsink.Start(t, false)
	e := newEnv(t, envOpts{smtp: sink.Addr, adminToken: "tok"})
	ctx := context.Background()

	if v := e.eng.Check(ctx, ipSite); v.Action != "reject" {
		t.Fatalf("before: verdict %s, want reject", v.Action)
	}
	_, page := e.get("/ip/192.0.2.50")
	form := url.Values{"csrf": {csrfOf(t, page)}, "email": {"Postmaster@Example.ORG"}, "reason": {"Closed the open relay; scanned all hosts."}}
	resp, body := e.do("POST", "/ip/192.0.2.50/removal", form.Encode(), nil)
	if resp.StatusCode != 200 || !strings.Contains(body, "Check your mailbox") {
		t.Fatalf("removal request: %d\n%s", resp.StatusCode, body)
	}

	msg := sink.Wait(t, mailWait)
	// The local part goes out as typed; the domain's case does not matter.
	if msg.From != "lookup@lookup.test" || len(msg.To) != 1 || msg.To[0] != "Postmaster@example.org" {
		t.Errorf("envelope from %q to %v", msg.From, msg.To)
	}
	for _, h := range []string{"Subject: Confirm the removal of 192.0.2.50", "To: Postmaster@example.org", "Auto-Submitted: auto-generated", "Message-ID: <"} {
		if !strings.Contains(msg.Data, h) {
			t.Errorf("mail lacks %q:\n%s", h, msg.Data)
		}
	}
	m := linkRe.FindStringSubmatch(msg.Data)
	if m == nil {
		t.Fatalf("no confirmation link in mail:\n%s", msg.Data)
	}
	link := m[1]

	// A request is pending; the operator sees it with the requester's email.
	_, js := e.do("GET", "/admin/api/requests?status=pending", "", map[string]string{"Authorization": "Bearer tok"})
	if !strings.Contains(js, `"email": "Postmaster@Example.ORG"`) || !strings.Contains(js, `"ip": "192.0.2.50"`) {
		t.Errorf("admin requests: %s", js)
	}
	// The public page never shows the requester.
	if _, page := e.get("/ip/192.0.2.50"); strings.Contains(strings.ToLower(page), "postmaster@example.org") {
		t.Errorf("status page reveals the requester's email")
	}

	// GET (what a mail scanner does) changes nothing.
	resp, page = e.get(link)
	if resp.StatusCode != 200 || !strings.Contains(page, "Confirm removal request") {
		t.Fatalf("confirm page: %d\n%s", resp.StatusCode, page)
	}
	if _, ok := e.st.ListingFor(ipSite); !ok {
		t.Fatal("GET of the link removed the listing")
	}
	resp, body = e.do("POST", link, url.Values{"csrf": {csrfOf(t, page)}}.Encode(), nil)
	if resp.StatusCode != 200 || !strings.Contains(body, "Removed") || !strings.Contains(body, "counts toward this limit") {
		t.Fatalf("confirm: %d\n%s", resp.StatusCode, body)
	}
	if _, ok := e.st.ListingFor(ipSite); ok {
		t.Error("listing still in the store")
	}
	if v := e.eng.Check(ctx, ipSite); v.Action != "accept" || len(v.Hits) != 0 {
		t.Errorf("after: verdict %s hits %v, want accept", v.Action, v.Hits)
	}
	_, page = e.get("/ip/192.0.2.50")
	if strings.Contains(page, "Ask for removal") || !strings.Contains(row(t, page, "Site list"), "not listed") {
		t.Errorf("status page still shows the listing")
	}

	// The link works once.
	resp, body = e.do("POST", link, url.Values{"csrf": {csrfOf(t, page2(e, link))}}.Encode(), nil)
	if resp.StatusCode != 404 || !strings.Contains(body, "not valid") {
		t.Errorf("second use: %d", resp.StatusCode)
	}
}

func page2(e *env, link string) string {
	_, p := e.get(link)
	return p
}

// Beyond the quota, a confirmed request waits for the operator, who
// approves it through the admin API.
func TestRemovalQuotaAndOperator(t *testing.T) {
	sink := smtpsink.Start(t, false)
	e := newEnv(t, envOpts{smtp: sink.Addr, adminToken: "tok"})
	admin := map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json"}
	request := func(email string) string {
		t.Helper()
		_, page := e.get("/ip/192.0.2.50")
		form := url.Values{"csrf": {csrfOf(t, page)}, "email": {email}, "reason": {"fixed"}}
		if resp, body := e.do("POST", "/ip/192.0.2.50/removal", form.Encode(), nil); resp.StatusCode != 200 {
			t.Fatalf("request: %d %s", resp.StatusCode, body)
		}
		link := linkRe.FindStringSubmatch(sink.Wait(t, mailWait).Data)[1]
		_, page = e.get(link)
		_, body := e.do("POST", link, url.Values{"csrf": {csrfOf(t, page)}}.Encode(), nil)
		return body
	}
	relist := func() {
		t.Helper()
		resp, body := e.do("POST", "/admin/api/listings", `{"prefix":"192.0.2.50","category":"spam-source","reason":"again","expires_in":"720h"}`, admin)
		if resp.StatusCode != 201 || !strings.Contains(body, `"prefix": "192.0.2.50/32"`) {
			t.Fatalf("relist: %d %s", resp.StatusCode, body)
		}
	}
	for i := range 2 {
		if body := request(fmt.Sprintf("a%d@example.org", i)); !strings.Contains(body, "Removed") {
			t.Fatalf("removal %d not granted:\n%s", i, body)
		}
		relist()
	}
	body := request("a3@example.org")
	if !strings.Contains(body, "Waiting for the operator") {
		t.Fatalf("third removal in the window should wait:\n%s", body)
	}
	if _, ok := e.st.ListingFor(ipSite); !ok {
		t.Fatal("listing removed beyond the quota")
	}
	_, js := e.do("GET", "/admin/api/requests?status=waiting", "", admin)
	var reqs []requestJSON
	if err := json.Unmarshal([]byte(js), &reqs); err != nil || len(reqs) != 1 {
		t.Fatalf("waiting requests: %v %s", err, js)
	}
	resp, _ := e.do("POST", fmt.Sprintf("/admin/api/requests/%d/approve", reqs[0].ID), "", admin)
	if resp.StatusCode != 200 {
		t.Fatalf("approve: %d", resp.StatusCode)
	}
	if _, ok := e.st.ListingFor(ipSite); ok {
		t.Error("approved, but still listed")
	}
	if resp, _ := e.do("POST", fmt.Sprintf("/admin/api/requests/%d/deny", reqs[0].ID), "", admin); resp.StatusCode != 409 {
		t.Errorf("deny after approve: %d, want 409", resp.StatusCode)
	}
	if resp, _ := e.do("POST", "/admin/api/requests/99999/approve", "", admin); resp.StatusCode != 404 {
		t.Errorf("approve unknown: %d, want 404", resp.StatusCode)
	}
}

// At most mailsPerAddress confirmation mails a day go to one address.
func TestMailsPerAddress(t *testing.T) {
	sink := smtpsink.Start(t, false)
	e := newEnv(t, envOpts{smtp: sink.Addr})
	for i := range mailsPerAddress + 1 {
		_, page := e.get("/ip/192.0.2.50")
		form := url.Values{"csrf": {csrfOf(t, page)}, "email": {"victim@example.org"}, "reason": {"x"}}
		resp, body := e.do("POST", "/ip/192.0.2.50/removal", form.Encode(), nil)
		if i < mailsPerAddress && resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
		if i == mailsPerAddress && (resp.StatusCode != 429 || !strings.Contains(body, "at most 3 removal requests a day")) {
			t.Fatalf("request %d: %d, want 429\n%s", i, resp.StatusCode, body)
		}
	}
	n := len(sink.Messages())
	if n != mailsPerAddress {
		t.Errorf("%d mails sent, want %d", n, mailsPerAddress)
	}
}

func TestRemovalFormErrors(t *testing.T) {
	e := newEnv(t, envOpts{})
	tok := e.srv.csrf.token("removal", "192.0.2.50")
	tests := []struct {
		name, email, reason, want string
		status                    int
	}{
		{"no email", "", "x", "Enter your email address", 400},
		{"display name", "Bob <bob@example.org>", "x", "plain email address", 400},
		{"header injection", "bob@example.org\r\nBcc: x@example.org", "x", "plain email address", 400},
		{"no reason", "bob@example.org", " ", "what you fixed", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			form := url.Values{"csrf": {tok}, "email": {tc.email}, "reason": {tc.reason}}
			resp, body := e.do("POST", "/ip/192.0.2.50/removal", form.Encode(), nil)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.want) {
				t.Fatalf("status %d, want %d with %q:\n%s", resp.StatusCode, tc.status, tc.want, body)
			}
		})
	}
	t.Run("not listed", func(t *testing.T) {
		tok := e.srv.csrf.token("removal", "192.0.2.99")
		form := url.Values{"csrf": {tok}, "email": {"bob@example.org"}, "reason": {"x"}}
		_, body := e.do("POST", "/ip/192.0.2.99/removal", form.Encode(), nil)
		if !strings.Contains(body, "not on this site") {
			t.Fatalf("body:\n%s", body)
		}
	})
}

func TestAdminListings(t *testing.T) {
	e := newEnv(t, envOpts{adminToken: "tok"})
	admin := map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json"}
	resp, body := e.do("POST", "/admin/api/listings", `{"prefix":"198.51.100.0/24","category":"zombie","reason":"botnet C&C"}`, admin)
	if resp.StatusCode != 201 {
		t.Fatalf("add: %d %s", resp.StatusCode, body)
	}
	if v := e.eng.Check(context.Background(), addr("198.51.100.7")); v.Action != "reject" {
		t.Errorf("network listing not applied: %s", v.Action)
	}
	_, body = e.do("GET", "/admin/api/listings", "", admin)
	var ls []listingJSON
	if err := json.Unmarshal([]byte(body), &ls); err != nil || len(ls) != 3 {
		t.Fatalf("listings: %v %s", err, body)
	}
	// The public page of a host in the network names the network, not other hosts.
	_, page := e.get("/ip/198.51.100.7")
	if !strings.Contains(page, "198.51.100.0/24") || strings.Contains(page, "192.0.2.50") {
		t.Errorf("public page: network missing or another listing shown")
	}
	for _, tc := range []struct{ body string }{{`{"prefix":"nonsense"}`}, {`{"prefix":"192.0.2.9","bogus":1}`}, {`{"prefix":"192.0.2.9","expires_in":"-1h"}`}, {`[`}} {
		if resp, _ := e.do("POST", "/admin/api/listings", tc.body, admin); resp.StatusCode != 400 {
			t.Errorf("add %s: %d, want 400", tc.body, resp.StatusCode)
		}
	}
	resp, _ = e.do("DELETE", "/admin/api/listings/198.51.100.0/24", "", admin)
	if resp.StatusCode != 200 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	if v := e.eng.Check(context.Background(), addr("198.51.100.7")); v.Action != "accept" {
		t.Errorf("removed network still applies: %s", v.Action)
	}
	if resp, _ := e.do("DELETE", "/admin/api/listings/198.51.100.0/24", "", admin); resp.StatusCode != 404 {
		t.Errorf("delete again: %d, want 404", resp.StatusCode)
	}
	if resp, _ := e.do("GET", "/admin/api/requests?status=bogus", "", admin); resp.StatusCode != 400 {
		t.Errorf("bad status filter: %d, want 400", resp.StatusCode)
	}
}
