// Package smtpsink is a real SMTP server on loopback (go-smtp) that keeps
// every message it receives, for tests of what blmilter mails: the
// confirmation and outcome mails of removal requests, and the operator's
// notices.
package smtpsink

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Message is one received message.
type Message struct {
	From string
	To   []string
	Data string
	UTF8 bool // MAIL FROM carried SMTPUTF8
}

// Sink is a running server.
type Sink struct {
	Addr string // 127.0.0.1:PORT

	mu   sync.Mutex
	msgs []Message
	got  chan Message
}

// Start starts a sink that lives until the test ends; utf8 makes it offer
// SMTPUTF8.
func Start(t testing.TB, utf8 bool) *Sink {
	t.Helper()
	s := &Sink{got: make(chan Message, 1024)}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &session{sink: s}, nil }))
	srv.Domain = "sink.test"
	srv.EnableSMTPUTF8 = utf8
	srv.AllowInsecureAuth = true
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

// Messages returns what arrived so far.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Wait returns the next message, failing t after timeout.
func (s *Sink) Wait(t testing.TB, timeout time.Duration) Message {
	t.Helper()
	select {
	case m := <-s.got:
		return m
	case <-time.After(timeout):
		t.Fatalf("no mail arrived within %v", timeout)
	}
	return Message{}
}

type session struct {
	sink *Sink
	msg  Message
}

func (s *session) Reset()        { s.msg = Message{} }
func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.msg.From = from
	s.msg.UTF8 = opts != nil && opts.UTF8
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.msg.To = append(s.msg.To, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.Data = string(b)
	s.sink.mu.Lock()
	s.sink.msgs = append(s.sink.msgs, s.msg)
	s.sink.mu.Unlock()
	select {
	case s.sink.got <- s.msg:
	default:
	}
	return nil
}
