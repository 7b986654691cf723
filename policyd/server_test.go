package policyd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
)

// Test clients. Their addresses are only data in requests: no packet goes
// to them.
const (
	listedIP   = "192.0.2.10"   // on bl.test
	cleanIP    = "192.0.2.11"   // on no list
	brokenIP   = "192.0.2.20"   // err.test answers SERVFAIL for it
	allowedIP  = "198.51.100.7" // in [policy] allow
	publicURL  = "https://lookup.example.org"
	listedLink = publicURL + "/ip/" + listedIP
)

// logBuffer collects log output from several goroutines.
type logBuffer struct{ testkit.Buffer }

// waitFor polls the log until it contains want.
func (l *logBuffer) waitFor(t *testing.T, want string) {
	t.Helper()
	testkit.WaitFor(t, fmt.Sprintf("%q in the log", want), 5*time.Second, func() error {
		return testkit.Unless(strings.Contains(l.String(), want), "log so far:\n%s", l.String())
	})
}

// newDNS starts the test DNS server with bl.test listing listedIP and
// err.test failing for brokenIP.
func newDNS(t testing.TB) *dnstest.Server {
	d := dnstest.Start(t)
	d.Set("10.2.0.192.bl.test", dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{"seen at spam traps"}})
	d.Set("20.2.0.192.err.test", dnstest.Answer{Rcode: dns.RcodeServerFailure})
	return d
}

// newEngine builds a real engine on the test DNS server. action is the
// [policy] action; extra is appended to [policy].
func newEngine(t testing.TB, d *dnstest.Server, action, extra string) *policy.Engine {
	t.Helper()
	conf := fmt.Sprintf(`
[web]
public_url = %q

[dns]
timeout = "1s"

[policy]
threshold = 3
action = %q
allow = ["198.51.100.0/24"]
%s

[[list]]
name = "Test BL"
zone = "bl.test"
weight = 3
health = false
codes = { "127.0.0.2" = "spam-source" }

[[list]]
name = "Broken BL"
zone = "err.test"
weight = 3
health = false
on_error = "tempfail"
`, publicURL, action, extra)
	return testengine.New(t, d, conf, policy.Deps{Logger: slog.New(slog.DiscardHandler)})
}

type testServer struct {
	srv     *Server
	network string
	addr    string
	log     *logBuffer
	served  chan error
}

// limits fills the limits a test leaves zero with the default config's.
func limits(o Options) Options {
	d := config.Defaults().Policyd
	if o.ReadTimeout == 0 {
		o.ReadTimeout = d.ReadTimeout.Duration
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = d.MaxConnections
	}
	return o
}

