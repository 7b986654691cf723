package web

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit/smtpsink"
	"github.com/blmilter/blmilter/store"
)

var trapRulesForTest = store.TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64}

// The status page and the API tell an address's story: trap hits per day
// with the HELO, listings and removals and who made them, refusals per
// day. No trap address appears anywhere.
func TestHistoryOnPageAndAPI(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	ip := netip.MustParseAddr("198.18.7.1")
	at := time.Now().Add(-2 * time.Hour)
	for i := range 2 {
		if _, err := e.st.RecordTrapHit(ctx, store.TrapHit{Time: at.Add(time.Duration(i) * time.Minute), IP: ip, HELO: "bot.example.net",
			MailFrom: "x@forged.example", Trap: "secret-trap@example.org", QueueID: "4Q" + fmt.Sprint(i), RDNS: "dsl.example.net"}, trapRulesForTest); err != nil {
			t.Fatal(err)
		}
	}
	v := e.eng.Check(ctx, ip)
	e.eng.Reply(&v)
	e.st.Flush()

	_, page := e.get("/ip/198.18.7.1")
	day := at.UTC().Format(time.DateOnly)
	for _, want := range []string{
		"History at this site",
		day + ": hit a spam trap of this site 2 times from HELO bot.example.net; refused once",
		"listed 198.18.7.1 (Spam source) by this site&#39;s spam traps, until",
		"First seen",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	_, js := e.get("/api/v1/ip/198.18.7.1")
	var rep Report
	if err := json.Unmarshal([]byte(js), &rep); err != nil || rep.History == nil {
		t.Fatalf("API: %v\n%s", err, js)
	}
	h := rep.History
	if len(h.Days) != 1 || h.Days[0].Date != day || h.Days[0].TrapHits != 2 || h.Days[0].Refused != 1 || h.Days[0].HELOs[0] != "bot.example.net" {
		t.Errorf("API days: %+v", h.Days)
	}
	if len(h.Events) != 1 || h.Events[0].Event != "listed" || h.Events[0].By != "spam-traps" || h.Events[0].Network != "198.18.7.1" {
		t.Errorf("API events: %+v", h.Events)
	}
	for what, text := range map[string]string{"page": page, "API": js, "log": e.logs.String()} {
		for _, secret := range []string{"secret-trap", "forged.example"} {
			if strings.Contains(text, secret) {
				t.Errorf("the %s shows %q", what, secret)
			}
		}
	}
	// An operator's removal is told without naming the operator.
	if err := e.st.RemoveListing(ctx, netip.PrefixFrom(ip, 32), "cli:alice"); err != nil {
		t.Fatal(err)
	}
	_, page = e.get("/ip/198.18.7.1")
	if !strings.Contains(page, "removed 198.18.7.1 by the operator") || strings.Contains(page, "alice") {
		t.Errorf("the removal on the page:\n%s", page)
	}
	// An address never seen says so.
	if _, page := e.get("/ip/198.18.7.2"); !strings.Contains(page, "no record of this address") {
		t.Error("a clean address's history")
	}
}

var statusLinkRe = regexp.MustCompile(`href="http://lookup\.test(/request/[0-9]+-[A-Za-z0-9_-]+)"`)

// The removal loop closes: the requester follows the request on its status
// page to the end, and gets the outcome by mail; the operator gets a mail
// when it waits.
func TestRequestStatusAndNotices(t *testing.T) {
	sink := smtpsink.Start(t, false)
	e := newEnv(t, envOpts{smtp: sink.Addr, adminToken: "tok", operator: "ops@example.org"})
	admin := map[string]string{"Authorization": "Bearer tok"}
	ctx := context.Background()
	// A network listing: only an operator can remove it.
	if _, err := e.st.AddListing(ctx, store.Listing{Prefix: netip.MustParsePrefix("198.18.8.0/24"), Category: "spam-source"}); err != nil {
		t.Fatal(err)
	}
	form := url.Values{"csrf": {e.srv.csrf.token("removal", "198.18.8.9")}, "email": {"Owner@Example.org"}, "reason": {"fixed"}}
	resp, body := e.do("POST", "/ip/198.18.8.9/removal", form.Encode(), nil)
	m := statusLinkRe.FindStringSubmatch(body)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("form: %d, no status link:\n%s", resp.StatusCode, body)
	}
	status := m[1]
	conf := sink.Wait(t, mailWait)
	if !strings.Contains(conf.Data, "http://lookup.test"+status) {
		t.Errorf("the confirmation mail lacks the status link:\n%s", conf.Data)
	}
	_, page := e.get(status)
	if !strings.Contains(page, "Pending: waiting for your confirmation") || strings.Contains(page, "Owner@Example.org") {
		t.Errorf("pending status page:\n%s", page)
	}
	link := linkRe.FindStringSubmatch(conf.Data)[1]
	_, cpage := e.get(link)
	e.do("POST", link, url.Values{"csrf": {csrfOf(t, cpage)}}.Encode(), nil)
	_, page = e.get(status)
	if !strings.Contains(page, "Waiting for the operator") || !strings.Contains(page, "confirmed through the link") {
		t.Errorf("waiting status page:\n%s", page)
	}

	// The operator hears of it once.
	e.srv.sendNotices(ctx)
	ops := sink.Wait(t, mailWait)
	if ops.To[0] != "ops@example.org" || !strings.Contains(ops.Data, "blmilter requests approve") || !strings.Contains(ops.Data, "Owner@Example.org") {
		t.Errorf("operator mail to %v:\n%s", ops.To, ops.Data)
	}
	e.srv.sendNotices(ctx)

	var reqs []requestJSON
	_, js := e.do("GET", "/admin/api/requests?status=waiting", "", admin)
	json.Unmarshal([]byte(js), &reqs)
	if len(reqs) != 1 {
		t.Fatalf("waiting: %s", js)
	}
	e.do("POST", fmt.Sprintf("/admin/api/requests/%d/deny", reqs[0].ID), "", admin)
	_, page = e.get(status)
	if !strings.Contains(page, "Denied") || !strings.Contains(page, "denied by the operator") {
		t.Errorf("denied status page:\n%s", page)
	}
	e.srv.sendNotices(ctx)
	out := sink.Wait(t, mailWait)
	if out.To[0] != "Owner@example.org" || !strings.Contains(out.Data, "Subject: Denied") || !strings.Contains(out.Data, "http://lookup.test"+status) {
		t.Errorf("outcome mail to %v:\n%s", out.To, out.Data)
	}
	e.srv.sendNotices(ctx)
	n := len(sink.Messages())
	if n != 3 {
		t.Errorf("%d mails, want 3: confirmation, operator, outcome, each once", n)
	}

	// A link that is not one finds nothing.
	for _, bad := range []string{"/request/1-AAAA", "/request/" + strings.Replace(status[9:], "-", "x", 1), "/request/999999-x"} {
		if resp, _ := e.get(bad); resp.StatusCode != 404 {
			t.Errorf("%s: %d, want 404", bad, resp.StatusCode)
		}
	}
}

