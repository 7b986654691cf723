package milter

import (
	"context"
	"encoding/binary"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/traps"
)

// HeaderName is the header added to messages when the policy's action is "tag".
const HeaderName = "X-Blmilter"

// phase is where a connection is in the milter protocol. The legal
// sequences are libmilter's: option negotiation once, then SMTP sessions,
// each CONNECT [HELO...] then message transactions MAIL RCPT... [DATA,
// headers, body] end of message, or ABORT at any point. After an ABORT, or
// QUIT_NC, a new CONNECT starts a new SMTP session on the same connection.
// HELO and MAIL inside a transaction end it, as libmilter allows; a
// command that cannot follow (two CONNECTs, MAIL before CONNECT, RCPT
// before MAIL, content before RCPT) ends the connection, where libmilter
// would leave the MTA waiting for a reply that never comes.
type phase uint8

const (
	phaseNew       phase = iota // before option negotiation
	phaseReady                  // negotiated, no SMTP session yet (or after QUIT_NC)
	phaseConnected              // CONNECT (and HELO) seen, no transaction
	phaseAborted                // after ABORT: a new MAIL, or a new CONNECT
	phaseMail                   // MAIL seen
	phaseRcpt                   // RCPT seen
	phaseMessage                // DATA, headers or body seen
)

func (p phase) inSession() bool     { return p >= phaseConnected }
func (p phase) inTransaction() bool { return p >= phaseMail }

// session is the protocol and policy state of one connection.
type session struct {
	phase  phase
	macros [stageCount]stageMacros
	// traps are the spam traps and delist addresses when the connection
	// negotiated (nil: none), kept for the whole connection: what was
	// negotiated (HELO, SMFIF_DELRCPT) is what they need.
	traps *traps.Traps

	// One SMTP session (from CONNECT): the client and its verdict.
	eng             *policy.Engine // the engine that judges this session
	judged          bool           // the client is looked up: its verdict decides
	rejectAtConnect bool
	verdict         policy.Verdict
	pending         *pendingCheck // the check still running; nil when verdict is set
	// What the session showed, for spam trap evidence and proofs of
	// control: the client's name from CONNECT, the HELO name, TLS.
	clientName string
	helo       string
	tls        string

	// One message transaction (from MAIL): reset at MAIL, ABORT and end
	// of message.
	auth          bool
	queueID       string
	reply         *policy.Reply
	loggedApplied bool
	loggedOther   bool
	mailFrom      string
	// delistRcpts are the delist addresses that removed the client's
	// listing in this transaction; others counts the other recipients
	// accepted. At end of message the delist addresses are dropped, and a
	// message for them alone is discarded.
	delistRcpts []string
	others      int
}

// handle processes one command and queues its reply in c.out. quit is
// true when the MTA ends the connection.
func (c *conn) handle(cmd byte, data []byte) (quit bool, err error) {
	s := &c.session
	if s.phase == phaseNew && cmd != cmdOptNeg && cmd != cmdQuit {
		return false, protoErr(kindOrder, "command %q before option negotiation", cmd)
	}
	switch cmd {
	case cmdOptNeg:
		if s.phase != phaseNew {
			return false, protoErr(kindOrder, "a second option negotiation")
		}
		if len(data) < optNegDataLen {
			return false, protoErr(kindMalformed, "option negotiation of %d bytes", len(data))
		}
		if v := binary.BigEndian.Uint32(data); v < minMTAVersion {
			return false, protoErr(kindMalformed, "protocol version %d", v)
		}
		s.phase = phaseReady
		if c.srv.opts.Traps != nil {
			s.traps = c.srv.opts.Traps()
		}
		c.out = append(c.out, optNegReplies[negotiationFor(s.traps)]...)

	case cmdMacro:
		if len(data) == 0 {
			return false, protoErr(kindMalformed, "empty macro packet")
		}
		if st := macroStage(data[0]); st >= 0 {
			s.macros[st].setMacros(data[1:])
		}

	case cmdConnect:
		switch s.phase {
		case phaseReady, phaseAborted:
		default:
			return false, protoErr(kindOrder, "CONNECT inside an SMTP session")
		}
		ci, ok := parseConnect(data)
		if !ok {
			return false, protoErr(kindMalformed, "CONNECT of %d bytes", len(data))
		}
		c.endSMTPSession()
		s.phase = phaseConnected
		c.connect(ci)

	case cmdHelo:
		if !s.phase.inSession() {
			return false, protoErr(kindOrder, "HELO before CONNECT")
		}
		if s.phase.inTransaction() {
			c.resetTransaction()
		}
		s.phase = phaseConnected
		c.helo(data)
		c.out = append(c.out, continuePacket...)

	case cmdMail:
		if !s.phase.inSession() {
			return false, protoErr(kindOrder, "MAIL before CONNECT")
		}
		s.phase = phaseMail
		c.mail()
		if from, _, _ := cstring(data); len(from) <= maxEvidence {
			s.mailFrom = strings.Trim(string(from), "<>")
		}
		c.out = append(c.out, continuePacket...)

	case cmdRcpt:
		if s.phase != phaseMail && s.phase != phaseRcpt {
			return false, protoErr(kindOrder, "RCPT before MAIL")
		}
		s.phase = phaseRcpt
		rcpt, _, _ := cstring(data)
		c.rcpt(rcpt)

	case cmdData, cmdHeader, cmdEOH, cmdBody:
		if s.phase != phaseRcpt && s.phase != phaseMessage {
			return false, protoErr(kindOrder, "message content (command %q) before RCPT", cmd)
		}
		s.phase = phaseMessage
		c.out = append(c.out, continuePacket...)

	case cmdEOB:
		if s.phase != phaseRcpt && s.phase != phaseMessage {
			return false, protoErr(kindOrder, "end of message before RCPT")
		}
		c.endOfMessage()
		s.phase = phaseConnected

	case cmdAbort:
		// No reply. Outside a session there is nothing to abort.
		if s.phase.inSession() {
			c.resetTransaction()
			s.phase = phaseAborted
		}

	case cmdUnknown:
		c.out = append(c.out, continuePacket...)

	case cmdQuitNC:
		c.endSMTPSession()
		s.phase = phaseReady

	case cmdQuit:
		return true, nil
	}
	return false, nil
}

