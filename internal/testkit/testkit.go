// Package testkit is what the tests of every package share: WaitFor, the
// query names of DNS lists, the blmilter binary built once per test run,
// free loopback ports (for DNS servers too), prefixes as a block list's
// listings look, a buffer goroutines may write while a test reads it, and
// a real group with a client in it for unix socket tests. Its subpackages:
// testengine builds a policy engine from TOML against the in-process DNS
// server; miltertest negotiates with a milter as Postfix does; smtpsink
// keeps the mail it receives; benchcpu adds the rate and CPU time per
// operation to a benchmark. testkit imports no blmilter package but dnsbl,
// so the tests of the lowest packages (cache) can use it too.
package testkit

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/blmilter/blmilter/dnsbl"
)

// QName is the name a DNS list is asked for ip in zone.
func QName(ip, zone string) string { return dnsbl.QueryName(netip.MustParseAddr(ip), zone) }

// WaitFor polls cond until it returns nil, and fails t with what and
// cond's last error when timeout passes first.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %v for %s: %v", timeout, what, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Unless is the error WaitFor's cond returns while ok is false.
func Unless(ok bool, format string, args ...any) error {
	if ok {
		return nil
	}
	return fmt.Errorf(format, args...)
}

// FreePort returns a loopback port ("tcp" or "udp") that was free a moment ago.
func FreePort(t testing.TB, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// FreeDNSPort returns a loopback port that was free for both UDP and TCP
// a moment ago, below the ephemeral range: a port there could be the local
// end of some connection by the time a DNS server binds it, and NSD,
// unlike Go, does not reuse an address.
func FreeDNSPort(t testing.TB) int {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		addr := "127.0.0.1:" + strconv.Itoa(port)
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue
		}
		l, err := net.Listen("tcp", addr)
		pc.Close()
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return 0
}

// FreeAddr returns 127.0.0.1:PORT with a TCP port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t, "tcp"))
}

// Buffer collects log lines or a child's output: goroutines may write it
// while a test reads it. The zero value is ready to use and keeps
// everything; Max, when set, keeps only the first Max bytes.
type Buffer struct {
	Max int

	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p (as much of it as Max leaves room for).
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Max > 0 {
		s.b.Write(p[:min(len(p), max(s.Max-s.b.Len(), 0))])
		return len(p), nil
	}
	return s.b.Write(p)
}

// String returns everything kept so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
