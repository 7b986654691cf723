//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
)

// mtaCase is one SMTP client and what it must be told at RCPT.
type mtaCase struct {
	name     string
	client   string
	rcpt     string // "" is user@e2e.test
	want     int    // the RCPT reply code
	category string // for rejects: the category the reply names
}

// postfixCases run through Postfix with XCLIENT, milter and policy server alike.
var postfixCases = []mtaCase{
	{"listed spam source", clientSpam, "", 550, "spam-source"},
	{"listed zombie", clientZombie, "", 550, "zombie"},
	{"listed open proxy", clientProxy, "", 550, "open-proxy"},
	{"listed dynamic", clientDynamic, "", 550, "dynamic"},
	{"listed IPv6 zombie", clientZombie6, "", 550, "zombie"},
	{"unlisted", clientClean, "", 250, ""},
	{"unlisted IPv6", clientClean6, "", 250, ""},
	{"postmaster from listed", clientSpam, "postmaster@e2e.test", 250, ""},
	{"abuse from listed", clientZombie, "abuse@e2e.test", 250, ""},
	{"allow-listed and block-listed", clientAllowed, "", 250, ""},
}

// checkReply fails t unless r is what c must be told: a reject is
// 550 5.7.1 and links to the lookup page of the client's IP.
func checkReply(t *testing.T, c mtaCase, r reply) {
	t.Helper()
	if r.Stage != "rcpt" || r.Code != c.want {
		t.Fatalf("client %s rcpt %q: got %v, want %d at RCPT", c.client, c.rcpt, r, c.want)
	}
	if c.want != 550 {
		return
	}
	if r.Enhanced != "5.7.1" {
		t.Errorf("enhanced status %q, want 5.7.1 (%v)", r.Enhanced, r)
	}
	if link := publicURL + "/ip/" + c.client; !strings.Contains(r.Text, link) {
		t.Errorf("reply %q does not link to %s", r.Text, link)
	}
	if !strings.Contains(r.Text, c.client) {
		t.Errorf("reply %q does not name the client %s", r.Text, c.client)
	}
	if !strings.Contains(r.Text, c.category) {
		t.Errorf("reply %q does not name the category %s", r.Text, c.category)
	}
	if strings.Contains(r.Text, zoneBlock) {
		t.Errorf("reply %q shows the list's zone; it must show only its name", r.Text)
	}
}

// runPostfixCases drives every case through the Postfix at addr.
func runPostfixCases(t *testing.T, addr string) {
	t.Helper()
	for _, c := range postfixCases {
		var failed error
		t.Run(c.name, func(t *testing.T) {
			r, err := session(addr, sessionOpts{XClient: c.client, Rcpt: c.rcpt})
			if err != nil {
				failed = err
				t.Fatalf("session from %s: %v", c.client, err)
			}
			t.Logf("%s rcpt %s: %v", c.client, c.rcpt, r)
			checkReply(t, c, r)
		})
		stopIfNoReply(t, failed)
	}
}

// stopIfNoReply ends t after a session that got no reply (err from
// session): the MTA is stuck or gone, and every later session would wait
// for it as long. t's cleanups then log the MTA's and blmilter's output.
func stopIfNoReply(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("the MTA did not answer a session (%v); the remaining cases are not run", err)
	}
}

// checkListErrorLogged checks the answer 127.255.255.254 (what a list gives
// a refused resolver) left the client accepted and was logged as a list
// error.
func checkListErrorLogged(t *testing.T, b *blmilter) {
	t.Helper()
	testkit.WaitFor(t, "a logged error from "+listError, 5*time.Second, func() error {
		if b.listErrorLogged(clientClean, listError) {
			return nil
		}
		return fmt.Errorf("no decision about %s with an error from %q in blmilter's log", clientClean, listError)
	})
}

