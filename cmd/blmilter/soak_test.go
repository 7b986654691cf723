package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
)

// Bounds of the milter soak test.
const (
	soakIdle           = 1000            // idle connections held at once
	soakHeaders        = 150             // headers of 1 MiB on one session
	soakDoubleConnects = 300             // sessions that send CONNECT twice
	soakReadTimeout    = 6 * time.Second // [milter] read_timeout
	soakSessionTimeout = 10 * time.Second
	soakMaxRSSGrowth   = 8 << 20
	soakSlack          = 50 * time.Millisecond // a normal session may take this much longer under attack
)

const soakReject = "550 5.7.1 Service unavailable; client [192.0.2.7] listed by Test ZEN (zombie); see https://lookup.example.org/ip/192.0.2.7"

// TestMilterSoak runs the real binary against hostile milter clients at
// once: an idle flood of soakIdle connections (max_connections is raised
// above it, so the flood is held rather than refused), a client dripping
// one byte at a time, one dripping whole packets, a 150 MiB header flood
// on one session and a stream of double-CONNECT sessions. Meanwhile normal
// sessions must be judged correctly and about as fast as before, the
// header flood must not grow the daemon's memory, and the drips must be
// closed by read_timeout and session_timeout.
func TestMilterSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and floods it")
	}
	s := dnstest.Start(t)
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
	s.Set(qname("127.0.0.2", "zen.test"), dnstest.Answer{A: []string{"127.0.0.2"}}) // the health probe's test point
	dir := t.TempDir()
	bin := testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")
	milterAddr, webAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	cfg := strings.Replace(testConfig(s, dir, ""), "[milter]\nlisten = \"inet:127.0.0.1:0\"",
		fmt.Sprintf("[milter]\nlisten = \"inet:%s\"\nread_timeout = %q\nsession_timeout = %q\nmax_connections = %d",
			milterAddr, soakReadTimeout, soakSessionTimeout, soakIdle+100), 1)
	cfg = strings.Replace(cfg, "[web]\nlisten = \"\"", fmt.Sprintf("[web]\nlisten = %q", webAddr), 1)
	cfgPath := filepath.Join(dir, "blmilter.toml")
	writeFile(t, cfgPath, cfg)
	d := startDaemon(t, bin, cfgPath, "http://"+webAddr)
	pid := d.cmd.Process.Pid

	normal := func() time.Duration {
		t.Helper()
		start := time.Now()
		got, err := soakSession(milterAddr)
		if err != nil || got != soakReject {
			t.Errorf("normal session: %q, %v\nwant %q", got, err, soakReject)
		}
		return time.Since(start)
	}
	// normalDuring runs normal sessions, one every 20 ms, until stop is
	// closed, and returns their durations.
	normalDuring := func(stop <-chan struct{}) <-chan []time.Duration {
		out := make(chan []time.Duration, 1)
		go func() {
			var ds []time.Duration
			for {
				ds = append(ds, normal())
				select {
				case <-stop:
					out <- ds
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		return out
	}
	var baseline []time.Duration
	for range 30 {
		baseline = append(baseline, normal())
	}
	usual := median(baseline)
	checkPhase := func(phase string, ds []time.Duration) {
		t.Helper()
		t.Logf("%s: %d normal sessions, median %v, max %v (before: median %v)", phase, len(ds), median(ds), slices.Max(ds), usual)
		if m := median(ds); m > usual+soakSlack {
			t.Errorf("%s: normal sessions took %v (median), %v before", phase, m, usual)
		}
	}

	// The idle flood: connections that send nothing, all held.
	t0 := time.Now()
	idle := make([]net.Conn, 0, soakIdle)
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range soakIdle {
		c, err := net.DialTimeout("tcp", milterAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", len(idle), err)
		}
		idle = append(idle, c)
	}
	waitMetric(t, webAddr, "blmilter_milter_sessions_in_flight", func(v float64) bool { return v >= soakIdle })

	// The drips start with the flood.
	byteDrip := dripBytes(t, milterAddr)
	packetDrip := dripPackets(t, milterAddr)

	stop := make(chan struct{})
	during := normalDuring(stop)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	checkPhase("idle flood held", <-during)

	// The header flood, with the idle flood still held.
	rss0 := vmRSS(t, pid)
	stop = make(chan struct{})
	during = normalDuring(stop)
	headerFlood(t, milterAddr)
	close(stop)
	rss1 := vmRSS(t, pid)
	checkPhase("header flood", <-during)
	t.Logf("RSS %d KiB before the %d MiB header flood, %d KiB after (%+d KiB)", rss0>>10, soakHeaders, rss1>>10, (rss1-rss0)>>10)
	if rss1-rss0 > soakMaxRSSGrowth {
		t.Errorf("RSS grew %d KiB during the header flood, more than %d KiB", (rss1-rss0)>>10, soakMaxRSSGrowth>>10)
	}
	if time.Since(t0) > soakReadTimeout-time.Second {
		t.Errorf("the flood phases took %v: the idle connections were not held through them", time.Since(t0))
	}

	// A stream of double-CONNECT sessions.
	stop = make(chan struct{})
	during = normalDuring(stop)
	doubleConnects(t, milterAddr)
	close(stop)
	checkPhase("double CONNECT stream", <-during)

	// The deadlines close what the clients would hold forever.
	if took := <-byteDrip; took < soakReadTimeout-time.Second || took > soakReadTimeout+2*time.Second {
		t.Errorf("byte drip closed after %v, read_timeout %v", took, soakReadTimeout)
	}
	for i, c := range idle {
		c.SetReadDeadline(t0.Add(soakReadTimeout + 5*time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("idle connection %d: %v, want closed by read_timeout", i, err)
		}
	}
	if took := <-packetDrip; took < soakSessionTimeout-time.Second || took > soakSessionTimeout+2*time.Second {
		t.Errorf("packet drip closed after %v, session_timeout %v", took, soakSessionTimeout)
	}

	select {
	case <-d.done:
		t.Fatalf("blmilter exited: %v\n%s", d.cmd.ProcessState, d.log.String())
	default:
	}
	normal()
	log := d.log.String()
	if strings.Contains(log, "panic") {
		t.Errorf("a panic in the log:\n%s", log)
	}
	// Protocol errors: one line a second at most, each with its count.
	lines, total := 0, 0
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "CONNECT inside an SMTP session") {
			lines++
			if m := regexp.MustCompile(`count=(\d+)`).FindStringSubmatch(line); m != nil {
				n, _ := strconv.Atoi(m[1])
				total += n
			}
		}
	}
	if limit := int(time.Since(t0)/time.Second) + 2; lines > limit || total != soakDoubleConnects {
		t.Errorf("%d log lines counting %d double CONNECTs, want at most %d lines counting %d", lines, total, limit, soakDoubleConnects)
	}
}

// soakSession is one SMTP session of a listed client as Postfix runs it;
// it returns the reply at RCPT.
func soakSession(addr string) (string, error) {
	cs, err := gomilter.NewClientWithOptions("tcp", addr, gomilter.ClientOptions{
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, ActionMask: gomilter.OptAddHeader,
	}).Session()
	if err != nil {
		return "", err
	}
	defer cs.Close()
	if _, err := cs.Conn("[192.0.2.7]", gomilter.FamilyInet, 40000, "192.0.2.7"); err != nil {
		return "", err
	}
	if _, err := cs.Mail("sender@example.org", nil); err != nil {
		return "", err
	}
	act, err := cs.Rcpt("user@example.net", nil)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%d %s", act.SMTPCode, act.SMTPText), nil
}

// milterPacket is one milter packet; strs are NUL-terminated.
func milterPacket(cmd byte, strs ...string) []byte {
	var data []byte
	for _, s := range strs {
		data = append(append(data, s...), 0)
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(len(data)+1))
	return append(append(b, cmd), data...)
}

var (
	soakOptNeg = func() []byte {
		b := []byte{0, 0, 0, 13, 'O'}
		b = binary.BigEndian.AppendUint32(b, 6)
		b = binary.BigEndian.AppendUint32(b, 0x1ff)
		return binary.BigEndian.AppendUint32(b, 0x1fffff)
	}()
	soakConnect = func() []byte {
		data := append([]byte("[192.0.2.7]\x004"), 0x9c, 0x40)
		data = append(data, "192.0.2.7\x00"...)
		b := binary.BigEndian.AppendUint32(nil, uint32(len(data)+1))
		return append(append(b, 'C'), data...)
	}()
)

// readReply reads one reply packet and returns its command byte.
func readReply(c net.Conn, buf []byte) (byte, error) {
	if _, err := io.ReadFull(c, buf[:5]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint32(buf[:4])) - 1
	if n > len(buf) {
		return 0, fmt.Errorf("reply of %d bytes", n)
	}
	_, err := io.ReadFull(c, buf[:n])
	return buf[4], err
}

// headerFlood sends soakHeaders headers of 1 MiB in one message, each
// answered, as an MTA that ignores the negotiation would.
func headerFlood(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	buf := make([]byte, 512)
	for _, p := range [][]byte{soakOptNeg, soakConnect, milterPacket('M', "<a@example.org>"), milterPacket('R', "<postmaster@example.net>"), milterPacket('T')} {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
		if _, err := readReply(c, buf); err != nil {
			t.Fatalf("header flood, before the headers: %v", err)
		}
	}
	header := milterPacket('L', "X-Flood", strings.Repeat("x", 1<<20))
	for i := range soakHeaders {
		if _, err := c.Write(header); err != nil {
			t.Fatalf("header %d: %v", i, err)
		}
		if code, err := readReply(c, buf); err != nil || code != 'c' {
			t.Fatalf("header %d: reply %q, %v", i, code, err)
		}
	}
	c.Write(milterPacket('E'))
	if code, err := readReply(c, buf); err != nil || code != 'c' {
		t.Fatalf("end of message after the flood: reply %q, %v", code, err)
	}
}

// doubleConnects runs soakDoubleConnects sessions that send CONNECT twice
// and go on, 8 at a time; each must be closed by the daemon.
func doubleConnects(t *testing.T, addr string) {
	t.Helper()
	stream := slices.Concat(soakOptNeg, soakConnect, soakConnect, milterPacket('M', "<a@example.org>"), milterPacket('R', "<u@example.net>"))
	work := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.Write(stream)
				if _, err := io.Copy(io.Discard, c); err != nil && !strings.Contains(err.Error(), "reset") {
					t.Errorf("double CONNECT session not closed: %v", err)
				}
				c.Close()
			}
		}()
	}
	for range soakDoubleConnects {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
}

