package milter

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/policy"
)

// rawClient speaks the milter protocol byte by byte, as a hostile or
// broken MTA would: nothing is checked before it is sent.
type rawClient struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, network, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

// packet is one milter packet: length, cmd, data.
func packet(cmd byte, data ...[]byte) []byte {
	n := 1
	for _, d := range data {
		n += len(d)
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(n))
	b = append(b, cmd)
	for _, d := range data {
		b = append(b, d...)
	}
	return b
}

// cstrings is the strings, each NUL-terminated.
func cstrings(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = append(b, s...)
		b = append(b, 0)
	}
	return b
}

// optNeg is the negotiation Postfix 3.x sends: version 6, all actions and
// protocol steps offered.
func optNeg() []byte {
	d := binary.BigEndian.AppendUint32(nil, 6)
	d = binary.BigEndian.AppendUint32(d, 0x1ff)
	d = binary.BigEndian.AppendUint32(d, 0x1fffff)
	return packet(cmdOptNeg, d)
}

// connectPacket is CONNECT for an IPv4 client at ip, as Postfix sends it.
func connectPacket(ip string) []byte {
	d := append(cstrings("["+ip+"]"), '4', 0x9c, 0x40)
	return packet(cmdConnect, d, cstrings(ip))
}

func mailPacket() []byte            { return packet(cmdMail, cstrings("<sender@example.org>")) }
func rcptPacket(rcpt string) []byte { return packet(cmdRcpt, cstrings("<"+rcpt+">")) }

func (r *rawClient) send(pkts ...[]byte) {
	r.t.Helper()
	for _, p := range pkts {
		if _, err := r.c.Write(p); err != nil {
			r.t.Fatalf("write: %v", err)
		}
	}
}

// read reads one reply: "continue", "accept", "550 ...", "negotiated" or
// "header NAME: VALUE".
func (r *rawClient) read() (string, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r.br, hdr[:]); err != nil {
		return "", err
	}
	data := make([]byte, binary.BigEndian.Uint32(hdr[:4])-1)
	if _, err := io.ReadFull(r.br, data); err != nil {
		return "", err
	}
	switch hdr[4] {
	case respContinue:
		return "continue", nil
	case respAccept:
		return "accept", nil
	case respOptNeg:
		return "negotiated", nil
	case respReplyCode:
		return strings.TrimSuffix(string(data), "\x00"), nil
	case respAddHeader:
		name, value, _ := strings.Cut(strings.TrimSuffix(string(data), "\x00"), "\x00")
		return "header " + name + ": " + value, nil
	}
	return fmt.Sprintf("reply %q %q", hdr[4], data), nil
}

