//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
)

// The site's list filled by evidence and emptied by its owners, through
// real Postfix instances: spam traps seen by the milter and by the policy
// server, proof of control, delist-and-deliver, and the removal loop with
// its mails going through a real relay into a mailbox the tests read.

const (
	trapAddr        = "spamtrap@e2e.test"
	requesterDomain = "requester.e2e.test"
)

// evidenceTOML is the [traps] section and the site's own list.
const evidenceTOML = `
[traps]
addresses = ["` + trapAddr + `"]
hits = 1
window = "24h"
expires = "7d"
max_expires = "90d"
category = "spam-source"
ipv6_prefix = 64

[[list]]
name = "E2E site"
store = true
weight = 5
`

// frontEnds are the two ways Postfix asks blmilter.
var frontEnds = []string{"milter", "policy"}

// startEvidence starts rbldnsd, blmilter with the traps, its lookup
// service and o, and a Postfix that asks it through frontEnd.
func startEvidence(t *testing.T, frontEnd string, o blmilterOpts) (*blmilter, *postfix) {
	t.Helper()
	o.DNS = startRbldnsd(t)
	o.Web = true
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	o.Extra = evidenceTOML + o.Extra
	b := startBlmilter(t, o)
	po := postfixOpts{}
	if frontEnd == "milter" {
		po.Milter = "inet:" + b.Milter
	} else {
		po.Policy = "inet:" + b.Policy
	}
	return b, startPostfix(t, po)
}

// get fetches a page or API answer of the lookup service.
func (b *blmilter) get(t *testing.T, path string) string {
	t.Helper()
	return httpGet(t, b.Web+path)
}

// report is the part of /api/v1/ip/{ip} these tests read.
type report struct {
	Status      string `json:"status"`
	SiteListing *struct {
		Network       string `json:"network"`
		DelistAddress string `json:"delist_address"`
	} `json:"site_listing"`
	History *struct {
		Days []struct {
			Date     string   `json:"date"`
			TrapHits int      `json:"trap_hits"`
			HELOs    []string `json:"helos"`
			Refused  int      `json:"refused"`
		} `json:"days"`
		Events []struct {
			Event string `json:"event"`
			By    string `json:"by"`
		} `json:"events"`
		Deferral *struct {
			Attempts int `json:"attempts"`
		} `json:"deferral"`
	} `json:"history"`
}

func (b *blmilter) report(t *testing.T, ip string) (report, string) {
	t.Helper()
	js := b.get(t, "/api/v1/ip/"+ip)
	var r report
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		t.Fatalf("API for %s: %v\n%s", ip, err, js)
	}
	return r, js
}

