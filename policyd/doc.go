// Package policyd serves the blmilter engine over the Postfix SMTP access
// policy delegation protocol (check_policy_service, Postfix
// SMTPD_POLICY_README), for sites that use a policy server instead of a
// milter.
//
// A request is a sequence of "name=value" lines ended by an empty line; the
// reply is one "action=..." line and an empty line. Postfix keeps the
// connection open and sends several requests over it, one per recipient.
//
// When it decides: at protocol_state RCPT (and for a request without
// protocol_state, which older or hand-written clients send). At CONNECT,
// EHLO, HELO and MAIL it decides only when [policy] reject_at = "connect";
// at DATA, END-OF-MESSAGE, VRFY and ETRN it always answers DUNNO, since the
// client was already judged at RCPT. Mail to postmaster@ and abuse@ (any
// domain, or the bare local part) and SASL-authenticated clients get DUNNO,
// as do loopback and allow-listed clients, which are never looked up.
//
// What it answers:
//
//	reject    action=550 5.7.1 <reply text with link>
//	tempfail  action=451 4.7.1 <reply text>
//	tag       action=PREPEND X-Blmilter: <header>
//	otherwise action=DUNNO
//
// Postfix sends the same instance attribute for every recipient of one
// message; the first recipient decides and the others get the same answer,
// so a message is one recorded decision and its tag header is prepended
// once.
//
// Bad input fails open: a request without a usable client_address, or with
// a line that is not name=value, is answered DUNNO and logged. A line longer
// than MaxLineLength or more than MaxAttributes lines end the connection, as
// does a client silent for longer than the read timeout. A check that
// panics is answered DUNNO too.
package policyd
