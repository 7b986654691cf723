package milter

import (
	"fmt"
	"testing"

	gomilter "github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit/benchcpu"
)

// BenchmarkSession runs whole milter sessions as Postfix opens them, one
// connection per SMTP session: connect, negotiate, client connect, HELO
// (skipped by negotiation), MAIL, RCPT, then abort and quit. blmilter
// judges a client whose DNS answer is cached; noop is go-milter's own
// server with its NoOpMilter, negotiating the same steps, in the same run.
// Sessions run in parallel, as Postfix's smtpd processes do.
func BenchmarkSession(b *testing.B) {
	for _, network := range []string{"tcp", "unix"} {
		b.Run("blmilter/"+network, func(b *testing.B) {
			e := newEnv(b, network, "")
			e.dns.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
			benchSessions(b, e.network, e.addr, "192.0.2.20", "continue")
		})
		b.Run("blmilter-listed/"+network, func(b *testing.B) {
			e := newEnv(b, network, "")
			benchSessions(b, e.network, e.addr, "192.0.2.7", rejectListed)
		})
		b.Run("noop/"+network, func(b *testing.B) {
			// Plain go-milter: no deadlines, no tracking, no policy.
			s := &gomilter.Server{
				NewMilter: func() gomilter.Milter { return gomilter.NoOpMilter{} },
				Actions:   milterActions,
				Protocol:  milterProtocol,
				SymList:   symList,
			}
			network, addr := startPlainServer(b, s, network)
			benchSessions(b, network, addr, "192.0.2.20", "continue")
		})
	}
}

func startPlainServer(b *testing.B, s *gomilter.Server, network string) (string, string) {
	spec := "inet:127.0.0.1:0"
	if network == "unix" {
		spec = "unix:" + b.TempDir() + "/noop.sock"
	}
	ln, err := Listen(spec, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(ln)
	b.Cleanup(func() { s.Close() })
	return ln.Addr().Network(), ln.Addr().String()
}

func benchSessions(b *testing.B, network, addr, clientIP, wantRcpt string) {
	client := newClient(network, addr)
	session := func() error {
		cs, err := client.Session()
		if err != nil {
			return err
		}
		defer cs.Close()
		if act, err := cs.Conn("mail.example.com", gomilter.FamilyInet, 40000, clientIP); err != nil || act.Code != gomilter.ActContinue {
			return fmt.Errorf("conn: %+v %v", act, err)
		}
		if act, err := cs.Helo("mail.example.com"); err != nil || act.Code != gomilter.ActContinue {
			return fmt.Errorf("helo: %+v %v", act, err)
		}
		if act, err := cs.Mail("sender@example.org", nil); err != nil || act.Code != gomilter.ActContinue {
			return fmt.Errorf("mail: %+v %v", act, err)
		}
		act, err := cs.Rcpt("user@example.net", nil)
		if err != nil {
			return err
		}
		got := "continue"
		if act.Code == gomilter.ActReplyCode {
			got = fmt.Sprintf("%d %s", act.SMTPCode, act.SMTPText)
		}
		if got != wantRcpt {
			return fmt.Errorf("rcpt: %q, want %q", got, wantRcpt)
		}
		return nil
	}
	// Warm the cache (and the connection paths) before measuring.
	if err := session(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	// CPU time (client and server, both in this process) per session:
	// steadier than wall time on a shared machine.
	cpu := benchcpu.Start()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := session(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	cpu.Report(b, "session")
}
