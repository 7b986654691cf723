package milter

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/policy"
)

// startServer serves s on a fresh loopback listener ("tcp" or "unix") and
// returns the network and address to dial. The server is closed when the
// test ends.
func startServer(t testing.TB, s *Server, network string) (string, string) {
	t.Helper()
	var spec string
	switch network {
	case "tcp":
		spec = "inet:127.0.0.1:0"
	case "unix":
		spec = "unix:" + filepath.Join(t.TempDir(), "milter.sock")
	default:
		t.Fatalf("network %q", network)
	}
	ln, err := Listen(spec, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return ln.Addr().Network(), ln.Addr().String()
}

// newClient returns a go-milter client that speaks protocol version 2, the
// version go-milter's server answers with (its default v6 client refuses
// to downgrade).
func newClient(network, addr string) *gomilter.Client {
	return gomilter.NewClientWithOptions(network, addr, gomilter.ClientOptions{
		ReadTimeout:  5 * time.Second,
		WriteTimeout: 5 * time.Second,
		ActionMask:   gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
		ProtocolMask: 0,
	})
}

// serverEnv starts blmilter with the test lists and readTimeout on network.
// Its client 192.0.2.1 is listed nowhere: every step answers continue.
func serverEnv(t testing.TB, network string, readTimeout time.Duration) *env {
	return newEnvOpts(t, network, "", Options{ReadTimeout: readTimeout, WriteTimeout: time.Second}, policy.Deps{})
}

func TestNegotiationHasNoReplylessSteps(t *testing.T) {
	e := serverEnv(t, "tcp", time.Minute)
	cs, err := newClient(e.network, e.addr).Session()
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if got := cs.ProtocolOpts & noReplyFlags; got != 0 {
		t.Fatalf("negotiated no-reply protocol flags %#x: Postfix's Nagle-on milter sockets stall on them", uint32(got))
	}
	for _, nr := range []gomilter.OptProtocol{gomilter.OptNoHeaderReply, gomilter.OptNoConnReply, gomilter.OptNoHeloReply,
		gomilter.OptNoMailReply, gomilter.OptNoRcptReply, gomilter.OptNoDataReply, gomilter.OptNoUnknownReply,
		gomilter.OptNoEOHReply, gomilter.OptNoBodyReply} {
		if cs.ProtocolOption(nr) {
			t.Errorf("protocol option %#x negotiated", uint32(nr))
		}
	}
	// The stages blmilter decides at must be sent to it.
	for _, need := range []gomilter.OptProtocol{gomilter.OptNoConnect, gomilter.OptNoMailFrom, gomilter.OptNoRcptTo} {
		if cs.ProtocolOption(need) {
			t.Errorf("protocol option %#x would hide a stage blmilter needs", uint32(need))
		}
	}
	// go-milter's server closes the session on SMFIC_UNKNOWN: it must not be sent.
	if !cs.ProtocolOption(gomilter.OptNoUnknown) {
		t.Error("SMFIP_NOUNKNOWN not negotiated")
	}
	if !cs.ActionOption(gomilter.OptAddHeader) {
		t.Error("SMFIF_ADDHDRS not requested; action = tag needs it")
	}
}

func TestShutdownLetsSessionFinish(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			e := serverEnv(t, network, time.Minute)
			s, network, addr := e.srv, e.network, e.addr
			cs, err := newClient(network, addr).Session()
			if err != nil {
				t.Fatal(err)
			}
			if act, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.1"); err != nil || act.Code != gomilter.ActContinue {
				t.Fatalf("Conn = %+v, %v", act, err)
			}

			shutdown := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				shutdown <- s.Shutdown(ctx)
			}()
			// New connections are refused once shutdown began.
			deadline := time.Now().Add(5 * time.Second)
			for {
				c, err := net.DialTimeout(network, addr, time.Second)
				if err != nil {
					break
				}
				c.Close()
				if time.Now().After(deadline) {
					t.Fatal("still accepting connections during shutdown")
				}
				time.Sleep(10 * time.Millisecond)
			}
			select {
			case err := <-shutdown:
				t.Fatalf("Shutdown returned %v with a session in progress", err)
			default:
			}
			// The session in progress goes on to its end.
			if act, err := cs.Mail("sender@example.org", nil); err != nil || act.Code != gomilter.ActContinue {
				t.Fatalf("Mail during shutdown = %+v, %v", act, err)
			}
			if act, err := cs.Rcpt("user@example.net", nil); err != nil || act.Code != gomilter.ActContinue {
				t.Fatalf("Rcpt during shutdown = %+v, %v", act, err)
			}
			if err := cs.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-shutdown:
				if err != nil {
					t.Fatalf("Shutdown = %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Shutdown did not return after the last session ended")
			}
		})
	}
}