// start serves e on a new loopback listener ("tcp" or "unix").
func start(t testing.TB, e *policy.Engine, network string, cfg Options) *testServer {
	t.Helper()
	lb := &logBuffer{}
	ts := startLog(t, e, network, cfg, slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ts.log = lb
	return ts
}

func startLog(t testing.TB, e *policy.Engine, network string, cfg Options, logger *slog.Logger) *testServer {
	t.Helper()
	spec := "127.0.0.1:0"
	if network == "unix" {
		spec = "unix:" + filepath.Join(t.TempDir(), "policy.sock")
	}
	ln, err := Listen(spec, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{
		srv:     NewServer(func() *policy.Engine { return e }, limits(Options{Logger: logger, ReadTimeout: cfg.ReadTimeout, MaxConnections: cfg.MaxConnections})),
		network: network,
		addr:    ln.Addr().String(),
		served:  make(chan error, 1),
	}
	go func() { ts.served <- ts.srv.Serve(ln) }()
	t.Cleanup(func() {
		ts.srv.Close()
		if err := <-ts.served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

type client struct {
	t  testing.TB
	nc net.Conn
	r  *bufio.Reader
}

func (ts *testServer) dial(t testing.TB) *client {
	t.Helper()
	nc, err := net.DialTimeout(ts.network, ts.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, r: bufio.NewReader(nc)}
}

// rcpt is a Postfix RCPT request from ip to rcpt; extra lines are added.
func rcpt(ip, rcpt string, extra ...string) string {
	var b strings.Builder
	b.WriteString("request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n")
	b.WriteString("client_address=" + ip + "\nclient_name=unknown\nhelo_name=bot.example\n")
	b.WriteString("sender=spam@example.net\nrecipient=" + rcpt + "\nqueue_id=\ninstance=1.2.3\n")
	for _, e := range extra {
		b.WriteString(e + "\n")
	}
	b.WriteString("\n")
	return b.String()
}

func (c *client) send(s string) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// reply reads one reply and returns its action value.
func (c *client) reply() string {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read reply: %v", err)
	}
	empty, err := c.r.ReadString('\n')
	if err != nil || empty != "\n" {
		c.t.Fatalf("reply %q not ended by an empty line (%q, %v)", line, empty, err)
	}
	action, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "action=")
	if !ok {
		c.t.Fatalf("reply %q has no action=", line)
	}
	return action
}

func (c *client) ask(req string) string {
	c.t.Helper()
	c.send(req)
	return c.reply()
}

// closed asserts that the server closes the connection within wait.
func (c *client) closed(wait time.Duration) {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(wait))
	b, err := io.ReadAll(c.r)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatalf("connection still open after %v (read %q)", wait, b)
		}
	}
	if len(b) > 0 {
		c.t.Fatalf("got %q before the connection closed, want nothing", b)
	}
}

func TestDecisions(t *testing.T) {
	d := newDNS(t)
	e := newEngine(t, d, "reject", "")
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			ts := start(t, e, network, Options{})
			c := ts.dial(t)
			tests := []struct {
				name string
				req  string
				want string // exact action, or a prefix ending in "..."
			}{
				{"listed", rcpt(listedIP, "user@example.org"), "550 5.7.1 ..."},
				{"unlisted", rcpt(cleanIP, "user@example.org"), "DUNNO"},
				{"list error with on_error tempfail", rcpt(brokenIP, "user@example.org"), "451 4.7.1 ..."},
				{"IPv4-mapped IPv6", rcpt("::ffff:"+listedIP, "user@example.org"), "550 5.7.1 ..."},
				{"postmaster", rcpt(listedIP, "postmaster@example.org"), "DUNNO"},
				{"postmaster any case", rcpt(listedIP, "PostMaster@Example.ORG"), "DUNNO"},
				{"bare postmaster", rcpt(listedIP, "postmaster"), "DUNNO"},
				{"abuse", rcpt(listedIP, "abuse@example.com"), "DUNNO"},
				{"abuse with extension", rcpt(listedIP, "Abuse+report@example.com"), "DUNNO"},
				{"not quite postmaster", rcpt(listedIP, "postmaster2@example.org"), "550 5.7.1 ..."},
				{"sasl authenticated", rcpt(listedIP, "user@example.org", "sasl_method=PLAIN", "sasl_username=alice"), "DUNNO"},
				{"empty sasl_username", rcpt(listedIP, "user@example.org", "sasl_username="), "550 5.7.1 ..."},
				{"loopback", rcpt("127.0.0.1", "user@example.org"), "DUNNO"},
				{"allow network", rcpt(allowedIP, "user@example.org"), "DUNNO"},
				{"no protocol_state counts as RCPT", "client_address=" + listedIP + "\nrecipient=u@example.org\n\n", "550 5.7.1 ..."},
				{"CONNECT state", strings.Replace(rcpt(listedIP, ""), "RCPT", "CONNECT", 1), "DUNNO"},
				{"MAIL state", strings.Replace(rcpt(listedIP, ""), "RCPT", "MAIL", 1), "DUNNO"},
				{"DATA state", strings.Replace(rcpt(listedIP, "u@example.org"), "RCPT", "DATA", 1), "DUNNO"},
				{"END-OF-MESSAGE state", strings.Replace(rcpt(listedIP, "u@example.org"), "RCPT", "END-OF-MESSAGE", 1), "DUNNO"},
				{"NUL and 8-bit bytes elsewhere do not exempt", rcpt(listedIP, "u@example.org", "helo_name=\x00\xff\xfe"), "550 5.7.1 ..."},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					got := c.ask(tt.req)
					if prefix, ok := strings.CutSuffix(tt.want, "..."); ok {
						if !strings.HasPrefix(got, prefix) {
							t.Fatalf("action=%s, want %s", got, tt.want)
						}
					} else if got != tt.want {
						t.Fatalf("action=%s, want %s", got, tt.want)
					}
				})
			}
		})
	}
	if n := d.QueriesFor("1.0.0.127.bl.test", dns.TypeA); n != 0 {
		t.Errorf("loopback client looked up %d times", n)
	}
	if n := d.QueriesFor("7.100.51.198.bl.test", dns.TypeA); n != 0 {
		t.Errorf("allowed client looked up %d times", n)
	}
}

