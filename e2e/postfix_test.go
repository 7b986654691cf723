//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/blmilter/blmilter/internal/testkit"
)

// postfix is a private Postfix instance: its own config, queue and data
// directories under a temp dir, smtpd on a loopback port, mail for e2e.test
// accepted and discarded.
type postfix struct {
	dir  string // config_directory
	Addr string // smtpd, "127.0.0.1:port"
	log  string // maillog_file
}

// postfixOpts selects what the instance asks about each session.
type postfixOpts struct {
	Milter string // smtpd_milters, e.g. "inet:127.0.0.1:8895", with contrib/postfix/main.cf.milter
	Policy string // check_policy_service target, e.g. "inet:127.0.0.1:10045", with contrib/postfix/main.cf.policy
	Extra  string // more main.cf lines
	Master string // more master.cf lines
	// Postscreen puts postscreen in front of smtpd (its DNS list settings
	// go in Extra); it sees the TCP peer, so clients bind their address.
	Postscreen bool
}

// masterCF is master.cf without the smtpd line; nothing is chrooted.
const masterCF = `pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// startPostfix configures and starts a private Postfix and stops it when t
// ends (its maillog is logged if t failed).
func startPostfix(t testing.TB, o postfixOpts) *postfix {
	t.Helper()
	root := tempDir(t, "postfix")
	p := &postfix{dir: filepath.Join(root, "etc"), log: filepath.Join(root, "maillog")}
	for _, d := range []string{"etc", "queue", "data"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port := testkit.FreePort(t, "tcp")
	p.Addr = "127.0.0.1:" + strconv.Itoa(port)

	main := fmt.Sprintf(`# private Postfix instance for blmilter's end-to-end tests
compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
myhostname = mta.e2e.test
mydomain = e2e.test
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = all
mynetworks = 127.0.0.0/8
relay_domains = e2e.test
relay_transport = discard:e2e
default_transport = discard:e2e
local_transport = discard:e2e
alias_maps =
alias_database =
biff = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_relay_restrictions = reject_unauth_destination
# The sessions stop after RCPT, so nothing is ever delivered and the
# cleanup service would run out of in-flow tokens: without this, every
# session under load waits a second for one.
in_flow_delay = 0s
`, root)
	// The snippets admins are told to use, pointed at the test's ports: the
	// tests check them along with blmilter.
	if o.Milter != "" {
		main += contribSnippet(t, "postfix/main.cf.milter", "inet:127.0.0.1:8895", o.Milter)
	}
	if o.Policy != "" {
		// It sets smtpd_recipient_restrictions itself.
		main += contribSnippet(t, "postfix/main.cf.policy", "inet:127.0.0.1:10045", o.Policy)
	} else {
		main += "smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination\n"
	}
	main += o.Extra
	writeFile(t, filepath.Join(p.dir, "main.cf"), main)
	master := p.Addr + " inet n - n - - smtpd\n" + masterCF
	if o.Postscreen {
		master = p.Addr + " inet n - n - 1 postscreen\n" +
			"smtpd pass - - n - - smtpd\n" +
			"dnsblog unix - - n - 0 dnsblog\n" +
			"tlsproxy unix - - n - 0 tlsproxy\n" + masterCF
	}
	writeFile(t, filepath.Join(p.dir, "master.cf"), master+o.Master)
	if err := os.Chown(filepath.Join(root, "data"), postfixUID(t), -1); err != nil {
		t.Fatal(err)
	}
	checkNoWarnings(t, p.dir)

	bin := tool("postfix")
	// start creates the queue directories with their owners and modes.
	run(t, bin, "-c", p.dir, "start")
	unregister := onEmergency(func() { p.shutdown() })
	t.Cleanup(func() {
		unregister()
		p.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("Postfix maillog:\n%s", tail(string(b), 80))
		}
	})
	waitTCP(t, "postfix smtpd", p.Addr, nil)
	return p
}

// contribSnippet returns a file under contrib/ with its example address
// replaced by the test's.
func contribSnippet(t testing.TB, name, from, to string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "contrib", name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(from)) {
		t.Fatalf("contrib/%s does not contain %s", name, from)
	}
	return "\n# contrib/" + name + "\n" + strings.ReplaceAll(string(b), from, to) + "\n"
}

// checkNoWarnings fails t if Postfix warns about the main.cf in dir. Every
// Postfix process logs such a warning when it starts, and one of them can
// stop the whole instance: postlogd sends its own start-up messages to the
// postlog socket it is about to read, so when that socket's queue is full
// (net.unix.max_dgram_qlen datagrams, 10 where nothing raised it), with the
// warnings of the processes starting beside it, postlogd waits on itself,
// and then so does every process that logs: the master stops answering and
// smtpd never sends its greeting.
func checkNoWarnings(t testing.TB, dir string) {
	t.Helper()
	out := run(t, tool("postconf"), "-c", dir, "-n")
	var warnings []string
	for _, l := range lines(out) {
		if strings.Contains(l, "warning:") {
			warnings = append(warnings, l)
		}
	}
	if len(warnings) > 0 {
		t.Fatalf("the test's Postfix config draws warnings, which each Postfix process would log at start:\n%s",
			strings.Join(warnings, "\n"))
	}
}

// stop stops the instance and waits until its master has exited.
func (p *postfix) stop(t testing.TB) {
	if notes := p.shutdown(); notes != "" {
		t.Log(notes)
	}
}

// shutdown stops the instance with postfix stop, and kills its master's
// process group (the master and its children) if that does not end the
// master in time: postfix stop itself logs, so it hangs on a stuck
// instance. It returns what went wrong, if anything.
func (p *postfix) shutdown() string {
	pidFile := filepath.Join(filepath.Dir(p.dir), "queue", "pid", "master.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return "" // not running
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Sprintf("postfix master.pid: %v", err)
	}
	var notes []string
	// postfix stop waits for the master to terminate.
	if out, err := execOutWithin(20*time.Second, tool("postfix"), "-c", p.dir, "stop"); err != nil {
		notes = append(notes, fmt.Sprintf("postfix stop: %v\n%s", err, out))
	}
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if processAlive(pid) {
		// The master runs in a session and process group of its own (it
		// detaches); its children are in that group.
		if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
			syscall.Kill(-pid, syscall.SIGKILL)
			notes = append(notes, fmt.Sprintf("the Postfix master (pid %d) did not stop: killed its process group", pid))
		} else {
			notes = append(notes, fmt.Sprintf("the Postfix master (pid %d) did not stop, and leads no process group to kill", pid))
		}
	}
	return strings.Join(notes, "\n")
}

func postfixUID(t testing.TB) int {
	t.Helper()
	out := run(t, "id", "-u", "postfix")
	uid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("uid of postfix: %v", err)
	}
	return uid
}

// sessionOpts describes one SMTP client.
type sessionOpts struct {
	XClient string // client address given with XCLIENT ADDR=; "" sends no XCLIENT
	Helo    string // the EHLO name; default client.example.org
	Local   string // local address to bind the client socket to
	From    string // default sender@example.org
	Rcpt    string // default user@e2e.test
	// Messages, when not 0, is how many messages to send after the first
	// RCPT (MAIL and RCPT again before each one after the first); the
	// reply is then the last DATA's.
	Messages int
}

// reply is what the client was told: the reply to RCPT, or the first
// reply that was not a success.
type reply struct {
	Stage    string // "greeting", "xclient", "ehlo", "mail", "rcpt"
	Code     int
	Enhanced string // "5.7.1"
	Text     string
}

func (r reply) String() string {
	return fmt.Sprintf("%s: %d %s %s", r.Stage, r.Code, r.Enhanced, r.Text)
}

// sessionTimeout bounds one whole test session, from connect to QUIT. The
// longest a working MTA here makes a client wait is Postfix on a policy
// server that takes the connection and never answers: two tries of
// timeout=10s a second apart (smtpd_policy_service_try_limit), then
// default_action. A session stuck for longer fails with the stage it was
// in, and the test ends with the MTA's and blmilter's logs, instead of
// every later session waiting too until the suite's -timeout kills it
// without them.
const sessionTimeout = 30 * time.Second

// session drives one SMTP session against addr with emersion/go-smtp:
// greeting, EHLO, XCLIENT, EHLO again, MAIL, RCPT, QUIT. XCLIENT is sent
// on the raw connection first, because Postfix answers it with a new
// greeting, which the go-smtp client then reads as its own. The whole
// session has sessionTimeout; an error names the stage that failed.
func session(addr string, o sessionOpts) (reply, error) {
	if o.From == "" {
		o.From = "sender@example.org"
	}
	if o.Rcpt == "" {
		o.Rcpt = "user@e2e.test"
	}
	deadline := time.Now().Add(sessionTimeout)
	d := net.Dialer{Deadline: deadline}
	if o.Local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.Local)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return reply{}, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(deadline)

	br := bufio.NewReader(conn)
	// go-smtp sets a deadline for each command and clears it afterwards;
	// bufferedConn keeps them all within the session's.
	smtpConn := bufferedConn{r: br, Conn: conn, deadline: deadline}
	if o.XClient != "" {
		tp := textproto.NewConn(smtpConn)
		if code, msg, err := tp.ReadResponse(220); err != nil {
			return replyOf("greeting", code, msg, err)
		}
		if err := tp.PrintfLine("EHLO client.example.org"); err != nil {
			return reply{}, stageError("ehlo", err)
		}
		code, msg, err := tp.ReadResponse(250)
		if err != nil {
			return replyOf("ehlo", code, msg, err)
		}
		if !strings.Contains(msg, "XCLIENT") {
			return reply{}, fmt.Errorf("server does not offer XCLIENT: %q", msg)
		}
		ip, err := netip.ParseAddr(o.XClient)
		if err != nil {
			return reply{}, err
		}
		a := ip.String()
		if ip.Is6() {
			a = "IPV6:" + a
		}
		if err := tp.PrintfLine("XCLIENT NAME=[UNAVAILABLE] ADDR=%s", a); err != nil {
			return reply{}, stageError("xclient", err)
		}
		// The reply to XCLIENT is a new greeting; go-smtp reads it.
	}

	c := smtp.NewClient(smtpConn)
	c.CommandTimeout = sessionTimeout
	c.SubmissionTimeout = sessionTimeout
	defer c.Close()
	if o.Helo == "" {
		o.Helo = "client.example.org"
	}
	if err := c.Hello(o.Helo); err != nil {
		return smtpReply("ehlo", err)
	}
	if err := c.Mail(o.From, nil); err != nil {
		return smtpReply("mail", err)
	}
	if err := c.Rcpt(o.Rcpt, nil); err != nil {
		return smtpReply("rcpt", err)
	}
	for i := range o.Messages {
		if i > 0 {
			if err := c.Mail(o.From, nil); err != nil {
				return smtpReply("mail", err)
			}
			if err := c.Rcpt(o.Rcpt, nil); err != nil {
				return smtpReply("rcpt", err)
			}
		}
		w, err := c.Data()
		if err != nil {
			return smtpReply("data", err)
		}
		if _, err := fmt.Fprintf(w, "From: <%s>\r\nTo: <%s>\r\nSubject: end-to-end message %d\r\n\r\nHello.\r\n", o.From, o.Rcpt, i+1); err != nil {
			return reply{}, stageError("data", err)
		}
		if err := w.Close(); err != nil {
			return smtpReply("data", err)
		}
	}
	c.Quit() // the reply that counts came before; QUIT too ends by the deadline
	if o.Messages > 0 {
		return reply{Stage: "data", Code: 250}, nil
	}
	return reply{Stage: "rcpt", Code: 250}, nil
}

// bufferedConn reads through the bufio.Reader that may already hold the
// server's next reply, and keeps every deadline set on it at or before
// deadline (a zero one, "none", included).
type bufferedConn struct {
	r *bufio.Reader
	net.Conn
	deadline time.Time
}

func (b bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b bufferedConn) capped(t time.Time) time.Time {
	if t.IsZero() || t.After(b.deadline) {
		return b.deadline
	}
	return t
}

func (b bufferedConn) SetDeadline(t time.Time) error { return b.Conn.SetDeadline(b.capped(t)) }

func (b bufferedConn) SetReadDeadline(t time.Time) error {
	return b.Conn.SetReadDeadline(b.capped(t))
}

func (b bufferedConn) SetWriteDeadline(t time.Time) error {
	return b.Conn.SetWriteDeadline(b.capped(t))
}

// stageError says at which stage a session failed, and for a timeout that
// it was the session's.
func stageError(stage string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%s: no reply within the session's %v: %w", stage, sessionTimeout, err)
	}
	return fmt.Errorf("%s: %w", stage, err)
}

func replyOf(stage string, code int, msg string, err error) (reply, error) {
	var te *textproto.Error
	if errors.As(err, &te) {
		return reply{Stage: stage, Code: te.Code, Text: te.Msg}, nil
	}
	if err != nil {
		err = stageError(stage, err)
	}
	return reply{Stage: stage, Code: code, Text: msg}, err
}

func smtpReply(stage string, err error) (reply, error) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		r := reply{Stage: stage, Code: se.Code, Text: se.Message}
		if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
			e := se.EnhancedCode
			r.Enhanced = fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2])
		}
		return r, nil
	}
	return reply{Stage: stage}, stageError(stage, err)
}

// TestPostfixXCLIENTReachesMilter checks what the whole suite rests on: a
// milter sees the client address given with XCLIENT, not the TCP peer.
func TestPostfixXCLIENTReachesMilter(t *testing.T) {
	need(t, "postfix")
	noop := startNoopMilter(t, "-v")
	pf := startPostfix(t, postfixOpts{Milter: "inet:" + noop.addr})
	for _, ip := range []string{"198.18.2.99", "2001:db8:bad::99"} {
		r, err := session(pf.Addr, sessionOpts{XClient: ip})
		if err != nil || r.Code != 250 {
			t.Fatalf("session from %s: %v %v", ip, r, err)
		}
		testkit.WaitFor(t, "milter connect from "+ip, 5*time.Second, func() error {
			if !strings.Contains(noop.p.out.String(), "addr="+ip) {
				return fmt.Errorf("no connect with addr=%s in:\n%s", ip, noop.p.out.String())
			}
			return nil
		})
	}
}

// noopMilter is e2e/noopmilter running on a loopback port.
type noopMilter struct {
	p    *proc
	addr string // "127.0.0.1:port"
}

func startNoopMilter(t testing.TB, args ...string) noopMilter {
	t.Helper()
	port := testkit.FreePort(t, "tcp")
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p := startProc(t, testkit.Binary(t, "github.com/blmilter/blmilter/e2e/noopmilter"), append([]string{"-listen", addr}, args...)...)
	waitTCP(t, "noopmilter", addr, p)
	return noopMilter{p: p, addr: addr}
}