func (r *rawClient) expect(what, want string) {
	r.t.Helper()
	got, err := r.read()
	if err != nil {
		r.t.Fatalf("%s: %v, want %q", what, err, want)
	}
	if got != want {
		r.t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}

// expectClosed reads until the server closes the connection, which must
// happen without any further reply.
func (r *rawClient) expectClosed(what string) {
	r.t.Helper()
	got, err := r.read()
	if err == nil {
		r.t.Fatalf("%s: got reply %q, want the connection closed", what, got)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !isReset(err) {
		r.t.Fatalf("%s: %v, want the connection closed", what, err)
	}
}

// closedAfter reads (and drops) what the server sends until it closes the
// connection, and then says how long after start that was.
func (r *rawClient) closedAfter(start time.Time) <-chan time.Duration {
	closed := make(chan time.Duration, 1)
	go func() {
		io.Copy(io.Discard, r.br)
		closed <- time.Since(start)
	}()
	return closed
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(op.Err.Error(), "reset")
}

// judged runs a well-formed session for ip through go-milter's client and
// checks the reply at RCPT.
func (e *env) judged(t testing.TB, ip, want string) {
	t.Helper()
	cs := e.connect(t, ip)
	act, err := cs.Mail("sender@example.org", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs.Rcpt("user@example.net", nil)
	expect(t, "rcpt", act, err, want)
	cs.Close()
}

// countPanics returns Options with an OnPanic that counts into n.
func countPanics(n *atomic.Int64) Options {
	return Options{OnPanic: func() { n.Add(1) }}
}

func TestDoubleConnectEndsOnlyThatConnection(t *testing.T) {
	var panics atomic.Int64
	e := newEnvOpts(t, "tcp", "", countPanics(&panics), policy.Deps{})
	// A slow answer keeps the first CONNECT's check running while the
	// second one comes.
	e.dns.Set(qname("192.0.2.30", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, Delay: 100 * time.Millisecond})

	r := dialRaw(t, e.network, e.addr)
	r.send(optNeg())
	r.expect("negotiation", "negotiated")
	r.send(connectPacket("192.0.2.30"))
	r.expect("connect", "continue")
	// One write: the server may close before a second one.
	r.send(append(append(connectPacket("192.0.2.30"), mailPacket()...), rcptPacket("user@example.net")...))
	r.expectClosed("second CONNECT")

	// A stream of such sessions, all at once.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial(e.network, e.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(append(append(append(optNeg(), connectPacket("192.0.2.7")...), connectPacket("192.0.2.7")...), append(mailPacket(), rcptPacket("u@example.net")...)...))
			io.Copy(io.Discard, c)
		}()
	}
	wg.Wait()

	e.judged(t, "192.0.2.7", rejectListed)
	e.judged(t, "192.0.2.20", "continue")
	testkit.WaitFor(t, "connections to close", 5*time.Second, func() error {
		return testkit.Unless(e.srv.Connections() == 0, "%d connections open", e.srv.Connections())
	})
	if n := panics.Load(); n != 0 {
		t.Errorf("%d panics", n)
	}
	if !strings.Contains(e.logs.String(), `kind="command out of order"`) || !strings.Contains(e.logs.String(), "CONNECT inside an SMTP session") {
		t.Errorf("no log line for the double CONNECT:\n%s", e.logs)
	}
}

// TestNewSMTPSessionsOnOneConnection runs the legal sequences that reuse
// a connection. Run with -race: a check still running when its SMTP
// session ends must not write into the next one.
func TestNewSMTPSessionsOnOneConnection(t *testing.T) {
	e := newEnv(t, "tcp", "")
	e.dns.Set(qname("192.0.2.30", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, Delay: 50 * time.Millisecond})
	const listed30 = "550 5.7.1 Service unavailable; client [192.0.2.30] listed by Test ZEN (zombie); see https://lookup.example.org/ip/192.0.2.30"

	r := dialRaw(t, e.network, e.addr)
	r.send(optNeg())
	r.expect("negotiation", "negotiated")

	// A listed client whose check is still running, then ABORT and a
	// new SMTP session from a clean client.
	r.send(connectPacket("192.0.2.30"))
	r.expect("connect 1", "continue")
	r.send(packet(cmdAbort), connectPacket("192.0.2.20"))
	r.expect("connect 2 after abort", "continue")
	r.send(mailPacket())
	r.expect("mail 2", "continue")
	r.send(rcptPacket("user@example.net"))
	r.expect("rcpt 2: the clean client's verdict", "continue")

	// Several messages on one SMTP session, one aborted.
	r.send(packet(cmdAbort), connectPacket("192.0.2.7"))
	r.expect("connect 3", "continue")
	for i := 0; i < 3; i++ {
		r.send(mailPacket())
		r.expect("mail", "continue")
		r.send(rcptPacket("user@example.net"))
		r.expect("rcpt", rejectListed)
		r.send(rcptPacket("postmaster@example.net"))
		r.expect("rcpt postmaster", "continue")
		if i == 1 {
			r.send(packet(cmdAbort))
			continue
		}
		// Content blmilter did not ask for is answered and dropped.
		r.send(packet(cmdData))
		r.expect("data", "continue")
		r.send(packet(cmdHeader, cstrings("Subject", "hello")))
		r.expect("header", "continue")
		r.send(packet(cmdEOH))
		r.expect("end of headers", "continue")
		r.send(packet(cmdBody, []byte("body\r\n")))
		r.expect("body", "continue")
		r.send(packet(cmdEOB, []byte("last chunk\r\n")))
		r.expect("end of message", "continue")
	}
	// HELO inside a transaction ends it, as in SMTP.
	r.send(mailPacket())
	r.expect("mail", "continue")
	r.send(packet(cmdHelo, cstrings("mail.example")))
	r.expect("helo", "continue")
	r.send(packet(cmdUnknown, cstrings("XYZZY")))
	r.expect("unknown SMTP command", "continue")

	// QUIT_NC, then the listed client whose check was slow: now cached.
	r.send(packet(cmdQuitNC), connectPacket("192.0.2.30"))
	r.expect("connect after QUIT_NC", "continue")
	r.send(mailPacket())
	r.expect("mail", "continue")
	r.send(rcptPacket("user@example.net"))
	r.expect("rcpt", listed30)
	r.send(packet(cmdQuit))
	r.expectClosed("quit")
}

func TestIllegalSequencesEndTheConnection(t *testing.T) {
	var panics atomic.Int64
	e := newEnvOpts(t, "tcp", "", countPanics(&panics), policy.Deps{})
	neg := optNeg()
	conn := connectPacket("192.0.2.7")
	tests := []struct {
		name string
		send [][]byte // replies read after each but the last
		kind string
	}{
		{"command before negotiation", [][]byte{conn}, kindOrder},
		{"macros before negotiation", [][]byte{packet(cmdMacro, []byte{'C'}, cstrings("i", "x"))}, kindOrder},
		{"second negotiation", [][]byte{neg, neg}, kindOrder},
		{"short negotiation", [][]byte{packet(cmdOptNeg, []byte{0, 0, 0, 6})}, kindMalformed},
		{"protocol version 0", [][]byte{packet(cmdOptNeg, make([]byte, 12))}, kindMalformed},
		{"MAIL before CONNECT", [][]byte{neg, mailPacket()}, kindOrder},
		{"HELO before CONNECT", [][]byte{neg, packet(cmdHelo, cstrings("x"))}, kindOrder},
		{"RCPT before MAIL", [][]byte{neg, conn, rcptPacket("u@example.net")}, kindOrder},
		{"RCPT after end of message", [][]byte{neg, conn, mailPacket(), rcptPacket("postmaster@x"), packet(cmdEOB), rcptPacket("u@example.net")}, kindOrder},
		{"body before RCPT", [][]byte{neg, conn, mailPacket(), packet(cmdBody, []byte("x"))}, kindOrder},
		{"end of message before MAIL", [][]byte{neg, conn, packet(cmdEOB)}, kindOrder},
		{"CONNECT after end of message", [][]byte{neg, conn, mailPacket(), rcptPacket("postmaster@x"), packet(cmdEOB), conn}, kindOrder},
		{"unknown command", [][]byte{neg, packet('Z', []byte("junk"))}, kindUnknownCommand},
		{"zero length", [][]byte{neg, {0, 0, 0, 0, 'C'}}, kindMalformed},
		{"CONNECT too long", [][]byte{neg, packet(cmdConnect, make([]byte, maxParsedData+1))}, kindTooLong},
		{"ABORT with data", [][]byte{neg, packet(cmdAbort, []byte("x"))}, kindTooLong},
		{"header longer than anything", [][]byte{neg, {0x7f, 0xff, 0xff, 0xff, cmdHeader}}, kindTooLong},
		{"CONNECT without family", [][]byte{neg, packet(cmdConnect, cstrings("host"))}, kindMalformed},
		{"CONNECT inet without port", [][]byte{neg, packet(cmdConnect, cstrings("host"), []byte{'4'})}, kindMalformed},
		{"empty macro packet", [][]byte{neg, packet(cmdMacro)}, kindMalformed},
		{"truncated packet", [][]byte{neg, {0, 0, 0, 50, 'C', 'x'}}, kindMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, e.network, e.addr)
			for _, p := range tt.send[:len(tt.send)-1] {
				r.send(p)
				if p[4] != cmdMacro && p[4] != cmdAbort {
					if _, err := r.read(); err != nil {
						t.Fatalf("reply to %q: %v", p[4], err)
					}
				}
			}
			r.send(tt.send[len(tt.send)-1])
			if tt.name == "truncated packet" {
				r.c.(*net.TCPConn).CloseWrite()
			}
			r.expectClosed(tt.name)
			testkit.WaitFor(t, "the log line", 5*time.Second, func() error {
				return testkit.Unless(strings.Contains(e.logs.String(), fmt.Sprintf("kind=%q", tt.kind)), "no kind=%q line in:\n%s", tt.kind, e.logs)
			})
			e.judged(t, "192.0.2.7", rejectListed)
		})
	}
	if n := panics.Load(); n != 0 {
		t.Errorf("%d panics", n)
	}
}