// The page of a listing its owner may remove offers a delist address; of
// one it may not, none.
func TestDelistAddressOffered(t *testing.T) {
	e := newEnv(t, envOpts{delist: "mx.lookup.test"})
	ctx := context.Background()
	for p, cat := range map[string]string{"198.18.9.1/32": "spam-source", "198.18.10.0/24": "spam-source", "198.18.9.2/32": "special"} {
		if _, err := e.st.AddListing(ctx, store.Listing{Prefix: netip.MustParsePrefix(p), Category: cat}); err != nil {
			t.Fatal(err)
		}
	}
	delistRe := regexp.MustCompile(`delist\+([a-z2-7]{16})@mx\.lookup\.test`)
	_, page := e.get("/ip/198.18.9.1")
	page = html.UnescapeString(page) // the template writes '+' as &#43;
	m := delistRe.FindStringSubmatch(page)
	if m == nil || !strings.Contains(page, "proves you control the address") {
		t.Fatalf("no delist address on the page of a self-removable listing:\n%s", page)
	}
	if _, again := e.get("/ip/198.18.9.1"); !strings.Contains(html.UnescapeString(again), m[0]) {
		t.Error("the delist address changed between two views")
	}
	for _, ip := range []string{"198.18.10.7", "198.18.9.2"} {
		if _, page := e.get("/ip/" + ip); delistRe.MatchString(html.UnescapeString(page)) {
			t.Errorf("%s: a delist address for a listing its owner may not remove", ip)
		}
	}
	// The token proves control from the listed address only.
	if res, _ := e.st.ProveControl(ctx, m[1], netip.MustParseAddr("198.18.9.1"), store.ControlEvidence{HELO: "mx"}, e.cfg.SelfService()); !res.Removed {
		t.Errorf("proof: %+v", res)
	}
}

// Once a deferring listing is removed, the page says the next retry will
// be accepted.
func TestDeferralOnPage(t *testing.T) {
	e := newEnv(t, envOpts{deferFirst: 4 * time.Hour})
	ctx := context.Background()
	ip := netip.MustParseAddr("198.18.11.1")
	if _, err := e.st.AddListing(ctx, store.Listing{Prefix: netip.PrefixFrom(ip, 32), Category: "spam-source"}); err != nil {
		t.Fatal(err)
	}
	since := time.Now().Add(-time.Hour).Truncate(time.Second)
	for range 3 {
		e.st.NoteDeferral(ip, since)
	}
	e.st.Flush()
	_, page := e.get("/ip/198.18.11.1")
	if !strings.Contains(page, "3 attempts deferred since "+fmtTime(since)+". Until "+fmtTime(since.Add(4*time.Hour))) {
		t.Errorf("while listed:\n%s", page)
	}
	if err := e.st.RemoveListing(ctx, netip.PrefixFrom(ip, 32), "self-service"); err != nil {
		t.Fatal(err)
	}
	_, page = e.get("/ip/198.18.11.1")
	if !strings.Contains(page, "3 attempts deferred since "+fmtTime(since)+"; the next retry will be accepted.") {
		t.Errorf("after the removal:\n%s", page)
	}
}