// hitTrap sends mail from client to the trap through Postfix and checks
// the reply of a dead address.
func hitTrap(t *testing.T, pf *postfix, client, frontEnd string) {
	t.Helper()
	r, err := session(pf.Addr, sessionOpts{XClient: client, Rcpt: trapAddr, Helo: "bot.example.net"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Stage != "rcpt" || r.Code != 550 || r.Enhanced != "5.1.1" || !strings.HasSuffix(r.Text, "User unknown") {
		t.Fatalf("trap recipient from %s: %v, want 550 5.1.1 ... User unknown", client, r)
	}
	// The milter's whole text is its own; through the policy server Postfix
	// puts the recipient before blmilter's reason, as for every access reply.
	if frontEnd == "milter" && strings.Contains(r.Text, "spamtrap") {
		t.Errorf("the milter's reply names the trap: %v", r)
	}
}

// A trap hit through Postfix: 550 5.1.1, the next session to a real user
// refused with the link, and the page and the API show the hit without
// the trap address; so does no log line at info.
func TestTrapHitThroughPostfix(t *testing.T) {
	need(t, "postfix", "rbldnsd")
	for i, fe := range frontEnds {
		t.Run(fe, func(t *testing.T) {
			b, pf := startEvidence(t, fe, blmilterOpts{})
			client := "198.18.3." + strconv.Itoa(10+i)
			hitTrap(t, pf, client, fe)
			r, err := session(pf.Addr, sessionOpts{XClient: client})
			if err != nil {
				t.Fatal(err)
			}
			checkReply(t, mtaCase{client: client, want: 550, category: "spam-source"}, r)

			page := b.get(t, "/ip/"+client)
			if !strings.Contains(page, "hit a spam trap of this site") || !strings.Contains(page, "from HELO bot.example.net") {
				t.Errorf("the page does not tell the trap hit:\n%s", page)
			}
			rep, js := b.report(t, client)
			if rep.Status != "listed" || rep.History == nil || len(rep.History.Days) != 1 || rep.History.Days[0].TrapHits != 1 ||
				len(rep.History.Events) != 1 || rep.History.Events[0].By != "spam-traps" {
				t.Errorf("API: %s", js)
			}
			for what, text := range map[string]string{"page": page, "API": js, "log": b.p.out.String()} {
				if strings.Contains(text, "spamtrap") {
					t.Errorf("the %s names the trap", what)
				}
			}
			if !strings.Contains(b.p.out.String(), `"msg":"trap hit"`) {
				t.Errorf("no trap hit in the log:\n%s", tail(b.p.out.String(), 20))
			}
		})
	}
}

var delistRe = regexp.MustCompile(`delist\+([a-z2-7]{16})@e2e\.test`)

// Proof of control through Postfix: mail from the listed client to its
// delist+TOKEN address removes the listing; a wrong token, or the token
// from another client, does not.
func TestProofOfControlThroughPostfix(t *testing.T) {
	need(t, "postfix", "rbldnsd")
	for i, fe := range frontEnds {
		t.Run(fe, func(t *testing.T) {
			b, pf := startEvidence(t, fe, blmilterOpts{WebExtra: `delist_domain = "e2e.test"`})
			client, other := "198.18.4."+strconv.Itoa(10+i), "198.18.4."+strconv.Itoa(20+i)
			hitTrap(t, pf, client, fe)
			page := html.UnescapeString(b.get(t, "/ip/"+client))
			m := delistRe.FindStringSubmatch(page)
			if m == nil {
				t.Fatalf("no delist address on the page:\n%s", page)
			}
			delist := m[0]

			r, err := session(pf.Addr, sessionOpts{XClient: client, Rcpt: "delist+aaaaaaaaaaaaaaaa@e2e.test", Messages: 1})
			if err != nil || r.Code != 550 || r.Enhanced != "5.7.1" {
				t.Errorf("a wrong token from the listed client: %v %v, want its listing's 550 5.7.1", r, err)
			}
			r, err = session(pf.Addr, sessionOpts{XClient: other, Rcpt: delist, Messages: 1})
			if err != nil || r.Code != 550 || r.Enhanced != "5.1.1" {
				t.Errorf("the token from another client: %v %v, want 550 5.1.1", r, err)
			}
			if rep, _ := b.report(t, client); rep.Status != "listed" {
				t.Fatalf("a failed proof removed the listing")
			}

			r, err = session(pf.Addr, sessionOpts{XClient: client, Rcpt: delist, Helo: "mail.owner.example", Messages: 1})
			if err != nil || r.Code != 250 {
				t.Fatalf("the proof: %v %v, want the message taken (and discarded)", r, err)
			}
			rep, js := b.report(t, client)
			if rep.Status != "not_listed" || rep.History == nil || len(rep.History.Events) == 0 || rep.History.Events[0].By != "proof-of-control" {
				t.Errorf("after the proof: %s", js)
			}
			if r, err := session(pf.Addr, sessionOpts{XClient: client}); err != nil || r.Code != 250 {
				t.Errorf("mail after the proof: %v %v", r, err)
			}
		})
	}
}

// relay is a private Postfix that takes mail from loopback and delivers
// mail for requesterDomain into one maildir, which the tests read: the
// mails blmilter sends reach a real mailbox through a real MTA.
type relay struct {
	pf      *postfix
	maildir string
	seen    map[string]bool
}

func startRelay(t *testing.T) *relay {
	t.Helper()
	mail := tempDir(t, "mailbox")
	uid := postfixUID(t)
	if err := os.Chown(mail, uid, -1); err != nil {
		t.Fatal(err)
	}
	pf := startPostfix(t, postfixOpts{
		Extra: fmt.Sprintf(`
# deliver %[1]s into %[2]s/inbox/
virtual_mailbox_domains = %[1]s
virtual_mailbox_base = %[2]s
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:%[3]d
virtual_gid_maps = static:%[3]d
virtual_minimum_uid = 1
virtual_transport = virtual
`, requesterDomain, mail, uid),
		Master: "virtual   unix  -       n       n       -       -       virtual\n",
	})
	return &relay{pf: pf, maildir: filepath.Join(mail, "inbox", "new"), seen: map[string]bool{}}
}

// wait returns the next message delivered to the mailbox whose text
// contains want.
func (r *relay) wait(t *testing.T, want string) string {
	t.Helper()
	var got string
	testkit.WaitFor(t, "a mail containing "+strconv.Quote(want), 30*time.Second, func() error {
		es, _ := os.ReadDir(r.maildir)
		names := make([]string, 0, len(es))
		for _, e := range es {
			names = append(names, e.Name())
		}
		slices.Sort(names)
		for _, n := range names {
			if r.seen[n] {
				continue
			}
			b, err := os.ReadFile(filepath.Join(r.maildir, n))
			if err != nil || !strings.Contains(string(b), want) {
				continue
			}
			r.seen[n] = true
			got = string(b)
			return nil
		}
		return fmt.Errorf("%d messages, none new with it", len(names))
	})
	return got
}

// relayTOML points [web.smtp] at the relay.
func relayTOML(r *relay) string {
	return fmt.Sprintf(`
[web.smtp]
server = %q
from = "lookup@e2e.test"
starttls = false
`, r.pf.Addr)
}

var (
	csrfRe    = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	confirmRe = regexp.MustCompile(regexp.QuoteMeta(publicURL) + `(/confirm/[A-Za-z0-9_-]+)`)
	statusRe  = regexp.MustCompile(regexp.QuoteMeta(publicURL) + `(/request/[0-9]+-[A-Za-z0-9_-]+)`)
)

// post sends a form to the lookup service.
func (b *blmilter) post(t *testing.T, path string, form url.Values) string {
	t.Helper()
	resp, err := http.PostForm(b.Web+path, form)
	return okBody(t, "POST "+b.Web+path, resp, err)
}

// requestRemoval sends the removal form of ip's page.
func (b *blmilter) requestRemoval(t *testing.T, ip, email string) string {
	t.Helper()
	var m []string
	// A listing made by the command line reaches the daemon within its
	// poll interval.
	testkit.WaitFor(t, "the removal form on the page of "+ip, 10*time.Second, func() error {
		m = csrfRe.FindStringSubmatch(b.get(t, "/ip/"+ip))
		return testkit.Unless(m != nil, "no form")
	})
	return b.post(t, "/ip/"+ip+"/removal", url.Values{"csrf": {m[1]}, "email": {email}, "reason": {"cleaned the host"}})
}

// confirm follows the link of a confirmation mail, as its reader does.
func (b *blmilter) confirm(t *testing.T, mail string) string {
	t.Helper()
	m := confirmRe.FindStringSubmatch(mail)
	if m == nil {
		t.Fatalf("no confirmation link in the mail:\n%s", mail)
	}
	c := csrfRe.FindStringSubmatch(b.get(t, m[1]))
	if c == nil {
		t.Fatal("no button on the confirmation page")
	}
	return b.post(t, m[1], url.Values{"csrf": {c[1]}})
}

// Delist-and-deliver through Postfix: with defer_first the listed client
// gets 451 first; its owner removes the listing through the form, with the
// confirmation mail delivered through a real relay; the retry is delivered,
// and the page says so.
func TestDelistAndDeliverThroughPostfix(t *testing.T) {
	need(t, "postfix", "rbldnsd")
	for i, fe := range frontEnds {
		t.Run(fe, func(t *testing.T) {
			rl := startRelay(t)
			b, pf := startEvidence(t, fe, blmilterOpts{PolicyExtra: `defer_first = "4h"`, Extra: relayTOML(rl)})
			client := "198.18.5." + strconv.Itoa(10+i)
			hitTrap(t, pf, client, fe)

			r, err := session(pf.Addr, sessionOpts{XClient: client, Messages: 1})
			if err != nil {
				t.Fatal(err)
			}
			if r.Stage != "rcpt" || r.Code != 451 || r.Enhanced != "4.7.1" || !strings.Contains(r.Text, publicURL+"/ip/"+client) {
				t.Fatalf("first refusal: %v, want 451 4.7.1 with the link", r)
			}

			page := b.requestRemoval(t, client, "owner@"+requesterDomain)
			if !strings.Contains(page, "Check your mailbox") {
				t.Fatalf("the form:\n%s", page)
			}
			mail := rl.wait(t, "Confirm the removal of "+client)
			if page := b.confirm(t, mail); !strings.Contains(page, "Removed") {
				t.Fatalf("confirming:\n%s", page)
			}

			r, err = session(pf.Addr, sessionOpts{XClient: client, Messages: 1})
			if err != nil || r.Stage != "data" || r.Code != 250 {
				t.Fatalf("the retry: %v %v, want the message delivered", r, err)
			}
			page = b.get(t, "/ip/"+client)
			if !strings.Contains(page, "1 attempt deferred since") || !strings.Contains(page, "the next retry will be accepted") {
				t.Errorf("the page after the removal:\n%s", page)
			}
		})
	}
}

// The removal loop closes. Without a relay a request waits for the
// operator at once. With one, the requester confirms by mail, the operator
// is told, decides with the command line, and the requester gets the
// outcome by mail; the status page follows the request to the end.
func TestRemovalLoop(t *testing.T) {
	need(t, "postfix", "rbldnsd")
	bin := testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")

	t.Run("without a relay", func(t *testing.T) {
		b := startBlmilter(t, blmilterOpts{DNS: startRbldnsd(t), Web: true, LogLevel: "info", Extra: evidenceTOML})
		run(t, bin, "list", "add", "198.18.6.10", "-config", b.config, "-category", "spam-source")
		page := b.requestRemoval(t, "198.18.6.10", "owner@"+requesterDomain)
		m := statusRe.FindStringSubmatch(page)
		if !strings.Contains(page, "waits for the operator") || m == nil {
			t.Fatalf("the form without a relay:\n%s", page)
		}
		if st := b.get(t, m[1]); !strings.Contains(st, "Waiting for the operator") {
			t.Errorf("status page:\n%s", st)
		}
		out := run(t, bin, "requests", "list", "-config", b.config)
		if !strings.Contains(out, "waiting") || !strings.Contains(out, "owner@"+requesterDomain) {
			t.Errorf("requests list:\n%s", out)
		}
	})

	t.Run("with a relay", func(t *testing.T) {
		rl := startRelay(t)
		b := startBlmilter(t, blmilterOpts{DNS: startRbldnsd(t), Web: true, LogLevel: "info",
			WebExtra: `operator_email = "ops@` + requesterDomain + `"`, Extra: evidenceTOML + relayTOML(rl)})
		// A network: only an operator may remove it.
		run(t, bin, "list", "add", "198.18.7.0/24", "-config", b.config, "-category", "spam-source")
		page := b.requestRemoval(t, "198.18.7.10", "Owner@"+requesterDomain)
		m := statusRe.FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("no status link:\n%s", page)
		}
		status := m[1]
		if st := b.get(t, status); !strings.Contains(st, "Pending: waiting for your confirmation") {
			t.Errorf("pending:\n%s", st)
		}
		mail := rl.wait(t, "Confirm the removal of 198.18.7.10")
		if !strings.Contains(mail, publicURL+status) {
			t.Errorf("the confirmation mail has no status link:\n%s", mail)
		}
		if page := b.confirm(t, mail); !strings.Contains(page, "Waiting for the operator") {
			t.Fatalf("confirming:\n%s", page)
		}
		if st := b.get(t, status); !strings.Contains(st, "Waiting for the operator") {
			t.Errorf("waiting:\n%s", st)
		}
		ops := rl.wait(t, "waits for you")
		id := regexp.MustCompile(`blmilter requests approve ([0-9]+)`).FindStringSubmatch(ops)
		if id == nil {
			t.Fatalf("the operator's mail:\n%s", ops)
		}
		run(t, bin, "requests", "approve", id[1], "-config", b.config)
		outcome := rl.wait(t, "Approved: the removal of 198.18.7.10")
		if !strings.Contains(outcome, publicURL+status) {
			t.Errorf("the outcome mail:\n%s", outcome)
		}
		if st := b.get(t, status); !strings.Contains(st, "Removed") || !strings.Contains(st, "approved by the operator") {
			t.Errorf("status page at the end:\n%s", st)
		}
	})
}
