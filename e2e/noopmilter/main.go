// Command noopmilter is a milter that accepts everything. It is the floor
// the load test measures blmilter against: Postfix opens one milter
// connection per SMTP session, so even a milter that does nothing costs
// session rate, and blmilter's cost is judged relative to this one.
//
// It negotiates exactly what blmilter does by default, without spam traps
// or delist addresses (connect, MAIL, RCPT; no HELO, headers or body; the
// same macros; no "no reply" steps): e2e's TestMilterNegotiatesNoReplySteps
// checks that they agree.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/emersion/go-milter"
)

// loggingMilter reports each connect so a test can see which client
// address the MTA passed on (the XCLIENT address, not the TCP peer).
type loggingMilter struct {
	milter.NoOpMilter
	log *slog.Logger
}

func (m loggingMilter) Connect(host, family string, port uint16, addr net.IP, _ *milter.Modifier) (milter.Response, error) {
	m.log.Info("connect", "host", host, "family", family, "addr", addr.String())
	return milter.RespContinue, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "TCP address to listen on")
	verbose := flag.Bool("v", false, "log every connect")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("listen", "err", err)
		os.Exit(1)
	}
	// The address on stdout is how a test learns the port it got.
	fmt.Println(ln.Addr().String())

	newMilter := func() milter.Milter { return milter.NoOpMilter{} }
	if *verbose {
		newMilter = func() milter.Milter { return loggingMilter{log: log} }
	}
	// The same negotiation as blmilter's default (milter/protocol.go), so
	// the two differ only in what they do with a session.
	srv := &milter.Server{
		NewMilter: newMilter,
		Actions:   milter.OptAddHeader | milter.OptSetSymList,
		Protocol: milter.OptNoHelo | milter.OptNoHeaders | milter.OptNoEOH |
			milter.OptNoBody | milter.OptNoUnknown | milter.OptNoData,
		SymList: map[milter.Stage][]string{
			milter.StageConnect:  {"{client_addr}", "_"},
			milter.StageMailFrom: {"i", "{auth_authen}"},
			milter.StageRcptTo:   {"i"},
			milter.StageEOM:      {"i"},
		},
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && err != milter.ErrServerClosed {
		log.Error("serve", "err", err)
		os.Exit(1)
	}
}
