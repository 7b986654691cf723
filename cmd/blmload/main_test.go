package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeMTA speaks just enough SMTP with XCLIENT for blmload: it refuses
// RCPT for clients in reject, and records each session's client address.
type fakeMTA struct {
	ln     net.Listener
	reject netip.Prefix
	mu     sync.Mutex
	seen   []netip.Addr
	at     []time.Time   // when each RCPT came
	hold   time.Duration // how long RCPT waits for its reply
	quits  int
}

func startFakeMTA(t *testing.T, reject string) *fakeMTA {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeMTA{ln: ln, reject: netip.MustParsePrefix(reject)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { m.serve(c) })
		}
	})
	return m
}

func (m *fakeMTA) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	fmt.Fprint(c, "220 fake ESMTP\r\n")
	client, _ := netip.AddrFromSlice(c.RemoteAddr().(*net.TCPAddr).IP.To4())
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			fmt.Fprint(c, "250-fake\r\n250 XCLIENT ADDR NAME\r\n")
		case strings.HasPrefix(cmd, "XCLIENT"):
			for _, f := range strings.Fields(cmd)[1:] {
				if v, ok := strings.CutPrefix(f, "ADDR="); ok {
					v = strings.TrimPrefix(v, "IPV6:")
					client = netip.MustParseAddr(strings.ToLower(v))
				}
			}
			fmt.Fprint(c, "220 fake ESMTP\r\n")
		case strings.HasPrefix(cmd, "MAIL"):
			fmt.Fprint(c, "250 2.1.0 Ok\r\n")
		case strings.HasPrefix(cmd, "RCPT"):
			m.mu.Lock()
			m.seen = append(m.seen, client)
			m.at = append(m.at, time.Now())
			hold := m.hold
			m.mu.Unlock()
			time.Sleep(hold)
			if m.reject.Contains(client) {
				fmt.Fprint(c, "550 5.7.1 listed\r\n")
			} else {
				fmt.Fprint(c, "250 2.1.5 Ok\r\n")
			}
		case cmd == "QUIT":
			m.mu.Lock()
			m.quits++
			m.mu.Unlock()
			fmt.Fprint(c, "221 2.0.0 Bye\r\n")
			return
		default:
			fmt.Fprint(c, "502 5.5.2 unknown\r\n")
		}
	}
}

func TestRunCountsRepliesAndSpreadsClients(t *testing.T) {
	m := startFakeMTA(t, "203.0.113.0/26")
	cfg, err := parseFlags([]string{"-addr", m.ln.Addr().String(), "-n", "200", "-c", "8",
		"-duration", "30s", "-clients", "203.0.113.0/24, 2001:db8::/120"}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	rep := Run(context.Background(), cfg)
	if rep.Sessions != 200 || rep.Errors != 0 {
		t.Fatalf("sessions %d errors %d (%s), want 200 and 0", rep.Sessions, rep.Errors, rep.FirstError)
	}
	// Half the sessions are IPv4, numbered 0..99 within 203.0.113.0/24: the
	// first 64 are in the refused /26.
	if rep.Codes["550"] != 64 || rep.Codes["250"] != 136 {
		t.Errorf("codes %v, want 550:64 250:136", rep.Codes)
	}
	if rep.Rate <= 0 || rep.P50 <= 0 || rep.P99 < rep.P50 || rep.Max < rep.P99 {
		t.Errorf("rate %.1f p50 %.2f p99 %.2f max %.2f: not consistent", rep.Rate, rep.P50, rep.P99, rep.Max)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	distinct := map[netip.Addr]bool{}
	for _, a := range m.seen {
		distinct[a] = true
	}
	if len(distinct) != 200 {
		t.Errorf("server saw %d distinct client addresses, want 200", len(distinct))
	}
	if m.quits != 200 {
		t.Errorf("%d sessions ended with QUIT, want all 200 (refused ones too)", m.quits)
	}
}

// With -stagger the workers start apart: four workers over 400 ms begin
// about 100 ms from each other instead of all at once. Each session is
// held longer than that, so each worker runs one.
func TestRunStaggersWorkers(t *testing.T) {
	m := startFakeMTA(t, "203.0.113.0/26")
	m.mu.Lock()
	m.hold = 600 * time.Millisecond
	m.mu.Unlock()
	cfg, err := parseFlags([]string{"-addr", m.ln.Addr().String(), "-n", "4", "-c", "4", "-stagger", "400ms",
		"-duration", "30s", "-clients", "203.0.113.0/24"}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if rep := Run(context.Background(), cfg); rep.Sessions != 4 || rep.Errors != 0 {
		t.Fatalf("sessions %d errors %d (%s), want 4 and 0", rep.Sessions, rep.Errors, rep.FirstError)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.at) != 4 {
		t.Fatalf("%d sessions reached RCPT, want 4", len(m.at))
	}
	at := slices.Clone(m.at)
	slices.SortFunc(at, time.Time.Compare)
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < 50*time.Millisecond {
			t.Errorf("session %d came %v after the one before, want about 100ms apart", i, gap)
		}
	}
	if spread := at[3].Sub(at[0]); spread < 250*time.Millisecond {
		t.Errorf("the sessions came within %v, want them spread over about 300ms", spread)
	}
}

func TestRunStopsAtDuration(t *testing.T) {
	// A server that accepts and never speaks: each session waits for its
	// greeting until the run's time is up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	cfg, err := parseFlags([]string{"-addr", ln.Addr().String(), "-n", "1000000", "-c", "2", "-duration", "300ms"}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan Report, 1)
	go func() { done <- Run(context.Background(), cfg) }()
	select {
	case rep := <-done:
		if rep.Sessions != 0 || rep.Errors != 0 {
			t.Errorf("sessions %d errors %d: sessions cut off by the end of the run must not count", rep.Sessions, rep.Errors)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not stop at -duration")
	}
}

func TestClientAddr(t *testing.T) {
	nets := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/30"), netip.MustParsePrefix("2001:db8::/126")}
	tests := []struct {
		i    int
		want string
	}{
		{0, "192.0.2.0"},
		{1, "2001:db8::"},
		{2, "192.0.2.1"},
		{7, "2001:db8::3"},
		{8, "192.0.2.0"}, // wraps around within the /30
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := clientAddr(nets, tt.i); got.String() != tt.want {
				t.Errorf("clientAddr(%d) = %s, want %s", tt.i, got, tt.want)
			}
		})
	}
}

func TestParseFlagsRejectsBadValues(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"zero sessions", []string{"-n", "0"}},
		{"zero workers", []string{"-c", "0"}},
		{"zero duration", []string{"-duration", "0s"}},
		{"negative stagger", []string{"-stagger", "-1s"}},
		{"bad network", []string{"-clients", "300.1.2.3/24"}},
		{"no networks with xclient", []string{"-clients", ""}},
		{"stray argument", []string{"extra"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parseFlags(tt.args, &strings.Builder{}); err == nil {
				t.Errorf("parseFlags(%q) accepted", tt.args)
			}
		})
	}
	cfg, err := parseFlags([]string{"-clients", "192.0.2.7", "-xclient=false"}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Clients[0] != netip.MustParsePrefix("192.0.2.7/32") {
		t.Errorf("a single address is a /32, got %s", cfg.Clients[0])
	}
}
