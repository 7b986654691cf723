package milter

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"
	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
)

const testLists = `
[web]
public_url = "https://lookup.example.org"

[[list]]
name = "Test ZEN"
zone = "zen.test"
weight = 3
on_error = "ignore"
codes = { "127.0.0.2" = "spam-source", "127.0.0.4-127.0.0.7" = "zombie" }

[[list]]
name = "Strict"
zone = "strict.test"
weight = 3
on_error = "tempfail"
`

// env is a blmilter milter with a real policy engine whose DNS lists are
// served by a loopback DNS server.
type env struct {
	dns     *dnstest.Server
	engine  *policy.Engine
	srv     *Server
	network string
	addr    string
	logs    *testkit.Buffer
}

var qname = testkit.QName

// newEnv starts the milter on network ("tcp" or "unix") with the test
// lists plus policyTOML (the body of a [policy] section).
func newEnv(t testing.TB, network, policyTOML string) *env {
	t.Helper()
	return newEnvOpts(t, network, policyTOML, Options{}, policy.Deps{})
}

// limits fills the limits a test leaves zero with the default config's.
func limits(o Options) Options {
	d := config.Defaults().Milter
	if o.ReadTimeout == 0 {
		o.ReadTimeout = d.ReadTimeout.Duration
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = d.WriteTimeout.Duration
	}
	if o.SessionTimeout == 0 {
		o.SessionTimeout = d.SessionTimeout.Duration
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = d.MaxConnections
	}
	return o
}

