package policyd

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/traps"
)

// actionDunno lets Postfix go on with the next restriction.
const actionDunno = "DUNNO"

// stage is the SMTP state of a request, as it appears in the log.
type stage uint8

const (
	stageOther stage = iota
	stageConnect
	stageHelo
	stageMail
	stageRcpt
	stageData
)

var stageNames = [...]string{"other", "connect", "helo", "mail", "rcpt", "data"}

func (s stage) String() string { return stageNames[s] }

func stageOf(protocolState string) stage {
	switch protocolState {
	case "RCPT", "":
		return stageRcpt
	case "CONNECT":
		return stageConnect
	case "EHLO", "HELO":
		return stageHelo
	case "MAIL":
		return stageMail
	case "DATA", "END-OF-MESSAGE", "BDAT":
		return stageData
	}
	return stageOther
}

// memo is the last verdict of a connection. Postfix sends one request per
// recipient with the same instance attribute for one message: the first
// decides, the others repeat its answer, so a message is one recorded
// decision with one reference, and a tag header is prepended once.
type memo struct {
	engine   *policy.Engine
	instance string
	ip       netip.Addr
	verdict  policy.Verdict
	reply    policy.Reply
	action   string
}

// decide answers the request in c.req. A panic below it is a bug in a
// check: the client is let through (fail safe for mail) and the server
// keeps running.
func (c *conn) decide() (action string) {
	defer func() {
		if r := recover(); r != nil {
			c.pending = pendingLog{}
			c.s.log.Error("policy check panicked; answered DUNNO", "panic", r,
				"client_address", c.req.ClientAddress, "queue_id", c.req.QueueID,
				"stack", string(debug.Stack()))
			c.s.panicked()
			action = actionDunno
		}
	}()
	return c.decideRequest()
}

// decideRequest answers the request in c.req and notes the decision for
// the log.
func (c *conn) decideRequest() string {
	s, req := c.s, &c.req
	st := stageOf(req.ProtocolState)
	if req.Malformed != "" {
		s.log.Warn("malformed policy request answered DUNNO", "remote", c.remote, "problem", req.Malformed,
			"queue_id", req.QueueID, "stage", st.String())
		return actionDunno
	}
	if req.Request != "" && req.Request != "smtpd_access_policy" {
		s.log.Warn("unknown policy request type answered DUNNO", "remote", c.remote, "request", req.Request)
		return actionDunno
	}
	e := s.engine()
	if e == nil {
		s.log.Warn("no policy engine; answered DUNNO", "queue_id", req.QueueID, "stage", st.String())
		return actionDunno
	}
	switch st {
	case stageRcpt:
	case stageConnect, stageHelo, stageMail:
		if e.RejectAt() != policy.RejectAtConnect {
			return actionDunno
		}
	default:
		return actionDunno
	}
	if st == stageRcpt {
		if action, ok := c.recipientAction(e); ok {
			return action
		}
	}
	if req.SASLUsername != "" {
		c.exempt(st, "authenticated")
		return actionDunno
	}
	if st == stageRcpt && isRoleRecipient(req.Recipient) {
		c.exempt(st, "role recipient")
		return actionDunno
	}
	ip, ok := parseClientAddress(req.ClientAddress)
	if !ok {
		if req.ClientAddress == "unknown" {
			c.exempt(st, string(policy.SkipInvalid))
		} else {
			s.log.Warn("policy request without a valid client_address answered DUNNO", "remote", c.remote,
				"client_address", req.ClientAddress, "queue_id", req.QueueID, "stage", st.String())
		}
		return actionDunno
	}
	if skip := e.Exempt(ip); skip != policy.SkipNone {
		c.exempt(st, string(skip))
		return actionDunno
	}

	m := &c.memo
	repeat := c.judge(e, ip)
	action := m.action
	if repeat && strings.HasPrefix(action, "PREPEND ") {
		action = actionDunno // one header per message
	}
	c.pending = pendingLog{set: true, stage: st, action: action, repeat: repeat}
	return action
}

// recipientAction answers a spam trap or delist recipient; ok is false
// for any other, which is judged as before. A trap gets the reply of a dead
// address, whoever sends; its hit lists the client unless the client is
// one never listed. A delist address from the listed client itself
// removes its listing and the message is discarded (DISCARD applies to the
// whole message, which is why the page asks for a mail to that address
// alone).
func (c *conn) recipientAction(e *policy.Engine) (string, bool) {
	if c.s.traps == nil {
		return "", false
	}
	t := c.s.traps()
	kind, token := t.Classify(c.req.Recipient)
	if kind == traps.Ordinary {
		return "", false
	}
	req := &c.req
	ip, _ := parseClientAddress(req.ClientAddress)
	sess := traps.Session{
		IP: ip, HELO: req.HeloName, MailFrom: req.Sender, QueueID: req.QueueID,
		ClientName: clientName(req), TLS: strings.TrimSpace(req.EncryptionProtocol + " " + req.EncryptionCipher),
		Authenticated: req.SASLUsername != "",
		Verdict:       policy.Verdict{IP: ip, Threshold: e.Threshold(), Skipped: e.Exempt(ip)},
	}
	if ip.IsValid() && sess.Verdict.Skipped == policy.SkipNone {
		// The message's verdict from before the hit: its other
		// recipients are judged by it, the listing applies to the next.
		c.judge(e, ip)
		sess.Verdict = c.memo.verdict
	}
	switch kind {
	case traps.Trap:
		t.Hit(c.s.ctx, sess, req.Recipient)
		return fmt.Sprintf("%d %s %s", traps.TrapCode, traps.TrapEnhanced, traps.TrapReason), true
	default:
		res := t.Delist(c.s.ctx, sess, token)
		if traps.Accepts(res) {
			return "DISCARD delisting mail", true
		}
		if sess.Verdict.Action.Applies() {
			return "", false // the listing's own reply, with its link
		}
		return fmt.Sprintf("%d %s %s", traps.DelistCode, traps.TrapEnhanced, traps.DelistReason), true
	}
}