func TestPostfixMilter(t *testing.T) {
	need(t, "postfix", "rbldnsd")
	dns := startRbldnsd(t)
	b := startBlmilter(t, blmilterOpts{DNS: dns, WithError: true, NoPolicyd: true})
	pf := startPostfix(t, postfixOpts{Milter: "inet:" + b.Milter})

	runPostfixCases(t, pf.Addr)
	t.Run("127.255.255.254 is a list error, logged", func(t *testing.T) {
		checkListErrorLogged(t, b)
	})
	checkMessagesAndProtocol(t, b, pf.Addr, sessionOpts{XClient: clientClean})
	// milter_default_action = accept (contrib/postfix/main.cf.milter): with
	// blmilter gone, Postfix accepts as if there were no milter.
	t.Run("blmilter stopped: mail accepted", func(t *testing.T) {
		b.p.stop()
		r, err := session(pf.Addr, sessionOpts{XClient: clientSpam})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s with blmilter stopped: %v", clientSpam, r)
		if r.Stage != "rcpt" || r.Code != 250 {
			t.Fatalf("listed client with blmilter stopped: got %v, want 250 at RCPT", r)
		}
	})
}

func TestPostfixPolicyServer(t *testing.T) {
	need(t, "postfix", "rbldnsd")
	dns := startRbldnsd(t)
	b := startBlmilter(t, blmilterOpts{DNS: dns, WithError: true})
	pf := startPostfix(t, postfixOpts{Policy: "inet:" + b.Policy})

	runPostfixCases(t, pf.Addr)
	t.Run("127.255.255.254 is a list error, logged", func(t *testing.T) {
		checkListErrorLogged(t, b)
	})
	// default_action=DUNNO (contrib/postfix/main.cf.policy): with the policy
	// server gone, Postfix goes on as if it had said DUNNO.
	t.Run("blmilter stopped: mail accepted", func(t *testing.T) {
		b.p.stop()
		r, err := session(pf.Addr, sessionOpts{XClient: clientSpam})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s with blmilter stopped: %v", clientSpam, r)
		if r.Stage != "rcpt" || r.Code != 250 {
			t.Fatalf("listed client with the policy server stopped: got %v, want 250 at RCPT", r)
		}
	})
}

// TestPostfixPolicyServerSilentList checks that a list that does not answer
// cannot hold a policy request: blmilter answers Postfix when the list's
// DNS timeout (1s in the test config) or at the latest the [policy]
// deadline runs out, long before the list answers and before
// check_policy_service's timeout=10s would have Postfix give up on it, and
// lets the listed client through, since a DNS problem is never a reject.
func TestPostfixPolicyServerSilentList(t *testing.T) {
	need(t, "postfix", "rbldnsd")
	const listDelay = 5 * time.Second // past the deadline, within Postfix's timeout
	if listDelay <= policyDeadline {
		t.Fatalf("the list's delay %v must be longer than the policy deadline %v", listDelay, policyDeadline)
	}
	silent := startSlowList(t, startRbldnsd(t), zoneBlock, listDelay)
	b := startBlmilter(t, blmilterOpts{DNS: silent.Addr})
	pf := startPostfix(t, postfixOpts{Policy: "inet:" + b.Policy})

	start := time.Now()
	r, err := session(pf.Addr, sessionOpts{XClient: clientSpam})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("session from %s: %v", clientSpam, err)
	}
	t.Logf("%s with its list silent for %v: %v after %v", clientSpam, listDelay, r, took.Round(time.Millisecond))
	if r.Stage != "rcpt" || r.Code != 250 {
		t.Errorf("listed client whose list did not answer: got %v, want 250 at RCPT", r)
	}
	if took >= listDelay {
		t.Errorf("the session took %v: the policy answer waited for the list (%v), not for the deadline (%v)", took, listDelay, policyDeadline)
	}
	testkit.WaitFor(t, "blmilter's decision about "+clientSpam, 5*time.Second, func() error {
		return testkit.Unless(len(b.logLines(clientSpam)) > 0, "no decision about %s in blmilter's log", clientSpam)
	})
}