// newEnvOpts is newEnv with server options (the logger defaults to one that
// keeps the lines in env.logs, the limits to the default config's) and the
// engine's dependencies.
func newEnvOpts(t testing.TB, network, policyTOML string, opts Options, deps policy.Deps) *env {
	t.Helper()
	s := dnstest.Start(t)
	config := fmt.Sprintf("[dns]\nservers = [%q]\ntimeout = \"1s\"\n[policy]\nallow = [\"198.51.100.0/24\"]\n%s\n%s", s.Addr, policyTOML, testLists)
	eng := testengine.New(t, s, config, deps)
	logs := &testkit.Buffer{}
	var w io.Writer = logs
	if _, ok := t.(*testing.B); ok {
		// Format every line as in production, but do not keep them.
		w = io.Discard
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	srv := NewServer(func() *policy.Engine { return eng }, limits(opts))
	net, addr := startServer(t, srv, network)
	// Listed: zombie in Test ZEN. 192.0.2.9 fails in the strict list.
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, TXT: []string{"exploited host"}})
	s.Set(qname("2001:db8::7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
	s.Set(qname("2001:db8::8", "zen.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	s.Set(qname("192.0.2.9", "strict.test"), dnstest.Answer{Rcode: dns.RcodeServerFailure})
	return &env{dns: s, engine: eng, srv: srv, network: net, addr: addr, logs: logs}
}

func (e *env) session(t testing.TB) *gomilter.ClientSession {
	t.Helper()
	cs, err := newClient(e.network, e.addr).Session()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// connect opens a session for a client at ip, as an MTA does for a new
// SMTP connection, and expects blmilter to go on.
func (e *env) connect(t testing.TB, ip string) *gomilter.ClientSession {
	t.Helper()
	cs := e.session(t)
	act, err := cs.Conn("["+ip+"]", gomilter.FamilyInet, 40000, ip)
	expect(t, "connect", act, err, "continue")
	return cs
}

// expect checks a milter action: "continue", "accept" or "550 5.7.1 text".
func expect(t testing.TB, what string, act *gomilter.Action, err error, want string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	var got string
	switch act.Code {
	case gomilter.ActContinue:
		got = "continue"
	case gomilter.ActAccept:
		got = "accept"
	case gomilter.ActReplyCode:
		got = fmt.Sprintf("%d %s", act.SMTPCode, act.SMTPText)
	default:
		got = fmt.Sprintf("action %q", rune(act.Code))
	}
	if got != want {
		t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}

const (
	rejectListed = "550 5.7.1 Service unavailable; client [192.0.2.7] listed by Test ZEN (zombie); see https://lookup.example.org/ip/192.0.2.7"
)

func TestListedClientRejectedAtRcpt(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			e := newEnv(t, network, "")
			cs := e.connect(t, "192.0.2.7")
			act, err := cs.Mail("sender@example.org", nil)
			expect(t, "mail", act, err, "continue")
			act, err = cs.Rcpt("user@example.net", nil)
			expect(t, "rcpt", act, err, rejectListed)
			act, err = cs.Rcpt("other@example.net", nil)
			expect(t, "second rcpt", act, err, rejectListed)
			// The next message on the same connection is judged alike.
			if err := cs.Abort(); err != nil {
				t.Fatal(err)
			}
			act, err = cs.Mail("sender@example.org", nil)
			expect(t, "mail 2", act, err, "continue")
			act, err = cs.Rcpt("user@example.net", nil)
			expect(t, "rcpt 2", act, err, rejectListed)
			if n := e.dns.QueriesFor(qname("192.0.2.7", "zen.test"), dns.TypeA); n != 1 {
				t.Errorf("%d A queries for the client, want 1", n)
			}
		})
	}
}

func TestPostmasterAndAbuseAccepted(t *testing.T) {
	e := newEnv(t, "tcp", "")
	cs := e.connect(t, "192.0.2.7")
	act, err := cs.Mail("sender@example.org", nil)
	expect(t, "mail", act, err, "continue")
	for _, rcpt := range []string{"postmaster@example.net", "PostMaster@Example.Net", "abuse@example.org", "ABUSE@example.com", "postmaster", "<postmaster>", "<abuse@example.net>"} {
		act, err = cs.Rcpt(rcpt, nil)
		expect(t, rcpt, act, err, "continue")
	}
	for _, rcpt := range []string{"postmaster-list@example.net", "abuser@example.net", "user@postmaster.example"} {
		act, err = cs.Rcpt(rcpt, nil)
		expect(t, rcpt, act, err, rejectListed)
	}
}

func TestAuthenticatedClientAccepted(t *testing.T) {
	e := newEnv(t, "tcp", "")
	cs := e.connect(t, "192.0.2.7")
	if err := cs.Macros(gomilter.CodeMail, "{auth_authen}", "alice", "{auth_type}", "PLAIN"); err != nil {
		t.Fatal(err)
	}
	act, err := cs.Mail("alice@example.org", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs.Rcpt("user@example.net", nil)
	expect(t, "rcpt", act, err, "continue")
	// Authentication is per message: a next MAIL without it is judged.
	if err := cs.Abort(); err != nil {
		t.Fatal(err)
	}
	act, err = cs.Mail("sender@example.org", nil)
	expect(t, "unauthenticated mail", act, err, "continue")
	act, err = cs.Rcpt("user@example.net", nil)
	expect(t, "unauthenticated rcpt", act, err, rejectListed)
}

func TestClientsNeverLookedUp(t *testing.T) {
	tests := []struct {
		name   string
		host   string
		family gomilter.ProtoFamily
		addr   string
	}{
		{"allow-listed", "relay.example", gomilter.FamilyInet, "198.51.100.9"},
		{"loopback", "localhost", gomilter.FamilyInet, "127.0.0.1"},
		{"loopback 127.0.0.2", "localhost", gomilter.FamilyInet, "127.0.0.2"},
		{"ipv6 loopback", "localhost", gomilter.FamilyInet6, "::1"},
		{"unix socket", "localhost", gomilter.FamilyUnix, "/var/run/smtp.sock"},
		{"unknown", "unknown", gomilter.FamilyUnknown, ""},
	}
	e := newEnv(t, "tcp", "")
	// Every name under the test zones would be listed.
	e.dns.SetZone("zen.test", dnstest.Answer{A: []string{"127.0.0.4"}})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := e.session(t)
			act, err := cs.Conn(tt.host, tt.family, 40000, tt.addr)
			// Accept at connect: the MTA does not call blmilter again for this session.
			expect(t, "connect", act, err, "accept")
			if n := e.dns.Queries(); n != 0 {
				t.Fatalf("%d DNS queries for a client that must not be looked up", n)
			}
		})
	}
}

func TestRejectAtConnect(t *testing.T) {
	e := newEnv(t, "tcp", `reject_at = "connect"`)
	cs := e.session(t)
	act, err := cs.Conn("[192.0.2.7]", gomilter.FamilyInet, 40000, "192.0.2.7")
	expect(t, "connect", act, err, rejectListed)

	cs = e.session(t)
	act, err = cs.Conn("[192.0.2.20]", gomilter.FamilyInet, 40000, "192.0.2.20")
	expect(t, "clean connect", act, err, "continue")
	act, err = cs.Mail("sender@example.org", nil)
	expect(t, "clean mail", act, err, "continue")
	act, err = cs.Rcpt("user@example.net", nil)
	expect(t, "clean rcpt", act, err, "continue")
}

