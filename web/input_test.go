package web

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit/smtpsink"
	"github.com/blmilter/blmilter/store"
)

var formClients atomic.Int32

// removalForm sends the removal form for the site-listed address, each
// time from another client address, so the per-client limit stays out of
// the way.
func removalForm(t *testing.T, e *env, email string) (*http.Response, string) {
	t.Helper()
	form := url.Values{"csrf": {e.srv.csrf.token("removal", ipSite.String())}, "email": {email}, "reason": {"fixed"}}
	req := httptest.NewRequest("POST", "/ip/192.0.2.50/removal", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	n := formClients.Add(1)
	req.RemoteAddr = fmt.Sprintf("198.18.%d.%d:4000", 100+n/250, n%250+1)
	rec := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rec, req)
	return rec.Result(), rec.Body.String()
}

// Removal mails go to RFC 5321 mailboxes with a domain name only: no
// address literal, no name a relay could take for an internal host.
func TestRemovalEmailRefused(t *testing.T) {
	sink := smtpsink.Start(t, false)
	e := newEnv(t, envOpts{smtp: sink.Addr})
	for _, email := range []string{
		"a@[127.0.0.1]", "a@[IPv6:::1]", "a@-", "root@localhost", "a@127.0.0.1",
		"a@exa_mple.org", "a..b@example.org", "a b@example.org", `"open@example.org`,
	} {
		t.Run(email, func(t *testing.T) {
			resp, body := removalForm(t, e, email)
			if resp.StatusCode != 400 || !strings.Contains(body, "domain name") {
				t.Errorf("status %d, want 400 naming a domain name:\n%s", resp.StatusCode, body)
			}
		})
	}
	if rs, _ := e.st.Requests(context.Background(), ""); len(rs) != 0 {
		t.Errorf("%d requests stored from refused addresses", len(rs))
	}
	if len(sink.Messages()) != 0 {
		t.Errorf("%d mails sent to refused addresses", len(sink.Messages()))
	}
}

// A non-ASCII domain goes out in A-labels; a non-ASCII local part goes out
// as typed with SMTPUTF8 when the relay offers it, and is refused in
// words when it does not.
func TestRemovalInternationalAddresses(t *testing.T) {
	t.Run("U-label domain", func(t *testing.T) {
		sink := smtpsink.Start(t, false)
		e := newEnv(t, envOpts{smtp: sink.Addr})
		if resp, body := removalForm(t, e, "Info@Bücher.example"); resp.StatusCode != 200 || !strings.Contains(body, "Check your mailbox") {
			t.Fatalf("status %d:\n%s", resp.StatusCode, body)
		}
		msg := sink.Wait(t, mailWait)
		if msg.To[0] != "Info@xn--bcher-kva.example" || msg.UTF8 {
			t.Errorf("envelope to %v, SMTPUTF8 %v; want the A-label form without SMTPUTF8", msg.To, msg.UTF8)
		}
	})
	t.Run("UTF-8 local part, relay with SMTPUTF8", func(t *testing.T) {
		sink := smtpsink.Start(t, true)
		e := newEnv(t, envOpts{smtp: sink.Addr})
		if resp, body := removalForm(t, e, "Jöran@bücher.example"); resp.StatusCode != 200 || !strings.Contains(body, "Check your mailbox") {
			t.Fatalf("status %d:\n%s", resp.StatusCode, body)
		}
		msg := sink.Wait(t, mailWait)
		if msg.To[0] != "Jöran@bücher.example" || !msg.UTF8 || !strings.Contains(msg.Data, "To: Jöran@bücher.example") {
			t.Errorf("envelope to %v, SMTPUTF8 %v; want the address as typed with SMTPUTF8\n%s", msg.To, msg.UTF8, msg.Data)
		}
	})
	t.Run("UTF-8 local part, relay without SMTPUTF8", func(t *testing.T) {
		sink := smtpsink.Start(t, false)
		e := newEnv(t, envOpts{smtp: sink.Addr})
		resp, body := removalForm(t, e, "Jöran@bücher.example")
		if resp.StatusCode != 400 || !strings.Contains(body, "SMTPUTF8") {
			t.Fatalf("status %d, want 400 explaining SMTPUTF8:\n%s", resp.StatusCode, body)
		}
		if rs, _ := e.st.Requests(context.Background(), ""); len(rs) != 0 {
			t.Errorf("the refused request was stored: %+v", rs)
		}
	})
}