// clientName is the client's name as Postfix has it: verified, else the
// unverified PTR; "" when it has none.
func clientName(req *Request) string {
	for _, n := range []string{req.ClientName, req.ReverseClientName} {
		if n != "" && n != "unknown" {
			return n
		}
	}
	return ""
}

// judge makes sure the memo holds the verdict on ip for the request's
// message, checking (and replying) only for the message's first request;
// it reports whether the memo already held it.
func (c *conn) judge(e *policy.Engine, ip netip.Addr) (repeat bool) {
	m, req := &c.memo, &c.req
	if req.Instance != "" && m.engine == e && m.instance == req.Instance && m.ip == ip {
		return true
	}
	v := e.Check(c.s.ctx, ip)
	m.engine, m.instance, m.ip, m.verdict, m.reply = e, req.Instance, ip, v, policy.Reply{}
	m.action = actionDunno
	switch v.Action {
	case policy.ActionReject, policy.ActionTempfail, policy.ActionTag:
		m.reply = e.Reply(&v)
		m.action = formatAction(v.Action, &m.reply)
	}
	return false
}

// pendingLog is a decision to log once its reply is on its way: Postfix
// waits for the reply, not for the log line, which costs as much as a
// cached check.
type pendingLog struct {
	set    bool
	stage  stage
	action string
	repeat bool
}

// exempt logs a request that was not judged.
func (c *conn) exempt(st stage, why string) {
	if !c.s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	c.s.log.Debug("policy request exempt", "exempt", why, "client_address", c.req.ClientAddress,
		"recipient", c.req.Recipient, "sasl_username", c.req.SASLUsername,
		"queue_id", c.req.QueueID, "stage", st.String())
}

func (c *conn) logDecision() {
	p := c.pending
	c.pending = pendingLog{}
	if !p.set {
		return
	}
	st, action, repeat := p.stage, p.action, p.repeat
	ctx := context.Background()
	if !c.s.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	m := &c.memo
	c.attrs = append(c.attrs[:0], policy.LogAttrs(m.verdict)...)
	c.attrs = append(c.attrs,
		slog.String("queue_id", c.req.QueueID),
		slog.String("stage", st.String()),
		slog.String("reply", action),
		slog.String("client_name", c.req.ClientName),
		slog.String("helo", c.req.HeloName),
		slog.String("sender", c.req.Sender),
		slog.String("recipient", c.req.Recipient),
	)
	if m.reply.Ref != "" {
		c.attrs = append(c.attrs, slog.String("ref", m.reply.Ref))
	}
	if repeat {
		c.attrs = append(c.attrs, slog.Bool("same_message", true))
	}
	c.s.log.LogAttrs(ctx, slog.LevelInfo, "policy decision", c.attrs...)
}

// formatAction turns a reply into a Postfix access(5) action. The code is
// forced into the class the verdict asks for, so that no template can turn
// a tempfail into a reject or a reject into an accept.
func formatAction(a policy.Action, r *policy.Reply) string {
	switch a {
	case policy.ActionTag:
		if r.Header == "" {
			return actionDunno
		}
		return "PREPEND X-Blmilter: " + clean(r.Header)
	case policy.ActionReject:
		code, enh := r.Code, r.Enhanced
		if code < 500 || code > 599 || !strings.HasPrefix(enh, "5.") {
			code, enh = 550, "5.7.1"
		}
		return strconv.Itoa(code) + " " + enh + " " + clean(r.Text)
	case policy.ActionTempfail:
		code, enh := r.Code, r.Enhanced
		if code < 400 || code > 499 || !strings.HasPrefix(enh, "4.") {
			code, enh = 451, "4.7.1"
		}
		return strconv.Itoa(code) + " " + enh + " " + clean(r.Text)
	}
	return actionDunno
}

// clean keeps a text on one protocol line.
func clean(s string) string {
	if !strings.ContainsAny(s, "\r\n\x00") {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, s)
}

// parseClientAddress reads client_address. Postfix sends a bare IPv4 or
// IPv6 address; an "IPv6:" prefix (the SMTP address-literal form) is
// accepted too. IPv4-mapped IPv6 becomes IPv4.
func parseClientAddress(s string) (netip.Addr, bool) {
	if len(s) > 5 && strings.EqualFold(s[:5], "ipv6:") {
		s = s[5:]
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap().WithZone(""), true
}

// isRoleRecipient reports whether mail goes to postmaster or abuse, which
// every client may reach (RFC 5321 section 4.5.1, RFC 2142). The local part
// is compared without case and without a "+extension".
func isRoleRecipient(rcpt string) bool {
	local := rcpt
	if at := strings.LastIndexByte(rcpt, '@'); at >= 0 {
		local = rcpt[:at]
	}
	if plus := strings.IndexByte(local, '+'); plus >= 0 {
		local = local[:plus]
	}
	return strings.EqualFold(local, "postmaster") || strings.EqualFold(local, "abuse")
}