func TestTempfailOnListError(t *testing.T) {
	e := newEnv(t, "tcp", "")
	cs := e.connect(t, "192.0.2.9")
	act, err := cs.Mail("sender@example.org", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs.Rcpt("user@example.net", nil)
	expect(t, "rcpt", act, err, "451 4.7.1 Temporary problem checking client [192.0.2.9]; try again later")
	act, err = cs.Rcpt("postmaster@example.net", nil)
	expect(t, "postmaster", act, err, "continue")
}

func TestCleanClientAccepted(t *testing.T) {
	e := newEnv(t, "tcp", "")
	cs := e.session(t)
	act, err := cs.Conn("mail.example.com", gomilter.FamilyInet, 40000, "192.0.2.20")
	expect(t, "connect", act, err, "continue")
	act, err = cs.Mail("sender@example.org", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs.Rcpt("user@example.net", nil)
	expect(t, "rcpt", act, err, "continue")
	mods, act, err := cs.End()
	expect(t, "end of message", act, err, "continue")
	if len(mods) != 0 {
		t.Fatalf("clean message modified: %+v", mods)
	}
}

func TestTagAddsHeader(t *testing.T) {
	e := newEnv(t, "tcp", `action = "tag"`)
	cs := e.connect(t, "192.0.2.7")
	act, err := cs.Mail("sender@example.org", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs.Rcpt("user@example.net", nil)
	expect(t, "rcpt", act, err, "continue")
	mods, act, err := cs.End()
	expect(t, "end of message", act, err, "continue")
	if len(mods) != 1 || mods[0].Code != gomilter.ActAddHeader || mods[0].HeaderName != "X-Blmilter" {
		t.Fatalf("modifications %+v, want one X-Blmilter header", mods)
	}
	if v := mods[0].HeaderValue; !strings.HasPrefix(v, "score=3 hits=Test ZEN(zombie) ref=") {
		t.Fatalf("X-Blmilter: %q", v)
	}
	// The decision log names the same reference as the header.
	ref := mods[0].HeaderValue[strings.LastIndex(mods[0].HeaderValue, "=")+1:]
	e.srv.Close() // flushes the decision log
	if !strings.Contains(e.logs.String(), "ref="+ref) {
		t.Errorf("log does not name ref %s:\n%s", ref, e.logs)
	}
}

func TestClientAddressForms(t *testing.T) {
	const rejectV6 = "550 5.7.1 Service unavailable; client [2001:db8::7] listed by Test ZEN (zombie); see https://lookup.example.org/ip/2001:db8::7"
	const rejectV6b = "550 5.7.1 Service unavailable; client [2001:db8::8] listed by Test ZEN (spam-source); see https://lookup.example.org/ip/2001:db8::8"
	tests := []struct {
		name   string
		macros []string // connect macros
		host   string
		family gomilter.ProtoFamily
		addr   string
		want   string
	}{
		{name: "ipv6", host: "[2001:db8::7]", family: gomilter.FamilyInet6, addr: "2001:db8::7", want: rejectV6},
		{name: "ipv4-mapped", host: "[192.0.2.7]", family: gomilter.FamilyInet6, addr: "::ffff:192.0.2.7", want: rejectListed},
		// Sendmail writes IPv6 clients as "IPv6:..." in the connect address,
		// the host name (when there is no PTR) and {client_addr}.
		{name: "sendmail IPv6: host", host: "[IPv6:2001:db8::8]", family: gomilter.FamilyInet6, addr: "IPv6:2001:db8::8", want: rejectV6b},
		{name: "sendmail IPv6: client_addr", macros: []string{"{client_addr}", "IPv6:2001:db8::8"}, host: "mail.example", family: gomilter.FamilyInet6, addr: "IPv6:2001:db8::8", want: rejectV6b},
		{name: "sendmail underscore macro", macros: []string{"_", "mail.example [IPv6:2001:db8::8]"}, host: "mail.example", family: gomilter.FamilyInet6, addr: "IPv6:2001:db8::8", want: rejectV6b},
		{name: "client_addr for unknown family", macros: []string{"{client_addr}", "192.0.2.7"}, host: "mail.example", family: gomilter.FamilyUnknown, want: rejectListed},
		{name: "no address at all", host: "mail.example", family: gomilter.FamilyUnknown, want: "accept"},
	}
	e := newEnv(t, "tcp", "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := e.session(t)
			if tt.macros != nil {
				if err := cs.Macros(gomilter.CodeConn, tt.macros...); err != nil {
					t.Fatal(err)
				}
			}
			act, err := cs.Conn(tt.host, tt.family, 40000, tt.addr)
			if tt.want == "accept" {
				expect(t, "connect", act, err, "accept")
				return
			}
			expect(t, "connect", act, err, "continue")
			act, err = cs.Mail("sender@example.org", nil)
			expect(t, "mail", act, err, "continue")
			act, err = cs.Rcpt("user@example.net", nil)
			expect(t, "rcpt", act, err, tt.want)
		})
	}
}

func TestDecisionLog(t *testing.T) {
	e := newEnv(t, "tcp", "")
	cs := e.connect(t, "192.0.2.7")
	if err := cs.Macros(gomilter.CodeMail, "i", "4XyZ1"); err != nil {
		t.Fatal(err)
	}
	act, err := cs.Mail("sender@example.org", nil)
	expect(t, "mail", act, err, "continue")
	for rcpt, want := range map[string]string{"a@example.net": rejectListed, "b@example.net": rejectListed} {
		act, err = cs.Rcpt(rcpt, nil)
		expect(t, "rcpt "+rcpt, act, err, want)
	}
	act, err = cs.Rcpt("postmaster@example.net", nil)
	expect(t, "rcpt postmaster", act, err, "continue")
	// Lines are written off the session's path; Close flushes them.
	cs.Close()
	e.srv.Close()
	lines := strings.Split(strings.TrimSpace(e.logs.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2 (the reject and the postmaster exemption):\n%s", len(lines), e.logs)
	}
	for _, want := range []string{"ip=192.0.2.7", "action=reject", "stage=rcpt", "queue_id=4XyZ1", "ref=", "Test ZEN"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("reject log line lacks %q: %s", want, lines[0])
		}
	}
	if !strings.Contains(lines[1], "accepted_for=postmaster") {
		t.Errorf("exemption log line: %s", lines[1])
	}
}

func TestShutdownLetsBlmilterSessionFinish(t *testing.T) {
	e := newEnv(t, "tcp", "")
	cs := e.connect(t, "192.0.2.7")
	var done atomic.Bool
	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := e.srv.Shutdown(ctx)
		done.Store(true)
		shutdown <- err
	}()
	testkit.WaitFor(t, "the server to close", 5*time.Second, func() error {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return testkit.Unless(e.srv.closing.Load(), "not closing")
	})
	act, err := cs.Mail("sender@example.org", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs.Rcpt("user@example.net", nil)
	expect(t, "rcpt", act, err, rejectListed)
	if done.Load() {
		t.Fatal("Shutdown returned before the session ended")
	}
	cs.Close()
	select {
	case err := <-shutdown:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

func TestExemptRecipient(t *testing.T) {
	for rcpt, want := range map[string]string{
		"postmaster@example.org":             "postmaster",
		"<POSTMASTER@example.org>":           "postmaster",
		"postmaster":                         "postmaster",
		"<postmaster>":                       "postmaster",
		"abuse@example.org":                  "abuse",
		"Abuse":                              "abuse",
		`"postmaster"@example.org`:           "postmaster",
		"<@relay.example:abuse@example.org>": "abuse",
		"user@example.org":                   "",
		"postmaster.x@example.org":           "",
		"x.abuse@example.org":                "",
		"":                                   "",
		"@":                                  "",
	} {
		if got := exemptRecipient(rcpt); got != want {
			t.Errorf("exemptRecipient(%q) = %q, want %q", rcpt, got, want)
		}
	}
}

func TestReplyResponse(t *testing.T) {
	tests := []struct {
		reply policy.Reply
		want  string
	}{
		{policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "listed; see https://x/ip/1"}, "550 5.7.1 listed; see https://x/ip/1"},
		{policy.Reply{Code: 451, Enhanced: "4.7.1", Text: "try later"}, "451 4.7.1 try later"},
		// Sendmail reads the text as a format: a lone % would make it
		// replace the reply with its own.
		{policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "100% listed"}, "550 5.7.1 100%% listed"},
		{policy.Reply{Code: 550, Text: "x"}, "550 5.7.1 x"},
		// A reply that is not a refusal must never become an accept.
		{policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "x"}, "451 4.7.1 x"},
		{policy.Reply{Code: 550, Enhanced: "5.7.1"}, "550 5.7.1 Service unavailable"},
	}
	for _, tt := range tests {
		if got := replyText(tt.reply); got != tt.want {
			t.Errorf("replyText(%+v) = %q, want %q", tt.reply, got, tt.want)
		}
	}
}

func TestTagWithRejectAtConnect(t *testing.T) {
	e := newEnv(t, "tcp", "action = \"tag\"\nreject_at = \"connect\"")
	cs := e.connect(t, "192.0.2.7")
	var refs []string
	for i := 0; i < 2; i++ {
		act, err := cs.Mail("sender@example.org", nil)
		expect(t, "mail", act, err, "continue")
		act, err = cs.Rcpt("user@example.net", nil)
		expect(t, "rcpt", act, err, "continue")
		mods, act, err := cs.End()
		expect(t, "end of message", act, err, "continue")
		if len(mods) != 1 || mods[0].HeaderName != "X-Blmilter" {
			t.Fatalf("message %d: modifications %+v", i, mods)
		}
		v := mods[0].HeaderValue
		refs = append(refs, v[strings.LastIndex(v, "=")+1:])
	}
	cs.Close()
	e.srv.Close() // flushes the decision log
	// One decision for the connection: one log line, one reference.
	lines := strings.Split(strings.TrimSpace(e.logs.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "stage=connect") || !strings.Contains(lines[0], "ref="+refs[0]) || refs[0] != refs[1] {
		t.Fatalf("refs %v, log:\n%s", refs, e.logs)
	}
}