// TestHeaderFloodNotBuffered sends 150 headers of 1 MiB on one session:
// each is answered and dropped, and blmilter allocates a small fraction of
// what it was sent. (The RSS of the real binary under the same flood is
// checked in cmd/blmilter.)
func TestHeaderFloodNotBuffered(t *testing.T) {
	e := newEnv(t, "tcp", "")
	r := dialRaw(t, e.network, e.addr)
	r.c.SetDeadline(time.Now().Add(60 * time.Second))
	r.send(optNeg())
	r.expect("negotiation", "negotiated")
	r.send(connectPacket("192.0.2.20"))
	r.expect("connect", "continue")
	r.send(mailPacket())
	r.expect("mail", "continue")
	r.send(rcptPacket("user@example.net"))
	r.expect("rcpt", "continue")
	header := packet(cmdHeader, cstrings("X-Flood", strings.Repeat("x", 1<<20)))
	reply := make([]byte, 5)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < 150; i++ {
		if _, err := r.c.Write(header); err != nil {
			t.Fatalf("header %d: %v", i, err)
		}
		if _, err := io.ReadFull(r.br, reply); err != nil || reply[4] != respContinue {
			t.Fatalf("header %d: reply %q, %v", i, reply, err)
		}
	}
	runtime.ReadMemStats(&after)
	sent := 150 * len(header)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("%d MiB allocated while %d MiB of headers went through", alloc>>20, sent>>20)
	} else {
		t.Logf("%d KiB allocated (server and test client) for %d MiB of headers", alloc>>10, sent>>20)
	}
	r.send(packet(cmdEOB))
	r.expect("end of message", "continue")
}