// dripBytes sends the option negotiation one byte every 500 ms and reports
// how long the daemon let it go on.
func dripBytes(t *testing.T, addr string) <-chan time.Duration {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	start := time.Now()
	closed := make(chan time.Duration, 1)
	go func() {
		io.Copy(io.Discard, c)
		closed <- time.Since(start)
	}()
	go func() {
		for _, b := range slices.Repeat(soakOptNeg, 3) {
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	return closed
}

// dripPackets negotiates, then sends a macro packet every 500 ms, each
// well within read_timeout, and reports how long the daemon let it go on.
func dripPackets(t *testing.T, addr string) <-chan time.Duration {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	start := time.Now()
	if _, err := c.Write(soakOptNeg); err != nil {
		t.Fatal(err)
	}
	if _, err := readReply(c, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	closed := make(chan time.Duration, 1)
	go func() {
		io.Copy(io.Discard, c)
		closed <- time.Since(start)
	}()
	go func() {
		macro := milterPacket('D', "Cj", "mx.example")
		for range 2 * int(soakSessionTimeout/time.Second) * 2 {
			if _, err := c.Write(macro); err != nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	return closed
}

// vmRSS is the resident set size of process pid, in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no VmRSS in /proc/%d/status", pid)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// waitMetric waits until series, scraped from the daemon's /metrics,
// satisfies ok.
func waitMetric(t *testing.T, webAddr, series string, ok func(float64) bool) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	deadline := time.Now().Add(10 * time.Second)
	last := "absent"
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + webAddr + "/metrics")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if m := re.FindSubmatch(body); m != nil {
				last = string(m[1])
				if v, err := strconv.ParseFloat(last, 64); err == nil && ok(v) {
					return
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s = %s after 10s", series, last)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