func TestRejectText(t *testing.T) {
	d := newDNS(t)
	ts := start(t, newEngine(t, d, "reject", ""), "tcp", Options{})
	c := ts.dial(t)
	got := c.ask(rcpt(listedIP, "user@example.org"))
	for _, want := range []string{"550 5.7.1 ", listedLink, "Test BL", "[" + listedIP + "]"} {
		if !strings.Contains(got, want) {
			t.Errorf("action=%s lacks %q", got, want)
		}
	}
	if strings.Contains(got, "bl.test") {
		t.Errorf("action=%s names the list's zone", got)
	}
	got = c.ask(rcpt(brokenIP, "user@example.org"))
	if !strings.HasPrefix(got, "451 4.7.1 ") || strings.Contains(got, "err.test") || strings.Contains(got, "SERVFAIL") {
		t.Errorf("tempfail action=%s: want 451 4.7.1 without zone or DNS detail", got)
	}
	ts.log.waitFor(t, "policy decision")
	for _, want := range []string{"stage=rcpt", "queue_id=", "reply=\"550 5.7.1"} {
		if !strings.Contains(ts.log.String(), want) {
			t.Errorf("decision log lacks %q:\n%s", want, ts.log)
		}
	}
}

func TestActions(t *testing.T) {
	d := newDNS(t)
	tests := []struct {
		action string
		first  string // reply to the first RCPT of a message from listedIP
		second string // reply to the next RCPT of the same message
	}{
		{"reject", "550 5.7.1 ", "550 5.7.1 "},
		{"tempfail", "451 4.7.1 ", "451 4.7.1 "},
		// A header is prepended once per message, not once per recipient.
		{"tag", "PREPEND X-Blmilter: ", "DUNNO"},
		{"log", "DUNNO", "DUNNO"},
	}
	for _, tt := range tests {
		t.Run(tt.action, func(t *testing.T) {
			ts := start(t, newEngine(t, d, tt.action, ""), "tcp", Options{})
			c := ts.dial(t)
			first := c.ask(rcpt(listedIP, "a@example.org"))
			if !strings.HasPrefix(first, tt.first) {
				t.Fatalf("first RCPT: action=%s, want %s...", first, tt.first)
			}
			second := c.ask(rcpt(listedIP, "b@example.org"))
			if !strings.HasPrefix(second, tt.second) {
				t.Fatalf("second RCPT: action=%s, want %s...", second, tt.second)
			}
			if tt.first == tt.second && first != second {
				t.Errorf("same message, different replies:\n%s\n%s", first, second)
			}
			// A new message (instance) is judged again.
			next := c.ask(strings.Replace(rcpt(listedIP, "c@example.org"), "instance=1.2.3", "instance=1.2.4", 1))
			if !strings.HasPrefix(next, tt.first) {
				t.Errorf("next message: action=%s, want %s...", next, tt.first)
			}
			if c.ask(rcpt(cleanIP, "a@example.org")) != "DUNNO" {
				t.Errorf("unlisted client not DUNNO")
			}
		})
	}
}