func TestConnectionLimit(t *testing.T) {
	e := newEnvOpts(t, "tcp", "", Options{MaxConnections: 3}, policy.Deps{})
	var held []*rawClient
	for i := 0; i < 3; i++ {
		r := dialRaw(t, e.network, e.addr)
		r.send(optNeg())
		r.expect("negotiation", "negotiated")
		held = append(held, r)
	}
	// Beyond the limit a connection is closed at once, not left waiting:
	// the MTA applies its default action without delay.
	for i := 0; i < 5; i++ {
		r := dialRaw(t, e.network, e.addr)
		r.c.SetDeadline(time.Now().Add(2 * time.Second))
		r.c.Write(optNeg()) // may fail: the server closes at once
		r.expectClosed(fmt.Sprintf("connection %d beyond the limit", 4+i))
	}
	testkit.WaitFor(t, "the refusal log line", 5*time.Second, func() error {
		logs := e.logs.String()
		return testkit.Unless(strings.Contains(logs, "max_connections reached") && strings.Contains(logs, `kind="connection limit"`), "no refusal line in:\n%s", logs)
	})
	// The refusals are counted, in one line a second at most.
	testkit.WaitFor(t, "5 refusals counted", 5*time.Second, func() error {
		n := sumCounts(e.logs.String(), "connection limit")
		return testkit.Unless(n == 5, "%d refusals counted", n)
	})

	held[0].c.Close()
	testkit.WaitFor(t, "a connection to close", 5*time.Second, func() error {
		return testkit.Unless(e.srv.Connections() == 2, "%d connections open", e.srv.Connections())
	})
	e.judged(t, "192.0.2.7", rejectListed)
}

var countField = regexp.MustCompile(`count=(\d+)`)

// sumCounts adds the count fields of the log lines of kind.
func sumCounts(logs, kind string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, fmt.Sprintf("kind=%q", kind)) {
			continue
		}
		if m := countField.FindStringSubmatch(line); m != nil {
			c, _ := strconv.Atoi(m[1])
			n += c
		}
	}
	return n
}

