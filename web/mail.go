package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/netip"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/blmilter/blmilter/internal/mailbox"
)

// relayConn is a session with the [web.smtp] relay, greeted and
// authenticated, ready to send.
type relayConn struct {
	c      *smtp.Client
	server string
	utf8   bool // the relay offers SMTPUTF8
}

// errNoSMTPUTF8 is send's answer for an address that needs SMTPUTF8 when
// the relay does not offer it.
var errNoSMTPUTF8 = errors.New("the relay does not offer SMTPUTF8, which the address needs")

// dialRelay connects to the relay, with STARTTLS when configured, and
// authenticates. The whole session, sending included, must end within 30
// seconds.
func (s *Server) dialRelay(ctx context.Context, cfg *Settings) (*relayConn, error) {
	sc := cfg.SMTP
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", sc.Server)
	if err != nil {
		return nil, fmt.Errorf("dial relay %s: %w", sc.Server, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	var c *smtp.Client
	if sc.StartTLS {
		// starttls = true requires it: a relay that does not offer it fails
		// the mail rather than getting it, and any password, in the clear.
		relayHost, _, _ := net.SplitHostPort(sc.Server)
		c, err = smtp.NewClientStartTLS(conn, &tls.Config{ServerName: relayHost, MinVersion: tls.VersionTLS12})
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("relay %s: starttls: %w", sc.Server, err)
		}
	} else {
		if sc.Username != "" {
			conn.Close()
			return nil, fmt.Errorf("relay %s: refusing to authenticate without starttls", sc.Server)
		}
		c = smtp.NewClient(conn)
	}
	if err := c.Hello(s.host()); err != nil {
		c.Close()
		return nil, fmt.Errorf("relay %s: hello: %w", sc.Server, err)
	}
	if sc.Username != "" {
		if err := c.Auth(sasl.NewPlainClient("", sc.Username, sc.Password)); err != nil {
			c.Close()
			return nil, fmt.Errorf("relay %s: auth: %w", sc.Server, err)
		}
	}
	utf8, _ := c.Extension("SMTPUTF8")
	return &relayConn{c: c, server: sc.Server, utf8: utf8}, nil
}

// send sends msg to one mailbox: with SMTPUTF8 when the address needs it,
// or errNoSMTPUTF8 when the relay lacks it.
func (rc *relayConn) send(from string, to mailbox.Mailbox, msg []byte) error {
	opts := &smtp.MailOptions{}
	if to.NeedsSMTPUTF8() {
		if !rc.utf8 {
			return fmt.Errorf("relay %s: %w", rc.server, errNoSMTPUTF8)
		}
		opts.UTF8 = true
	}
	if err := rc.c.Mail(from, opts); err != nil {
		return fmt.Errorf("relay %s: mail from: %w", rc.server, err)
	}
	if err := rc.c.Rcpt(to.Envelope(), nil); err != nil {
		return fmt.Errorf("relay %s: rcpt to: %w", rc.server, err)
	}
	w, err := rc.c.Data()
	if err != nil {
		return fmt.Errorf("relay %s: data: %w", rc.server, err)
	}
	if _, err := w.Write(msg); err != nil {
		w.Close()
		return fmt.Errorf("relay %s: data: %w", rc.server, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("relay %s: data: %w", rc.server, err)
	}
	return nil
}

// close ends the session politely.
func (rc *relayConn) close() {
	rc.c.Quit()
	rc.c.Close()
}

// mailFrom is the sender of the service's mails.
func (s *Server) mailFrom(cfg *Settings) string {
	if cfg.SMTP.From != "" {
		return cfg.SMTP.From
	}
	return "noreply@" + s.host()
}

// newMail builds a plain-text message. Every header value is ours or
// checked (a mailbox carries no CR/LF); the subject is encoded.
func newMail(from string, to mailbox.Mailbox, host, subject, body string, now time.Time) []byte {
	var id [12]byte
	rand.Read(id[:])
	var b bytes.Buffer
	hdr := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	hdr("From", from)
	hdr("To", to.Envelope())
	hdr("Subject", mime.QEncoding.Encode("utf-8", subject))
	hdr("Date", now.Format(time.RFC1123Z))
	hdr("Message-ID", "<"+hex.EncodeToString(id[:])+"@"+host+">")
	hdr("Auto-Submitted", "auto-generated")
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", "text/plain; charset=utf-8")
	hdr("Content-Transfer-Encoding", "8bit")
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.Bytes()
}

// confirmationMail is the mail with the link that confirms a removal
// request, and the link of its status page.
func confirmationMail(from string, to mailbox.Mailbox, host string, ip netip.Addr, link, status string, now time.Time) []byte {
	body := "Someone, probably you, asked " + host + " to remove the IP address\r\n" +
		ip.String() + " from its list of addresses it refuses mail from.\r\n\r\n" +
		"To confirm, open this link and press the button on the page:\r\n\r\n" +
		link + "\r\n\r\n" +
		"The link works once and expires. If you did not ask for this, ignore\r\n" +
		"this mail: nothing happens without the confirmation.\r\n\r\n" +
		"The request's status, now and once it is decided:\r\n\r\n" +
		status + "\r\n"
	return newMail(from, to, host, "Confirm the removal of "+ip.String()+" from "+host+"'s list", body, now)
}
