// Package milter is blmilter's front end for Postfix (smtpd_milters) and
// Sendmail (INPUT_MAIL_FILTER): it speaks the milter protocol through
// github.com/emersion/go-milter, turns each SMTP session into one policy
// check of the client's IP and applies the verdict.
//
// The check starts at connect, so DNS runs while the client says EHLO; the
// verdict is applied at RCPT by default, because Postfix replaces the text
// of a connect-stage reject with its own and the link in blmilter's reply
// would never reach the sender. At RCPT, mail to postmaster@ and abuse@ is
// always accepted (RFC 5321 section 4.5.1) and SASL-authenticated clients
// are not judged by their IP. Loopback, unix-socket, unknown and allow-listed
// clients are never looked up.
package milter