// Without a relay a request goes straight to the operator, and the page
// says so; nothing prunes it.
func TestRemovalWithoutRelayWaits(t *testing.T) {
	e := newEnv(t, envOpts{})
	resp, body := removalForm(t, e, "owner@example.org")
	if resp.StatusCode != 200 || !strings.Contains(body, "waits for the operator") {
		t.Fatalf("status %d:\n%s", resp.StatusCode, body)
	}
	ctx := context.Background()
	if err := e.st.Prune(ctx, time.Now().Add(400*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	rs, err := e.st.Requests(ctx, store.StatusWaiting)
	if err != nil || len(rs) != 1 || rs[0].Email != "owner@example.org" {
		t.Fatalf("waiting requests after a year of pruning: %+v, %v", rs, err)
	}
}

// A relay that cannot be reached does not lose the request either.
func TestRemovalRelayDownWaits(t *testing.T) {
	e := newEnv(t, envOpts{smtp: "127.0.0.1:1"})
	resp, body := removalForm(t, e, "owner@example.org")
	if resp.StatusCode != 200 || !strings.Contains(body, "waits for the operator") {
		t.Fatalf("status %d:\n%s", resp.StatusCode, body)
	}
	if rs, _ := e.st.Requests(context.Background(), store.StatusWaiting); len(rs) != 1 {
		t.Fatalf("waiting requests: %+v", rs)
	}
}

// Parallel requests for one mailbox from many clients get exactly the
// daily limit of mails through.
func TestRemovalQuotaUnderRace(t *testing.T) {
	sink := smtpsink.Start(t, false)
	e := newEnv(t, envOpts{smtp: sink.Addr})
	const attempts = 24
	tok := e.srv.csrf.token("removal", ipSite.String())
	codes := make([]int, attempts)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range attempts {
		wg.Go(func() {
			form := url.Values{"csrf": {tok}, "email": {[]string{"victim@example.org", "Victim@Example.org"}[i%2]}, "reason": {"x"}}
			req := httptest.NewRequest("POST", "/ip/192.0.2.50/removal", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.RemoteAddr = fmt.Sprintf("198.18.1.%d:4000", i+1) // each its own client, under the per-client limit
			rec := httptest.NewRecorder()
			<-start
			e.srv.Handler().ServeHTTP(rec, req)
			codes[i] = rec.Code
		})
	}
	close(start)
	wg.Wait()
	ok, limited := 0, 0
	for _, c := range codes {
		switch c {
		case 200:
			ok++
		case 429:
			limited++
		}
	}
	if ok != mailsPerAddress || limited != attempts-mailsPerAddress {
		t.Errorf("%d accepted, %d limited (codes %v); want %d and %d", ok, limited, codes, mailsPerAddress, attempts-mailsPerAddress)
	}
	if len(sink.Messages()) != mailsPerAddress {
		t.Errorf("%d mails sent, want %d", len(sink.Messages()), mailsPerAddress)
	}
}

// With a store but no [[list]] using it, the page says plainly that this
// site lists the address but does not refuse mail for it.
func TestSiteListingNotUsed(t *testing.T) {
	e := newEnv(t, envOpts{noStoreList: true})
	resp, page := e.get("/ip/192.0.2.50")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	verdict := page[strings.Index(page, `<section class="verdict`):]
	verdict = verdict[:strings.Index(verdict, "</section>")]
	for _, want := range []string{"Listed here, but mail is not refused", "does not use that list to refuse mail"} {
		if !strings.Contains(verdict, want) {
			t.Errorf("verdict box lacks %q:\n%s", want, verdict)
		}
	}
	if strings.Contains(verdict, "would be accepted") || strings.Contains(verdict, "<h2>Listed</h2>") {
		t.Errorf("verdict box says Listed next to accepted:\n%s", verdict)
	}
	var rep Report
	_, js := e.get("/api/v1/ip/192.0.2.50")
	if err := json.Unmarshal([]byte(js), &rep); err != nil || rep.SiteListing == nil || rep.SiteListing.RefusesMail {
		t.Errorf("API site_listing %+v, %v; want refuses_mail false", rep.SiteListing, err)
	}
	// With the list in use, the same listing refuses mail.
	e = newEnv(t, envOpts{})
	_, js = e.get("/api/v1/ip/192.0.2.50")
	rep = Report{}
	if err := json.Unmarshal([]byte(js), &rep); err != nil || rep.SiteListing == nil || !rep.SiteListing.RefusesMail {
		t.Errorf("API site_listing %+v, %v; want refuses_mail true", rep.SiteListing, err)
	}
}

// The admin API takes categories of one word and expiry times in the
// years 2000 to 9999; what it answers 201 for is stored as answered.
func TestAdminListingInput(t *testing.T) {
	e := newEnv(t, envOpts{adminToken: "tok"})
	admin := map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json"}
	tests := []struct {
		name, body string
		status     int
		want       string
	}{
		{"CR/LF category", `{"prefix":"198.51.100.1","category":"zombie\r\nX: y"}`, 400, "one word"},
		{"HTML category", `{"prefix":"198.51.100.1","category":"<script>alert(1)</script>"}`, 400, "one word"},
		{"two words", `{"prefix":"198.51.100.1","category":"spam source"}`, 400, "one word"},
		{"year 1600", `{"prefix":"198.51.100.1","expires_at":"1600-01-01T00:00:00Z"}`, 400, "2000 to 9999"},
		{"past", `{"prefix":"198.51.100.1","expires_at":"2001-01-01T00:00:00Z"}`, 400, "in the past"},
		{"both", `{"prefix":"198.51.100.1","expires_at":"2100-01-01T00:00:00Z","expires_in":"1h"}`, 400, "not both"},
		{"year 10000", `{"prefix":"198.51.100.1","expires_at":"10000-01-01T00:00:00Z"}`, 400, "JSON"},
		{"year 9999", `{"prefix":"198.51.100.1","category":"open-proxy","expires_at":"9999-12-31T00:00:00Z"}`, 201, `"expires_at": "9999-12-31T00:00:00Z"`},
		{"beyond 2262 by duration", `{"prefix":"198.51.100.2","expires_in":"2500000h"}`, 201, `"prefix": "198.51.100.2/32"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.do("POST", "/admin/api/listings", tc.body, admin)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.want) {
				t.Fatalf("status %d, want %d with %q: %s", resp.StatusCode, tc.status, tc.want, body)
			}
		})
	}
	// The far listings are live, with the expiry the API answered.
	for _, ip := range []string{"198.51.100.1", "198.51.100.2"} {
		l, ok := e.st.ListingFor(addr(ip))
		if !ok || l.ExpiresAt == nil || l.ExpiresAt.Year() < 2262 {
			t.Errorf("%s: listed %v, %+v", ip, ok, l)
		}
	}
	if l, _ := e.st.ListingFor(addr("198.51.100.1")); l.Category != "open-proxy" {
		t.Errorf("category %q", l.Category)
	}
}

// Admin-token failures are logged with the client's address and limited
// per client: after a few, the client gets 429 even with the right token,
// while another client is not affected.
func TestAdminAuthFailuresLimited(t *testing.T) {
	e := newEnv(t, envOpts{adminToken: "the-right-token-of-32-characters"})
	do := func(client, token string) int {
		req := httptest.NewRequest("GET", "/admin/api/listings", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.RemoteAddr = client + ":5000"
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, req)
		return rec.Code
	}
	var codes []int
	for range authFailBurst + 3 {
		codes = append(codes, do("198.18.0.7", "guess"))
	}
	for i, c := range codes {
		want := 401
		if i >= authFailBurst {
			want = 429
		}
		if c != want {
			t.Errorf("attempt %d: %d, want %d (all: %v)", i+1, c, want, codes)
		}
	}
	if c := do("198.18.0.7", "the-right-token-of-32-characters"); c != 429 {
		t.Errorf("the limited client with the right token: %d, want 429", c)
	}
	// The same /64 is one client; another IPv4 address is another.
	for range authFailBurst {
		do("2001:db8:1:2::1", "guess")
	}
	if c := do("2001:db8:1:2::ffff", "the-right-token-of-32-characters"); c != 429 {
		t.Errorf("another address of a limited /64: %d, want 429", c)
	}
	if c := do("198.18.0.8", "the-right-token-of-32-characters"); c != 200 {
		t.Errorf("another client: %d, want 200", c)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "admin API authentication failed") || !strings.Contains(logs, "client=198.18.0.7") {
		t.Errorf("failures not logged with the client:\n%s", logs)
	}
	// The log is limited too: a few lines per client, not one per guess.
	if n := strings.Count(logs, "client=198.18.0.7"); n > 3 {
		t.Errorf("%d log lines for one client's %d failures", n, authFailBurst+4)
	}
	if strings.Contains(logs, "guess") {
		t.Error("the guessed token is in the log")
	}
}