func TestRejectAtConnect(t *testing.T) {
	d := newDNS(t)
	ts := start(t, newEngine(t, d, "reject", `reject_at = "connect"`), "tcp", Options{})
	c := ts.dial(t)
	for _, state := range []string{"CONNECT", "HELO", "EHLO", "MAIL", "RCPT"} {
		req := strings.Replace(rcpt(listedIP, "u@example.org"), "protocol_state=RCPT", "protocol_state="+state, 1)
		if got := c.ask(req); !strings.HasPrefix(got, "550 5.7.1 ") {
			t.Errorf("%s: action=%s, want 550 5.7.1", state, got)
		}
	}
	req := strings.Replace(rcpt(listedIP, "u@example.org"), "protocol_state=RCPT", "protocol_state=DATA", 1)
	if got := c.ask(req); got != "DUNNO" {
		t.Errorf("DATA: action=%s, want DUNNO", got)
	}
}

// TestBadInput sends each kind of bad input on one connection while a
// second, healthy connection keeps being served.
func TestBadInput(t *testing.T) {
	d := newDNS(t)
	e := newEngine(t, d, "reject", "")
	ts := start(t, e, "tcp", Options{ReadTimeout: time.Second})
	tests := []struct {
		name  string
		input string
		reply string // "" means the connection must be closed without a reply
		log   string
	}{
		{"line too long", "client_address=" + listedIP + "\nhelo_name=" + strings.Repeat("x", MaxLineLength) + "\n\n", "", "attribute line too long"},
		{"too many attributes", strings.Repeat("x=y\n", MaxAttributes+1) + "\n", "", "too many attributes"},
		{"missing client_address", "protocol_state=RCPT\nrecipient=u@example.org\n\n", "DUNNO", "without a valid client_address"},
		{"malformed client_address", rcpt("192.0.2.999", "u@example.org"), "DUNNO", "client_address=192.0.2.999"},
		{"garbage client_address", rcpt("\x00\xff", "u@example.org"), "DUNNO", "without a valid client_address"},
		{"line without '='", rcpt(listedIP, "u@example.org", "\x00\x01garbage\xff"), "DUNNO", "malformed policy request"},
		{"empty request", "\n", "DUNNO", "without a valid client_address"},
		{"unknown request type", strings.Replace(rcpt(listedIP, "u@example.org"), "smtpd_access_policy", "other", 1), "DUNNO", "unknown policy request type"},
		{"request never finished", "client_address=" + listedIP + "\nrecipient=", "", "request not finished in time"},
		{"binary garbage without newline", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "", "request not finished in time"},
		{"closed in the middle", "client_address=" + listedIP + "\n", "", "in the middle of a request"},
	}
	// A healthy connection asks all along; every bad input must leave it
	// served.
	healthy := ts.dial(t)
	var served atomic.Int64
	stop := make(chan struct{})
	pingErr := make(chan error, 1)
	go func() { pingErr <- ping(healthy, stop, &served) }()
	defer func() {
		close(stop)
		if err := <-pingErr; err != nil {
			t.Errorf("healthy connection: %v", err)
		}
	}()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := served.Load()
			bad := ts.dial(t)
			// The server may close before it read everything: ignore
			// write errors where a close is expected.
			if _, err := io.WriteString(bad.nc, tt.input); err != nil && tt.reply != "" {
				t.Fatal(err)
			}
			if tt.name == "closed in the middle" {
				bad.nc.(*net.TCPConn).CloseWrite()
			}
			if tt.reply == "" {
				bad.closed(5 * time.Second)
			} else {
				if got := bad.reply(); got != tt.reply {
					t.Fatalf("action=%s, want %s", got, tt.reply)
				}
				// The connection stays usable.
				if got := bad.ask(rcpt(listedIP, "u@example.org")); !strings.HasPrefix(got, "550 5.7.1 ") {
					t.Fatalf("after bad request: action=%s", got)
				}
			}
			ts.log.waitFor(t, tt.log)
			deadline := time.Now().Add(5 * time.Second)
			for served.Load() < before+2 {
				if time.Now().After(deadline) {
					t.Fatal("healthy connection not served meanwhile")
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// ping asks on c every 20 ms until stop, alternating a listed and an
// unlisted client, and counts the right answers.
func ping(c *client, stop <-chan struct{}, served *atomic.Int64) error {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		case <-time.After(20 * time.Millisecond):
		}
		ip, want := cleanIP, "action=DUNNO\n"
		if i%2 == 0 {
			ip, want = listedIP, "action=550 5.7.1 "
		}
		c.nc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c.nc, rcpt(ip, "u@example.org")); err != nil {
			return err
		}
		line, err := c.r.ReadString('\n')
		if err != nil {
			return err
		}
		if _, err := c.r.ReadString('\n'); err != nil {
			return err
		}
		if !strings.HasPrefix(line, want) {
			return fmt.Errorf("reply %q, want %q", line, want)
		}
		served.Add(1)
	}
}