func TestSlowClientsClosedByDeadlines(t *testing.T) {
	const readTimeout, sessionTimeout = 300 * time.Millisecond, 1200 * time.Millisecond
	e := newEnvOpts(t, "tcp", "", Options{ReadTimeout: readTimeout, SessionTimeout: sessionTimeout}, policy.Deps{})

	t.Run("byte drip", func(t *testing.T) {
		// Each byte would re-arm an idle timer; the packet's deadline
		// counts from its start.
		r := dialRaw(t, e.network, e.addr)
		closed := r.closedAfter(time.Now())
		for _, b := range optNeg() {
			select {
			case took := <-closed:
				if took > readTimeout+500*time.Millisecond {
					t.Errorf("closed after %v, read_timeout is %v", took, readTimeout)
				}
				return
			case <-time.After(50 * time.Millisecond):
				r.c.Write([]byte{b})
			}
		}
		t.Fatal("the whole negotiation went through, one byte every 50 ms")
	})
	t.Run("packet drip", func(t *testing.T) {
		// Whole packets in time, forever: the session deadline ends it.
		r := dialRaw(t, e.network, e.addr)
		start := time.Now()
		r.send(optNeg())
		r.expect("negotiation", "negotiated")
		closed := r.closedAfter(start)
		macro := packet(cmdMacro, []byte{'C'}, cstrings("j", "mx.example"))
		for deadline := time.After(5 * time.Second); ; {
			select {
			case took := <-closed:
				if took < sessionTimeout-100*time.Millisecond || took > sessionTimeout+time.Second {
					t.Errorf("closed after %v, session_timeout is %v", took, sessionTimeout)
				}
				return
			case <-deadline:
				t.Fatal("packet drip not closed after 5s")
			case <-time.After(100 * time.Millisecond):
				r.c.Write(macro)
			}
		}
	})
	testkit.WaitFor(t, "both timeouts logged", 5*time.Second, func() error {
		logs := e.logs.String()
		return testkit.Unless(strings.Contains(logs, `kind="read timeout"`) && strings.Contains(logs, `kind="session timeout"`), "log so far:\n%s", logs)
	})
	e.judged(t, "192.0.2.7", rejectListed)
}

func TestProtocolErrorLogRateLimited(t *testing.T) {
	e := newEnv(t, "tcp", "")
	const bad = 60
	for i := 0; i < bad; i++ {
		r := dialRaw(t, e.network, e.addr)
		r.send(packet('Z'))
		r.expectClosed("unknown command")
	}
	// The first line at once, the rest summed up when the second ends.
	testkit.WaitFor(t, "every bad connection counted", 5*time.Second, func() error {
		n := sumCounts(e.logs.String(), kindUnknownCommand)
		return testkit.Unless(n == bad, "%d of %d counted", n, bad)
	})
	lines := strings.Count(e.logs.String(), fmt.Sprintf("kind=%q", kindUnknownCommand))
	if lines > 3 {
		t.Errorf("%d log lines for %d bad connections within about a second:\n%s", lines, bad, e.logs)
	}
}

// panickyObserver panics while observing the check of one IP: a check
// that fails in the middle, as a bug would make it.
type panickyObserver struct{ ip string }

func (o panickyObserver) ObserveAnswer(string, string, policy.ListState, time.Duration) {}
func (o panickyObserver) ObserveCheck(v policy.Verdict) {
	if v.IP.String() == o.ip {
		panic("observer failed for " + o.ip)
	}
}

func TestPanicsEndOneClientAndAreCounted(t *testing.T) {
	var panics atomic.Int64
	e := newEnvOpts(t, "tcp", "", countPanics(&panics), policy.Deps{Observers: []policy.Observer{panickyObserver{"192.0.2.7"}}})

	// The check panics: on its own goroutine (not cached yet), then on
	// the session's (cached). The client is let through both times.
	e.judged(t, "192.0.2.7", "continue")
	e.judged(t, "192.0.2.7", "continue")
	if n := panics.Load(); n != 2 {
		t.Fatalf("%d panics counted, want 2", n)
	}

	// The session itself panics: only that connection ends.
	var boom atomic.Bool
	eng := e.engine
	srv := NewServer(func() *policy.Engine {
		if boom.CompareAndSwap(true, false) {
			panic("engine getter failed")
		}
		return eng
	}, limits(Options{Logger: e.srv.logger, OnPanic: func() { panics.Add(1) }}))
	network, addr := startServer(t, srv, "tcp")
	boom.Store(true)
	cs, err := newClient(network, addr).Session()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Conn("[192.0.2.20]", gomilter.FamilyInet, 40000, "192.0.2.20"); err == nil {
		t.Fatal("CONNECT answered by a session that panicked")
	}
	cs.Close()
	if n := panics.Load(); n != 3 {
		t.Fatalf("%d panics counted, want 3", n)
	}
	e2 := &env{network: network, addr: addr}
	e2.judged(t, "192.0.2.20", "continue")

	testkit.WaitFor(t, "the panic logged", 5*time.Second, func() error {
		return testkit.Unless(strings.Contains(e.logs.String(), "engine getter failed"), "log so far:\n%s", e.logs)
	})
	logs := e.logs.String()
	for _, want := range []string{"policy check panicked; client let through", "session panicked; connection closed", "stack=", "hostile_test.go"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}