// endSMTPSession forgets the SMTP session: a check still running is left
// to finish on its own, unread.
func (c *conn) endSMTPSession() {
	s := &c.session
	s.eng = nil
	s.judged = false
	s.rejectAtConnect = false
	s.verdict = policy.Verdict{}
	s.pending = nil
	s.clientName, s.helo, s.tls = "", "", ""
	c.resetTransaction()
	s.reply = nil
	for st := stageHelo; st < stageCount; st++ {
		s.macros[st].set = false
	}
}

// maxEvidence bounds what a client's words (HELO, MAIL FROM) are kept at;
// longer ones are kept as empty.
const maxEvidence = 512

// helo notes the HELO name and the TLS macros sent with it.
func (c *conn) helo(data []byte) {
	s := &c.session
	if name, _, _ := cstring(data); len(name) <= maxEvidence {
		s.helo = string(name)
	}
	if m := &s.macros[stageHelo]; m.set {
		s.tls = strings.TrimSpace(m.tlsVersion + " " + m.cipher)
		m.set = false
	}
}

// connect starts judging the client of a new SMTP session.
func (c *conn) connect(ci connectInfo) {
	s := &c.session
	m := &s.macros[stageConnect]
	ip, ok := clientIP(ci, m)
	m.set = false
	eng := c.srv.engine()
	if eng == nil {
		// No policy loaded: let the mail through rather than hold it.
		c.out = append(c.out, acceptPacket...)
		return
	}
	debug := c.srv.logger.Enabled(context.Background(), slog.LevelDebug)
	if !ok {
		if debug {
			c.srv.logger.Debug("milter: client not looked up", slog.String("family", string(ci.family)), slog.String("host", string(ci.host)), slog.String("skip", string(policy.SkipInvalid)))
		}
		c.out = append(c.out, acceptPacket...)
		return
	}
	if skip := eng.Exempt(ip); skip != policy.SkipNone {
		if debug {
			c.srv.logger.Debug("milter: client not looked up", slog.String("ip", ip.String()), slog.String("skip", string(skip)))
		}
		// Accept at connect: the MTA stops calling this milter for the session.
		c.out = append(c.out, acceptPacket...)
		return
	}
	s.eng = eng
	s.judged = true
	s.rejectAtConnect = eng.RejectAt() == "connect"
	if h := string(ci.host); h != "" && h[0] != '[' && h != "unknown" && len(h) <= maxEvidence {
		s.clientName = h
	}
	if s.rejectAtConnect {
		s.verdict, _ = c.srv.checkNow(ip, func() (policy.Verdict, bool) {
			return eng.Check(context.Background(), ip), true
		})
		r := c.decide("connect", "")
		if s.verdict.Action.Applies() {
			c.out = appendReply(c.out, r)
		} else {
			c.out = append(c.out, continuePacket...)
		}
		return
	}
	// Look the client up while it says EHLO and MAIL; the verdict is
	// needed at RCPT. A cached answer needs no goroutine.
	if v, ok := c.srv.checkNow(ip, func() (policy.Verdict, bool) { return eng.CheckCached(ip) }); ok {
		s.verdict = v
	} else {
		s.pending = c.srv.startCheck(eng, ip)
	}
	c.out = append(c.out, continuePacket...)
}

// awaitVerdict waits for the check started at connect, if it is still
// running (the engine's deadline bounds it).
func (s *session) awaitVerdict() {
	if p := s.pending; p != nil {
		<-p.done
		s.verdict = p.verdict
		s.pending = nil
	}
}