// An idle connection is closed after the read timeout; one that keeps
// asking is not.
func TestReadTimeout(t *testing.T) {
	d := newDNS(t)
	ts := start(t, newEngine(t, d, "reject", ""), "tcp",
		Options{ReadTimeout: 600 * time.Millisecond})
	idle := ts.dial(t)
	busy := ts.dial(t)
	for range 5 {
		time.Sleep(200 * time.Millisecond)
		if got := busy.ask(rcpt(cleanIP, "u@example.org")); got != "DUNNO" {
			t.Fatalf("busy connection: action=%s", got)
		}
	}
	idle.closed(5 * time.Second)
	if got := busy.ask(rcpt(cleanIP, "u@example.org")); got != "DUNNO" {
		t.Fatalf("busy connection after the idle one was closed: action=%s", got)
	}
}

func TestMaxConnections(t *testing.T) {
	d := newDNS(t)
	ts := start(t, newEngine(t, d, "reject", ""), "tcp", Options{MaxConnections: 2})
	a, b := ts.dial(t), ts.dial(t)
	for _, c := range []*client{a, b} {
		if got := c.ask(rcpt(cleanIP, "u@example.org")); got != "DUNNO" {
			t.Fatalf("action=%s", got)
		}
	}
	extra := ts.dial(t)
	io.WriteString(extra.nc, rcpt(cleanIP, "u@example.org"))
	extra.closed(5 * time.Second)
	ts.log.waitFor(t, "too many connections")
	// The ones within the limit keep working, and a slot frees up when one
	// of them goes away.
	if got := a.ask(rcpt(listedIP, "u@example.org")); !strings.HasPrefix(got, "550 ") {
		t.Fatalf("action=%s", got)
	}
	b.nc.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := ts.dial(t)
		io.WriteString(c.nc, rcpt(cleanIP, "u@example.org"))
		c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := c.r.ReadString('\n')
		if err == nil && line == "action=DUNNO\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after a connection closed: %q %v", line, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestShutdown(t *testing.T) {
	d := newDNS(t)
	ts := start(t, newEngine(t, d, "reject", ""), "tcp", Options{})
	idle := ts.dial(t)
	if got := idle.ask(rcpt(cleanIP, "u@example.org")); got != "DUNNO" {
		t.Fatalf("action=%s", got)
	}
	busy := ts.dial(t)
	half := rcpt(listedIP, "u@example.org")
	busy.send(half[:20])
	waitConns(t, ts.srv, 1, 1)

	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(context.Background()) }()
	idle.closed(5 * time.Second)
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a request in progress", err)
	case <-time.After(100 * time.Millisecond):
	}
	busy.send(half[20:])
	if got := busy.reply(); !strings.HasPrefix(got, "550 5.7.1 ") {
		t.Fatalf("request in progress during shutdown: action=%s", got)
	}
	busy.closed(5 * time.Second)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last request")
	}
	if err := <-ts.served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v, want ErrServerClosed", err)
	}
	ts.served <- ErrServerClosed // for the cleanup
	if c, err := net.DialTimeout("tcp", ts.addr, time.Second); err == nil {
		c.Close()
		t.Fatal("listener still accepts after Shutdown")
	}
	ln, err := Listen("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := ts.srv.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown = %v, want ErrServerClosed", err)
	}
}

