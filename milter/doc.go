// Package milter is blmilter's front end for Postfix (smtpd_milters) and
// Sendmail (INPUT_MAIL_FILTER): it speaks the milter protocol, turns each
// SMTP session into one policy check of the client's IP and applies the
// verdict.
//
// The check starts at connect, so DNS runs while the client says EHLO; the
// verdict is applied at RCPT by default, because Postfix replaces the text
// of a connect-stage reject with its own and the link in blmilter's reply
// would never reach the sender. At RCPT, mail to postmaster@ and abuse@ is
// always accepted (RFC 5321 section 4.5.1) and SASL-authenticated clients
// are not judged by their IP. Loopback, unix-socket, unknown and allow-listed
// clients are never looked up.
//
// Each connection is a state machine over the protocol's legal command
// sequences; anything else ends that connection, never the process. What
// one connection can hold is bounded: time per command and per connection,
// the number of connections, and the bytes it makes blmilter keep (headers
// and body, which blmilter never reads, are dropped as they arrive).
package milter
