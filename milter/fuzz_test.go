package milter

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blmilter/blmilter/policy"
)

// FuzzMilterSession drives a real milter connection with a sequence of
// valid and invalid packets made from the input, and then checks that the
// server neither hung nor panicked and still judges a well-formed session
// correctly.
func FuzzMilterSession(f *testing.F) {
	var panics atomic.Int64
	// Lines are formatted, as in production, and dropped.
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	e := newEnvOpts(f, "tcp", "", Options{Logger: logger, ReadTimeout: 2 * time.Second, SessionTimeout: 5 * time.Second,
		OnPanic: func() { panics.Add(1) }}, policy.Deps{})

	f.Add([]byte{0, 1, 4, 5, 6, 12, 10, 13, 11, 8, 7, 2, 4, 5, 21})       // two SMTP sessions, a message
	f.Add([]byte{0, 1, 1, 4, 5})                                          // the double CONNECT
	f.Add([]byte{0, 16, 'C', 1, 9, 22, 4, 17, 'x', 5, 8})                 // macros, QUIT_NC, IPv6
	f.Add([]byte{0, 3, 192, 0, 2, 7, 4, 5, 20, 0, 0, 0, 9, 'L', 2, 1, 2}) // bad length inside
	f.Fuzz(func(t *testing.T, ops []byte) {
		c, err := net.Dial(e.network, e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		closed := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, c)
			closed <- err
		}()
		c.Write(fuzzStream(ops)) // the server may close before it has read it all
		c.(*net.TCPConn).CloseWrite()
		select {
		case <-closed:
		case <-time.After(12 * time.Second):
			t.Fatal("the server neither answered to its end nor closed the connection")
		}
		if n := panics.Load(); n != 0 {
			t.Fatalf("%d panics", n)
		}
		e.judged(t, "192.0.2.7", rejectListed)
	})
}

// fuzzStream turns fuzz input into milter packets: each input byte picks a
// step, some of which read their arguments from the following bytes.
func fuzzStream(ops []byte) []byte {
	take := func(n int) []byte {
		n = min(n, len(ops))
		b := ops[:n]
		ops = ops[n:]
		return b
	}
	next := func() byte {
		if b := take(1); len(b) == 1 {
			return b[0]
		}
		return 0
	}
	var out []byte
	for len(ops) > 0 && len(out) < 1<<16 {
		switch op := next(); op % 24 {
		case 0:
			out = append(out, optNeg()...)
		case 1:
			out = append(out, connectPacket("192.0.2.7")...)
		case 2:
			out = append(out, connectPacket("192.0.2.20")...)
		case 3:
			ip := take(4)
			d := append(cstrings("client.example"), '4', 0, 25)
			out = append(out, packet(cmdConnect, d, cstrings(net.IP(ip).String()))...)
		case 4:
			out = append(out, mailPacket()...)
		case 5:
			out = append(out, rcptPacket("user@example.net")...)
		case 6:
			out = append(out, rcptPacket("postmaster@example.net")...)
		case 7:
			out = append(out, packet(cmdAbort)...)
		case 8:
			out = append(out, packet(cmdEOB)...)
		case 9:
			out = append(out, packet(cmdQuitNC)...)
		case 10:
			out = append(out, packet(cmdHeader, cstrings("Subject", string(take(int(next())))))...)
		case 11:
			out = append(out, packet(cmdBody, take(int(next())))...)
		case 12:
			out = append(out, packet(cmdData)...)
		case 13:
			out = append(out, packet(cmdEOH)...)
		case 14:
			out = append(out, packet(cmdHelo, cstrings("mail.example"))...)
		case 15:
			out = append(out, packet(cmdUnknown, cstrings("XYZZY"))...)
		case 16:
			// Macros for any command, with values from the input.
			stage := next()
			out = append(out, packet(cmdMacro, []byte{stage}, cstrings("i", string(take(8)), "{client_addr}", string(take(int(next()%40)))))...)
		case 17:
			out = append(out, packet(cmdMacro, []byte{cmdMail}, cstrings("{auth_authen}", string(take(int(next()%20)))))...)
		case 18:
			// Any command byte with any data, the length right.
			cmd := next()
			out = append(out, packet(cmd, take(int(next())))...)
		case 19:
			// Raw bytes.
			out = append(out, take(int(next()))...)
		case 20:
			// A length that says what it likes, then some data.
			out = binary.BigEndian.AppendUint32(out, binary.BigEndian.Uint32(append(take(4), 0, 0, 0, 0)))
			out = append(out, take(int(next()))...)
		case 21:
			out = append(out, packet(cmdQuit)...)
		case 22:
			d := append(cstrings("[IPv6:2001:db8::7]"), '6', 0, 25)
			out = append(out, packet(cmdConnect, d, cstrings("IPv6:2001:db8::7"))...)
		case 23:
			out = append(out, packet(cmdConnect, cstrings("localhost"), []byte{'L'}, cstrings("/run/smtp.sock"))...)
		}
	}
	return out
}
