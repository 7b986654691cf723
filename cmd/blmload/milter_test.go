package main

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	gomilter "github.com/emersion/go-milter"
)

// fakeFilter is a milter that refuses clients in reject at RCPT, and the
// others at the end of the message when their body says so: the two places
// real filters decide (blmilter at RCPT, rspamd at the end).
type fakeFilter struct {
	gomilter.NoOpMilter
	reject netip.Prefix
	f      *filterLog
	client netip.Addr
	body   strings.Builder
}

type filterLog struct {
	mu      sync.Mutex
	seen    []netip.Addr
	bodies  int
	headers int
}

func (m *fakeFilter) Connect(_ string, _ string, _ uint16, addr net.IP, _ *gomilter.Modifier) (gomilter.Response, error) {
	m.client, _ = netip.AddrFromSlice(addr)
	m.client = m.client.Unmap()
	m.f.mu.Lock()
	m.f.seen = append(m.f.seen, m.client)
	m.f.mu.Unlock()
	return gomilter.RespContinue, nil
}

func (m *fakeFilter) RcptTo(string, *gomilter.Modifier) (gomilter.Response, error) {
	if m.reject.Contains(m.client) {
		return gomilter.NewResponseStr('y', "550 5.7.1 listed"), nil
	}
	return gomilter.RespContinue, nil
}

func (m *fakeFilter) Header(string, string, *gomilter.Modifier) (gomilter.Response, error) {
	m.f.mu.Lock()
	m.f.headers++
	m.f.mu.Unlock()
	return gomilter.RespContinue, nil
}

func (m *fakeFilter) BodyChunk(chunk []byte, _ *gomilter.Modifier) (gomilter.Response, error) {
	m.body.Write(chunk)
	return gomilter.RespContinue, nil
}

func (m *fakeFilter) Body(*gomilter.Modifier) (gomilter.Response, error) {
	m.f.mu.Lock()
	m.f.bodies++
	m.f.mu.Unlock()
	if m.body.String() == messageBody && m.client.Is6() {
		return gomilter.NewResponseStr('y', "554 5.7.1 spam"), nil
	}
	return gomilter.RespAccept, nil
}

func startFakeFilter(t *testing.T, reject string) (addr string, log *filterLog) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log = &filterLog{}
	s := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return &fakeFilter{reject: netip.MustParsePrefix(reject), f: log} },
		Actions:   gomilter.OptAddHeader,
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ln.Addr().String(), log
}

// With -milter, every session is one milter connection with its own client
// address, from -first on; refusals at RCPT and at the end of the message
// both count, and -data sends the message to the filter.
func TestRunMilter(t *testing.T) {
	addr, log := startFakeFilter(t, "203.0.113.0/26")
	cfg, err := parseFlags([]string{"-milter", "-data", "-addr", "inet:" + addr, "-n", "100", "-c", "4",
		"-duration", "30s", "-first", "20", "-clients", "203.0.113.0/24,2001:db8::/120"}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	rep := Run(context.Background(), cfg)
	if rep.Sessions != 100 || rep.Errors != 0 {
		t.Fatalf("sessions %d errors %d (%s), want 100 and 0", rep.Sessions, rep.Errors, rep.FirstError)
	}
	// Sessions 20..119 take turns: IPv4 203.0.113.10..59 (all in the
	// refused /26, refused at RCPT), IPv6 2001:db8::a..3b (refused at the
	// end of the message).
	if rep.Codes["550"] != 50 || rep.Codes["554"] != 50 {
		t.Errorf("codes %v, want 550:50 554:50", rep.Codes)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	distinct := map[netip.Addr]bool{}
	for _, a := range log.seen {
		distinct[a] = true
	}
	if len(distinct) != 100 || !distinct[netip.MustParseAddr("203.0.113.10")] || distinct[netip.MustParseAddr("203.0.113.9")] {
		t.Errorf("filter saw %d distinct clients (from 203.0.113.10 on?), want 100", len(distinct))
	}
	if log.bodies != 50 || log.headers == 0 {
		t.Errorf("%d messages reached the filter (%d header fields), want the 50 accepted at RCPT", log.bodies, log.headers)
	}
}

func TestRunMilterWithoutData(t *testing.T) {
	addr, log := startFakeFilter(t, "203.0.113.0/25")
	cfg, err := parseFlags([]string{"-milter", "-addr", addr, "-n", "20", "-c", "2", "-clients", "203.0.113.120/29"}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	rep := Run(context.Background(), cfg)
	// The /29 lies in the refused /25: every session ends at RCPT.
	if rep.Sessions != 20 || rep.Codes["550"] != 20 {
		t.Errorf("report %+v", rep)
	}
	cfg.Clients = []netip.Prefix{netip.MustParsePrefix("203.0.113.200/29")}
	if rep := Run(context.Background(), cfg); rep.Sessions != 20 || rep.Codes["250"] != 20 {
		t.Errorf("clean clients: report %+v", rep)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if log.bodies != 0 {
		t.Errorf("%d messages sent without -data", log.bodies)
	}
}