func TestShutdownTimeoutClosesSessions(t *testing.T) {
	e := serverEnv(t, "tcp", time.Minute)
	s, network, addr := e.srv, e.network, e.addr
	cs, err := newClient(network, addr).Session()
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if _, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.1"); err == nil {
		t.Fatal("session still served after the shutdown deadline")
	}
	if n := s.Connections(); n != 0 {
		t.Fatalf("Connections() = %d after shutdown", n)
	}
}

func TestReadDeadlineClosesIdleConnection(t *testing.T) {
	e := serverEnv(t, "tcp", 100*time.Millisecond)
	s, network, addr := e.srv, e.network, e.addr
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: read = %v, want EOF (closed by the server)", err)
	}
	testkit.WaitFor(t, "connections to close", 5*time.Second, func() error {
		return testkit.Unless(s.Connections() == 0, "%d connections open", s.Connections())
	})
}

func TestReadDeadlineRearmedWhileBusy(t *testing.T) {
	// Generous against the scheduling delays of a loaded machine: a
	// gap of a tenth of the timeout must never end the session.
	e := serverEnv(t, "tcp", time.Second)
	network, addr := e.network, e.addr
	cs, err := newClient(network, addr).Session()
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if act, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.1"); err != nil || act.Code != gomilter.ActContinue {
		t.Fatalf("Conn = %+v, %v", act, err)
	}
	if act, err := cs.Mail("sender@example.org", nil); err != nil || act.Code != gomilter.ActContinue {
		t.Fatalf("Mail = %+v, %v", act, err)
	}
	// Commands every 100 ms for three times the read timeout: each gap is
	// well inside the timeout, so the session must live on.
	for i := 0; i < 30; i++ {
		time.Sleep(100 * time.Millisecond)
		if act, err := cs.Rcpt("user@example.net", nil); err != nil || act.Code != gomilter.ActContinue {
			t.Fatalf("command %d, %v into the session: %+v, %v", i, time.Duration(i+1)*100*time.Millisecond, act, err)
		}
	}
}

func TestMalformedPacketsDoNotStopServer(t *testing.T) {
	e := serverEnv(t, "tcp", 5*time.Second)
	s, network, addr := e.srv, e.network, e.addr
	pkt := func(code byte, data string) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(data)+1))
		return append(append(b, code), data...)
	}
	tests := []struct {
		name string
		send []byte
	}{
		{"zero length", []byte{0, 0, 0, 0}},
		{"huge length", []byte{0x7f, 0xff, 0xff, 0xff, 'C'}},
		{"truncated packet", []byte{0, 0, 0, 50, 'C', 'x'}},
		{"unknown command", pkt('Z', "junk")},
		{"connect without family", pkt('C', "host")},
		{"connect inet without port", pkt('C', "host\x004")},
		{"empty macro", pkt('D', "")},
		{"odd macro list", pkt('D', "C{client_addr}\x00")},
		{"rcpt before connect", append(pkt('R', "<user@example.org>\x00"), pkt('E', "")...)},
		{"garbage", []byte("GET / HTTP/1.0\r\n\r\n")},
		{"unknown smtp command", pkt('U', "XYZZY\x00")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(tt.send)
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Fatalf("server did not end the bad session: %v", err)
			}
			c.Close()
			// A well-formed session still works.
			cs, err := newClient(network, addr).Session()
			if err != nil {
				t.Fatal(err)
			}
			if act, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.1"); err != nil || act.Code != gomilter.ActContinue {
				t.Fatalf("Conn after bad session = %+v, %v", act, err)
			}
			cs.Close()
		})
	}
	testkit.WaitFor(t, "connections to close", 5*time.Second, func() error {
		return testkit.Unless(s.Connections() == 0, "%d connections open", s.Connections())
	})
}
