package zone

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/testkit"
)

// testServer is a zone server on 127.0.0.1, UDP and TCP on one port.
type testServer struct {
	*Server
	addr string
	log  *testkit.Buffer // the server's log lines, for assertions
}

func testOptions() Options {
	return Options{
		Zone: Zone{
			Name:      "bl.example.org",
			NS:        []string{"ns1.example.org.", "ns2.example.net."},
			SOA:       SOA{RName: "hostmaster.example.org.", Refresh: time.Hour, Retry: 10 * time.Minute, Expire: 7 * 24 * time.Hour, Minimum: 60 * time.Second},
			TTL:       300 * time.Second,
			Codes:     map[string]netip.Addr{"zombie": netip.MustParseAddr("127.0.0.4"), "dynamic": netip.MustParseAddr("127.0.0.10"), "spam-source": netip.MustParseAddr("127.0.0.2")},
			TXT:       "{category}: {reason}; see {url}",
			PublicURL: "https://lookup.example.org",
		},
		Transfer: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Workers:  2,
	}
}

// listenPair listens on UDP and TCP on the same loopback port.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l
		}
		pc.Close()
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil, nil
}

// startServer starts a server with opts and listings and stops it when
// the test ends.
func startServer(t testing.TB, opts Options, listings []Listing) *testServer {
	t.Helper()
	lb := &testkit.Buffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if listings != nil {
		s.Update(listings)
	}
	pc, l := listenPair(t)
	ts := &testServer{Server: s, addr: pc.LocalAddr().String(), log: lb}
	done := make(chan error, 1)
	go func() { done <- s.Serve(pc, l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", lb.String())
		}
	})
	waitAnswering(t, ts.addr)
	return ts
}

// waitAnswering waits until the server answers over UDP and TCP.
func waitAnswering(t testing.TB, addr string) {
	t.Helper()
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 500 * time.Millisecond}
		m := new(dns.Msg)
		m.SetQuestion("bl.example.org.", dns.TypeSOA)
		testkit.WaitFor(t, "the server on "+addr+"/"+network+" to answer", 5*time.Second, func() error {
			_, _, err := c.Exchange(m, addr)
			return err
		})
	}
}

// ask sends one query and returns the answer.
func ask(t testing.TB, addr, network, name string, qtype uint16, edit ...func(*dns.Msg)) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = false
	for _, e := range edit {
		e(m)
	}
	c := &dns.Client{Net: network, Timeout: 2 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

func answerTXT(r *dns.Msg) string {
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			return strings.Join(txt.Txt, "")
		}
	}
	return ""
}

func itoa(n int) string { return strconv.Itoa(n) }