// waitConns waits until the server has exactly busy connections inside a
// request and idle ones waiting for one, so that Shutdown sees them so.
func waitConns(t *testing.T, s *Server, busy, idle int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, i := 0, 0
		s.mu.Lock()
		for c := range s.conns {
			if c.idle.Load() {
				i++
			} else {
				b++
			}
		}
		s.mu.Unlock()
		if b == busy && i == idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d busy and %d idle connections, want %d and %d", b, i, busy, idle)
		}
		time.Sleep(time.Millisecond)
	}
}

// Shutdown gives up when its context ends; Close then ends everything.
func TestShutdownTimeout(t *testing.T) {
	d := newDNS(t)
	ts := start(t, newEngine(t, d, "reject", ""), "tcp", Options{})
	busy := ts.dial(t)
	busy.send("client_address=" + listedIP + "\n")
	waitConns(t, ts.srv, 1, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if err := ts.srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	busy.closed(5 * time.Second)
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	t.Run("tcp forms", func(t *testing.T) {
		for _, spec := range []string{"127.0.0.1:0", "inet:127.0.0.1:0", "tcp:127.0.0.1:0", "inet6:[::1]:0"} {
			ln, err := Listen(spec, 0)
			if err != nil {
				if spec == "inet6:[::1]:0" {
					t.Logf("%s: %v (no IPv6 loopback here)", spec, err)
					continue
				}
				t.Fatalf("%s: %v", spec, err)
			}
			ln.Close()
		}
	})
	t.Run("bad specs", func(t *testing.T) {
		for _, spec := range []string{"", "unix:", "10045", "localhost"} {
			if ln, err := Listen(spec, 0); err == nil {
				ln.Close()
				t.Errorf("%q: no error", spec)
			}
		}
	})
	t.Run("unix socket mode", func(t *testing.T) {
		path := filepath.Join(dir, "mode.sock")
		ln, err := Listen("unix:"+path, 0o640)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o640 {
			t.Errorf("mode %v, want 0640", fi.Mode().Perm())
		}
	})
}

func TestIsRoleRecipient(t *testing.T) {
	tests := []struct {
		rcpt string
		want bool
	}{
		{"postmaster@example.org", true},
		{"POSTMASTER@example.org", true},
		{"postmaster", true},
		{"Postmaster", true},
		{"abuse@example.org", true},
		{"abuse+spam@example.org", true},
		{"postmaster@sub.example.org", true},
		{"postmasters@example.org", false},
		{"my-abuse@example.org", false},
		{"user@postmaster.example.org", false},
		{"", false},
		{"@example.org", false},
	}
	for _, tt := range tests {
		t.Run(tt.rcpt, func(t *testing.T) {
			if got := isRoleRecipient(tt.rcpt); got != tt.want {
				t.Errorf("isRoleRecipient(%q) = %v, want %v", tt.rcpt, got, tt.want)
			}
		})
	}
}

func TestFormatAction(t *testing.T) {
	tests := []struct {
		name   string
		action policy.Action
		reply  policy.Reply
		want   string
	}{
		{"reject", policy.ActionReject, policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "listed; see x"}, "550 5.7.1 listed; see x"},
		{"reject with a 4xx code stays a reject", policy.ActionReject, policy.Reply{Code: 451, Enhanced: "4.7.1", Text: "t"}, "550 5.7.1 t"},
		{"reject without a code", policy.ActionReject, policy.Reply{Text: "t"}, "550 5.7.1 t"},
		{"tempfail", policy.ActionTempfail, policy.Reply{Code: 451, Enhanced: "4.7.1", Text: "t"}, "451 4.7.1 t"},
		{"tempfail with a 5xx code stays a tempfail", policy.ActionTempfail, policy.Reply{Code: 554, Enhanced: "5.7.1", Text: "t"}, "451 4.7.1 t"},
		{"tempfail with another 4xx code", policy.ActionTempfail, policy.Reply{Code: 450, Enhanced: "4.7.25", Text: "t"}, "450 4.7.25 t"},
		{"newlines cannot end the reply", policy.ActionReject, policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "a\r\n\naction=OK"}, "550 5.7.1 a   action=OK"},
		{"tag", policy.ActionTag, policy.Reply{Header: "listed by Test BL (spam-source)"}, "PREPEND X-Blmilter: listed by Test BL (spam-source)"},
		{"tag without a header", policy.ActionTag, policy.Reply{}, "DUNNO"},
		{"accept", policy.ActionAccept, policy.Reply{}, "DUNNO"},
		{"log", policy.ActionLog, policy.Reply{Code: 550}, "DUNNO"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatAction(tt.action, &tt.reply); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseClientAddress(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" means invalid
	}{
		{"192.0.2.1", "192.0.2.1"},
		{"2001:db8::1", "2001:db8::1"},
		{"IPv6:2001:db8::1", "2001:db8::1"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
		{"fe80::1%eth0", "fe80::1"},
		{"unknown", ""},
		{"", ""},
		{" 192.0.2.1", ""},
		{"192.0.2.1/32", ""},
		{"[192.0.2.1]", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ip, ok := parseClientAddress(tt.in)
			got := ""
			if ok {
				got = ip.String()
			}
			if got != tt.want {
				t.Errorf("parseClientAddress(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// BenchmarkPolicyRequest measures a request and its reply over loopback
// with the verdict in the engine's cache: the cost Postfix sees per RCPT.
// Two messages alternate so that every request asks the engine.
func BenchmarkPolicyRequest(b *testing.B) {
	d := newDNS(b)
	e := newEngine(b, d, "reject", "")
	// Decisions are logged as in production (text, level info), to nowhere.
	ts := startLog(b, e, "tcp", Options{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, bc := range []struct {
		name, ip, want string
	}{
		{"unlisted", cleanIP, "action=DUNNO\n"},
		{"listed", listedIP, "action=550 5.7.1 "},
	} {
		reqs := [][]byte{
			[]byte(rcpt(bc.ip, "user@example.org")),
			[]byte(strings.Replace(rcpt(bc.ip, "user@example.org"), "instance=1.2.3", "instance=1.2.4", 1)),
		}
		b.Run(bc.name, func(b *testing.B) {
			c := ts.dial(b)
			c.nc.SetDeadline(time.Now().Add(10 * time.Minute))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if _, err := c.nc.Write(reqs[i&1]); err != nil {
					b.Fatal(err)
				}
				line, err := c.r.ReadSlice('\n')
				if err != nil || !bytes.HasPrefix(line, []byte(bc.want)) {
					b.Fatalf("reply %q, %v", line, err)
				}
				if _, err := c.r.ReadSlice('\n'); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				nc, err := net.Dial("tcp", ts.addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(10 * time.Minute))
				r := bufio.NewReader(nc)
				for i := 0; pb.Next(); i++ {
					if _, err := nc.Write(reqs[i&1]); err != nil {
						b.Error(err)
						return
					}
					line, err := r.ReadSlice('\n')
					if err != nil || !bytes.HasPrefix(line, []byte(bc.want)) {
						b.Errorf("reply %q, %v", line, err)
						return
					}
					if _, err := r.ReadSlice('\n'); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
		})
	}
}

// A reload swaps the engine under open connections: the next request uses
// the new one, even within the same message; no engine means DUNNO.
func TestEngineSwap(t *testing.T) {
	d := newDNS(t)
	reject, tag := newEngine(t, d, "reject", ""), newEngine(t, d, "tag", "")
	var cur atomic.Pointer[policy.Engine]
	cur.Store(reject)
	ln, err := Listen("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(cur.Load, limits(Options{}))
	go srv.Serve(ln)
	defer srv.Close()
	ts := &testServer{srv: srv, network: "tcp", addr: ln.Addr().String()}
	c := ts.dial(t)
	if got := c.ask(rcpt(listedIP, "a@example.org")); !strings.HasPrefix(got, "550 5.7.1 ") {
		t.Fatalf("reject engine: action=%s", got)
	}
	cur.Store(tag)
	if got := c.ask(rcpt(listedIP, "b@example.org")); !strings.HasPrefix(got, "PREPEND X-Blmilter: ") {
		t.Fatalf("tag engine: action=%s", got)
	}
	cur.Store(nil)
	if got := c.ask(rcpt(listedIP, "c@example.org")); got != "DUNNO" {
		t.Fatalf("no engine: action=%s", got)
	}
}

// A check that panics lets the client through and the server goes on.
func TestPanicFailsOpen(t *testing.T) {
	// A real engine whose site list fails in the middle of every check.
	broken := testengine.New(t, newDNS(t), "[[list]]\nname = \"site\"\nstore = true\n", policy.Deps{StoreList: panicList{}})
	ln, err := Listen("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	lb := &logBuffer{}
	var panics atomic.Int64
	srv := NewServer(func() *policy.Engine { return broken }, limits(Options{Logger: slog.New(slog.NewTextHandler(lb, nil)), OnPanic: func() { panics.Add(1) }}))
	go srv.Serve(ln)
	defer srv.Close()
	ts := &testServer{srv: srv, network: "tcp", addr: ln.Addr().String(), log: lb}
	c := ts.dial(t)
	for range 2 {
		if got := c.ask(rcpt(listedIP, "u@example.org")); got != "DUNNO" {
			t.Fatalf("action=%s, want DUNNO", got)
		}
	}
	lb.waitFor(t, "policy check panicked")
	if panics.Load() != 2 {
		t.Errorf("panics counted: %d, want 2", panics.Load())
	}
}

// A panic outside the check (here in the answer hook) ends that
// connection alone: it is counted, and the server takes the next one.
func TestConnectionPanicEndsOneConnection(t *testing.T) {
	e := newEngine(t, newDNS(t), "reject", "")
	ln, err := Listen("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	lb := &logBuffer{}
	var panics, answers atomic.Int64
	srv := NewServer(func() *policy.Engine { return e }, limits(Options{
		Logger:  slog.New(slog.NewTextHandler(lb, nil)),
		OnPanic: func() { panics.Add(1) },
		OnAnswer: func(kind string) {
			if answers.Add(1) == 1 {
				panic("metrics bug")
			}
		},
	}))
	go srv.Serve(ln)
	defer srv.Close()
	ts := &testServer{srv: srv, network: "tcp", addr: ln.Addr().String(), log: lb}
	c := ts.dial(t)
	if got := c.ask(rcpt(listedIP, "u@example.org")); !strings.HasPrefix(got, "550 ") {
		t.Fatalf("first answer %q, want 550 (written before the hook panicked)", got)
	}
	c.closed(5 * time.Second)
	lb.waitFor(t, "policy connection panicked")
	if panics.Load() != 1 {
		t.Errorf("panics counted: %d, want 1", panics.Load())
	}
	c2 := ts.dial(t)
	if got := c2.ask(rcpt(cleanIP, "u@example.org")); got != "DUNNO" {
		t.Errorf("next connection: %q, want DUNNO", got)
	}
}

// panicList is a site list whose lookup panics.
type panicList struct{}

func (panicList) Lookup(netip.Addr) (string, string, bool) { panic("site list broken") }

func TestAnswerKind(t *testing.T) {
	for action, want := range map[string]string{
		"550 5.7.1 Service unavailable; client [192.0.2.7] listed": "REJECT",
		"451 4.7.1 Temporary problem":                              "DEFER",
		"DUNNO":                                                    "DUNNO",
		"PREPEND X-Blmilter: score=3":                              "PREPEND",
	} {
		if got := AnswerKind(action); got != want {
			t.Errorf("AnswerKind(%q) = %q, want %q", action, got, want)
		}
	}
}
