package milter

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/policy"
)

// HeaderName is the header added to messages when the policy's action is "tag".
const HeaderName = "X-Blmilter"

// NewServer returns a milter server that asks engine() for the current
// policy engine at each SMTP connection, so a reload takes effect for the
// next connection while sessions in progress keep the engine they started with.
func NewServer(engine func() *policy.Engine, opts Options) *Server {
	var s *Server
	s = newServer(opts.Logger, opts.ReadTimeout, opts.WriteTimeout, func() gomilter.Milter {
		return &session{srv: s, current: engine}
	})
	return s
}

// session is one MTA connection, that is one SMTP session. go-milter calls
// its methods from one goroutine. It never answers with a bare accept,
// reject or tempfail after the connect stage: go-milter replaces the
// session with a fresh one after those, which would forget the client.
type session struct {
	gomilter.NoOpMilter
	srv     *Server
	current func() *policy.Engine

	eng      *policy.Engine // the engine that judges this session
	judged   bool           // the client is looked up: its verdict decides
	rejectAt string
	done     chan struct{} // closed when verdict is set
	verdict  policy.Verdict

	// per message transaction, reset at MAIL and abort
	auth          bool
	queueID       string
	reply         *policy.Reply
	loggedApplied bool
	loggedOther   bool
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (s *session) Connect(host, family string, port uint16, addr net.IP, m *gomilter.Modifier) (gomilter.Response, error) {
	eng := s.current()
	if eng == nil {
		// No policy loaded: let the mail through rather than hold it.
		return gomilter.RespAccept, nil
	}
	ip, ok := clientIP(family, addr, host, m.Macros)
	if !ok {
		s.srv.logger.Debug("milter: client not looked up", slog.String("family", family), slog.String("host", host), slog.String("skip", string(policy.SkipInvalid)))
		return gomilter.RespAccept, nil
	}
	if skip := eng.Exempt(ip); skip != policy.SkipNone {
		s.srv.logger.Debug("milter: client not looked up", slog.String("ip", ip.String()), slog.String("skip", string(skip)))
		// Accept at connect: the MTA stops calling this milter for the session.
		return gomilter.RespAccept, nil
	}
	s.eng = eng
	s.judged = true
	s.rejectAt = eng.RejectAt()
	if s.rejectAt == "connect" {
		s.verdict = eng.Check(context.Background(), ip)
		s.done = closedChan
		if !s.verdict.Action.Applies() {
			s.decide("connect", "")
			return gomilter.RespContinue, nil
		}
		return replyResponse(s.decide("connect", "")), nil
	}
	// Look the client up while it says EHLO and MAIL; the verdict is
	// needed at RCPT. The engine bounds the check with its deadline.
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		defer func() {
			// A failed check must not take every session down with the
			// process: this client is let through, and the log says why.
			if p := recover(); p != nil {
				s.srv.logger.Error("milter: policy check panicked; accepting the client", slog.String("ip", ip.String()), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
				s.verdict = policy.Verdict{IP: ip, Action: policy.ActionAccept}
			}
		}()
		s.verdict = eng.Check(context.Background(), ip)
	}()
	return gomilter.RespContinue, nil
}

func (s *session) MailFrom(from string, m *gomilter.Modifier) (gomilter.Response, error) {
	s.resetTransaction()
	s.noteQueueID(m.Macros)
	s.auth = m.Macros["{auth_authen}"] != ""
	return gomilter.RespContinue, nil
}

func (s *session) RcptTo(rcpt string, m *gomilter.Modifier) (gomilter.Response, error) {
	if !s.judged || s.rejectAt == "connect" {
		return gomilter.RespContinue, nil
	}
	s.noteQueueID(m.Macros)
	if s.auth {
		// SASL-authenticated senders are judged by their credentials, not
		// by the network they happen to send from.
		if !s.loggedOther {
			s.loggedOther = true
			s.srv.logger.Debug("milter: authenticated client not judged", slog.String("queue_id", s.queueID))
		}
		return gomilter.RespContinue, nil
	}
	<-s.done
	if exempt := exemptRecipient(rcpt); exempt != "" {
		// RFC 5321 4.5.1: postmaster must always be reachable; abuse@ is
		// where a listed sender reports a mistake.
		if !s.loggedOther && s.verdict.Action != policy.ActionAccept {
			s.loggedOther = true
			s.decideLog("rcpt", exempt)
		}
		return gomilter.RespContinue, nil
	}
	if s.verdict.Action.Applies() {
		r := s.transactionReply()
		if !s.loggedApplied {
			s.loggedApplied = true
			s.decideLog("rcpt", "")
		}
		return replyResponse(r), nil
	}
	if !s.loggedOther {
		s.loggedOther = true
		if s.verdict.Action != policy.ActionAccept {
			s.transactionReply()
		}
		s.decideLog("rcpt", "")
	}
	return gomilter.RespContinue, nil
}

// Body is end of message: always sent, whatever the negotiated stages.
func (s *session) Body(m *gomilter.Modifier) (gomilter.Response, error) {
	if s.judged && !s.auth {
		<-s.done
		if s.verdict.Action == policy.ActionTag {
			s.noteQueueID(m.Macros)
			if r := s.transactionReply(); r.Header != "" {
				if err := m.AddHeader(HeaderName, r.Header); err != nil {
					return nil, err
				}
			}
		}
	}
	s.resetTransaction()
	// Continue, not accept: go-milter starts a new session after an accept,
	// and the next message on this connection still needs the verdict.
	return gomilter.RespContinue, nil
}

func (s *session) Abort(m *gomilter.Modifier) error {
	s.resetTransaction()
	return nil
}

func (s *session) resetTransaction() {
	s.auth = false
	s.queueID = ""
	if s.rejectAt != "connect" {
		// With reject_at = "connect" the decision, and its reference, is
		// the connection's; otherwise each message gets its own.
		s.reply = nil
	}
	s.loggedApplied = false
	s.loggedOther = false
}

func (s *session) noteQueueID(macros map[string]string) {
	if id := macros["i"]; id != "" {
		s.queueID = id
	}
}

// transactionReply returns the reply for the verdict, made once per message
// transaction so that each transaction gets one decision reference.
func (s *session) transactionReply() policy.Reply {
	if s.reply == nil {
		r := s.eng.Reply(&s.verdict)
		s.reply = &r
	}
	return *s.reply
}

// decide logs the decision at stage and returns the reply for it.
func (s *session) decide(stage, exempt string) policy.Reply {
	var r policy.Reply
	if s.verdict.Action != policy.ActionAccept {
		r = s.transactionReply()
	}
	s.decideLog(stage, exempt)
	return r
}

func (s *session) decideLog(stage, exempt string) {
	d := decisionLine{when: time.Now(), verdict: s.verdict, stage: stage, queueID: s.queueID, exempt: exempt}
	if s.reply != nil {
		d.ref = s.reply.Ref
	}
	s.srv.decisions.log(d)
}

// replyResponse is the milter reply for r: "550 5.7.1 text". '%' is
// doubled because Sendmail reads the text as a format and replaces a reply
// with a lone '%' by its own generic one.
func replyResponse(r policy.Reply) gomilter.Response {
	code, enh := r.Code, r.Enhanced
	if code < 400 || code > 599 {
		code, enh = 451, "4.7.1"
	}
	if enh == "" {
		enh = strconv.Itoa(code/100) + ".7.1"
	}
	text := strings.TrimSpace(r.Text)
	if text == "" {
		text = "Service unavailable"
	}
	return gomilter.NewResponseStr(byte(gomilter.ActReplyCode), strconv.Itoa(code)+" "+enh+" "+sendmailSafe(text))
}

// exemptRecipient returns "postmaster" or "abuse" when rcpt is such a
// mailbox (any domain, any case, with or without <>), else "".
func exemptRecipient(rcpt string) string {
	r := strings.TrimSpace(rcpt)
	r = strings.TrimPrefix(r, "<")
	r = strings.TrimSuffix(r, ">")
	if i := strings.LastIndexByte(r, ':'); i >= 0 && strings.HasPrefix(r, "@") {
		r = r[i+1:] // source route: <@relay:user@domain>
	}
	local := r
	if i := strings.LastIndexByte(r, '@'); i >= 0 {
		local = r[:i]
	}
	local = strings.Trim(local, `"`)
	switch {
	case strings.EqualFold(local, "postmaster"):
		return "postmaster"
	case strings.EqualFold(local, "abuse"):
		return "abuse"
	}
	return ""
}

// clientIP finds the SMTP client's address: the connect command's address
// for tcp4/tcp6, else the {client_addr} macro, the "[addr]" host name the
// MTA uses when the client has no name, or the "_" macro ("name [addr]").
// Sendmail writes IPv6 addresses as "IPv6:2001:db8::1", which go-milter
// cannot parse, so those arrive here through the fallbacks. Unix-socket
// and unknown clients have no address to look up.
func clientIP(family string, addr net.IP, host string, macros map[string]string) (netip.Addr, bool) {
	if family == "unix" {
		return netip.Addr{}, false
	}
	if a, ok := netip.AddrFromSlice(addr); ok {
		return a.Unmap(), true
	}
	if a, ok := parseAddr(macros["{client_addr}"]); ok {
		return a, true
	}
	if strings.HasPrefix(host, "[") {
		if a, ok := parseAddr(host); ok {
			return a, true
		}
	}
	if u := macros["_"]; u != "" {
		if i := strings.LastIndexByte(u, '['); i >= 0 {
			if a, ok := parseAddr(u[i:]); ok {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// parseAddr parses "192.0.2.1", "[192.0.2.1]", "IPv6:2001:db8::1" and
// "[IPv6:2001:db8::1]".
func parseAddr(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		s = s[1:end]
	}
	if len(s) > 5 && strings.EqualFold(s[:5], "IPv6:") {
		s = s[5:]
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

var _ gomilter.Milter = (*session)(nil)