func (c *conn) mail() {
	s := &c.session
	c.resetTransaction()
	m := &s.macros[stageMail]
	if m.set {
		s.noteQueueID(m.queueID)
		s.auth = m.authAuthen != ""
		m.set = false
	}
	// Macros sent before this MAIL for later commands belong to an
	// earlier transaction.
	s.macros[stageRcpt].set = false
	s.macros[stageEOM].set = false
}

func (c *conn) rcpt(rcpt []byte) {
	s := &c.session
	if m := &s.macros[stageRcpt]; m.set {
		s.noteQueueID(m.queueID)
		m.set = false
	}
	// accept lets the recipient through; others counts it for the end of
	// message, where a delist address goes.
	accept := func() {
		s.others++
		c.out = append(c.out, continuePacket...)
	}
	if !s.judged {
		accept()
		return
	}
	if c.trapRecipient(rcpt) {
		return
	}
	if s.rejectAtConnect {
		accept()
		return
	}
	if s.auth {
		// SASL-authenticated senders are judged by their credentials, not
		// by the network they happen to send from.
		if !s.loggedOther {
			s.loggedOther = true
			c.srv.logger.Debug("milter: authenticated client not judged", slog.String("queue_id", s.queueID))
		}
		accept()
		return
	}
	s.awaitVerdict()
	if exempt := exemptRecipient(strings.Trim(string(rcpt), "<>")); exempt != "" {
		// RFC 5321 4.5.1: postmaster must always be reachable; abuse@ is
		// where a listed sender reports a mistake.
		if !s.loggedOther && s.verdict.Action != policy.ActionAccept {
			s.loggedOther = true
			c.decideLog("rcpt", exempt)
		}
		accept()
		return
	}
	if s.verdict.Action.Applies() {
		r := c.transactionReply()
		if !s.loggedApplied {
			s.loggedApplied = true
			c.decideLog("rcpt", "")
		}
		c.out = appendReply(c.out, r)
		return
	}
	if !s.loggedOther {
		s.loggedOther = true
		if s.verdict.Action != policy.ActionAccept {
			c.transactionReply()
		}
		c.decideLog("rcpt", "")
	}
	accept()
}

// endOfMessage adds the header for action = "tag" and ends the
// transaction. End of message is always sent, whatever was negotiated.
func (c *conn) endOfMessage() {
	s := &c.session
	m := &s.macros[stageEOM]
	if s.judged && !s.auth {
		s.awaitVerdict()
		if s.verdict.Action == policy.ActionTag {
			if m.set {
				s.noteQueueID(m.queueID)
			}
			if r := c.transactionReply(); r.Header != "" {
				// Postfix wants LF line ends in header values.
				c.out = appendStringsPacket(c.out, respAddHeader, HeaderName, strings.ReplaceAll(r.Header, "\r\n", "\n"))
			}
		}
	}
	m.set = false
	final := continuePacket
	if len(s.delistRcpts) > 0 {
		if s.others == 0 {
			// A message to delist addresses alone: its work is done.
			final = discardPacket
		} else {
			for _, r := range s.delistRcpts {
				c.out = appendStringsPacket(c.out, respDelRcpt, "<"+r+">")
			}
		}
	}
	c.resetTransaction()
	c.out = append(c.out, final...)
}

func (c *conn) resetTransaction() {
	s := &c.session
	s.auth = false
	s.queueID = ""
	if !s.rejectAtConnect {
		// With reject_at = "connect" the decision, and its reference, is
		// the connection's; otherwise each message gets its own.
		s.reply = nil
	}
	s.loggedApplied = false
	s.loggedOther = false
	s.mailFrom = ""
	s.delistRcpts = s.delistRcpts[:0]
	s.others = 0
}

func (s *session) noteQueueID(id string) {
	if id != "" {
		s.queueID = id
	}
}

// transactionReply returns the reply for the verdict, made once per message
// transaction so that each transaction gets one decision reference.
func (c *conn) transactionReply() policy.Reply {
	s := &c.session
	if s.reply == nil {
		r := s.eng.Reply(&s.verdict)
		s.reply = &r
	}
	return *s.reply
}

// decide logs the decision at stage and returns the reply for it.
func (c *conn) decide(stage, exempt string) policy.Reply {
	var r policy.Reply
	if c.session.verdict.Action != policy.ActionAccept {
		r = c.transactionReply()
	}
	c.decideLog(stage, exempt)
	return r
}

func (c *conn) decideLog(stage, exempt string) {
	s := &c.session
	d := decisionLine{when: time.Now(), verdict: s.verdict, stage: stage, queueID: s.queueID, exempt: exempt}
	if s.reply != nil {
		d.ref = s.reply.Ref
	}
	c.srv.decisions.log(d)
}

// replyText is the milter reply text for r: "550 5.7.1 text". '%' is
// doubled because Sendmail reads the text as a format and replaces a reply
// with a lone '%' by its own generic one.
func replyText(r policy.Reply) string {
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
	return strconv.Itoa(code) + " " + enh + " " + sendmailSafe(text)
}

func appendReply(b []byte, r policy.Reply) []byte {
	return appendStringsPacket(b, respReplyCode, replyText(r))
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
