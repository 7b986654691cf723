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
	"net/http"
	"net/mail"
	"net/netip"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/blmilter/blmilter/store"
)

// handleRemoval takes a removal request from the form on the status page:
// it is stored as pending and a mail with a one-time link goes to the
// address given; nothing is removed until the link is followed.
func (s *Server) handleRemoval(w http.ResponseWriter, r *http.Request) {
	in := r.PathValue("ip")
	ip, err := parseIP(in)
	if err != nil {
		s.badIP(w, in, err)
		return
	}
	if s.store == nil {
		s.errorPage(w, r, http.StatusNotFound, "No removal requests here", "This service keeps no list of its own, so there is nothing to remove.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		s.errorPage(w, r, http.StatusBadRequest, "Form not accepted", "The form could not be read; it may be too large. Go back and try again.")
		return
	}
	if !s.csrf.valid(r.PostFormValue("csrf"), "removal", ip.String()) {
		s.errorPage(w, r, http.StatusForbidden, "Form expired",
			"This form is too old or did not come from this site. Open the page of the address again and send the form from there.")
		return
	}
	if !s.removal.allow(remoteIP(r)) {
		w.Header().Set("Retry-After", "3600")
		s.errorPage(w, r, http.StatusTooManyRequests, "Too many requests",
			"Your address has sent too many removal requests. Try again in an hour.")
		return
	}
	email := strings.TrimSpace(r.PostFormValue("email"))
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	if msg := checkRemovalForm(email, reason); msg != "" {
		s.errorPage(w, r, http.StatusBadRequest, "Please correct the form", msg)
		return
	}
	email = strings.ToLower(email) // one mailbox, one daily quota of mails
	listing, ok := s.store.ListingFor(ip)
	if !ok || listing.Expired(s.now()) {
		s.message(w, http.StatusOK, "Not on our list", ip.String(),
			"This address is not on this site's own list, so there is nothing to remove here.",
			"If another list lists it, only that list can remove it: follow the link in its row on the address's page.")
		return
	}
	ctx := r.Context()
	sent, err := s.store.RequestsByEmailSince(ctx, email, s.now().Add(-24*time.Hour))
	if err != nil {
		s.log.Error("web: count requests by email", "err", err)
		s.errorPage(w, r, http.StatusServiceUnavailable, "Temporarily unavailable", "Your request could not be stored. Try again later.")
		return
	}
	if sent >= mailsPerAddress {
		w.Header().Set("Retry-After", "86400")
		s.errorPage(w, r, http.StatusTooManyRequests, "Too many requests for this address",
			fmt.Sprintf("We send at most %d confirmation mails a day to one email address. Look for the mails already sent, or try again tomorrow.", mailsPerAddress))
		return
	}
	req, err := s.store.CreateRequest(ctx, ip.String(), email, reason)
	if err != nil {
		if errors.Is(err, store.ErrInvalid) {
			s.errorPage(w, r, http.StatusBadRequest, "Please correct the form", "The email address or the text was not accepted. Use a plain address such as admin@example.org.")
			return
		}
		s.log.Error("web: create removal request", "ip", ip, "err", err)
		s.errorPage(w, r, http.StatusServiceUnavailable, "Temporarily unavailable", "Your request could not be stored. Try again later.")
		return
	}
	cfg := s.config()
	s.log.Info("web: removal request", "id", req.ID, "ip", ip, "client", remoteIP(r))
	if cfg.SMTP.Server == "" {
		// No relay configured: the operator decides without a confirmation.
		s.message(w, http.StatusOK, "Request received", ip.String(),
			"Your removal request is stored. The operator of this mail service will look at it; you do not need to do anything else.")
		return
	}
	link := strings.TrimRight(cfg.PublicURL, "/") + "/confirm/" + url.PathEscape(req.Token)
	if err := s.sendConfirmation(ctx, cfg, email, ip, link); err != nil {
		s.log.Error("web: send confirmation mail", "id", req.ID, "err", err)
		s.errorPage(w, r, http.StatusBadGateway, "Mail could not be sent",
			"Your request is stored, but the confirmation mail could not be sent. Try again later.")
		return
	}
	s.message(w, http.StatusOK, "Check your mailbox", ip.String(),
		"We sent a mail to "+email+" with a link. Open it and press the button on the page it leads to: that confirms the request. The link works once, for a limited time.",
		"Nothing changes until you confirm.")
}

// checkRemovalForm returns what is wrong with the form, in words, or "".
func checkRemovalForm(email, reason string) string {
	if email == "" {
		return "Enter your email address: we send the confirmation link there."
	}
	a, err := mail.ParseAddress(email)
	if len(email) > maxEmail || err != nil || a.Address != email || a.Name != "" || strings.ContainsAny(email, "\r\n<>\"") {
		return "Enter a plain email address, such as admin@example.org."
	}
	if reason == "" {
		return "Say briefly what you fixed: that helps the operator if the request needs a decision."
	}
	if len(reason) > maxReason || !utf8.ValidString(reason) {
		return fmt.Sprintf("The text is too long; keep it under %d characters.", maxReason)
	}
	return ""
}

// handleConfirmPage shows a button rather than confirming on GET: mail
// scanners that fetch every link in a mail must not confirm a request.
func (s *Server) handleConfirmPage(w http.ResponseWriter, r *http.Request) {
	tok := r.PathValue("token")
	if s.store == nil || !validToken(tok) {
		s.confirmFailed(w)
		return
	}
	s.render(w, http.StatusOK, "confirm", page{Title: "Confirm removal", Body: struct{ Token, CSRF string }{tok, s.csrf.token("confirm", tok)}})
}

func (s *Server) handleConfirm(w http.ResponseWriter, r *http.Request) {
	tok := r.PathValue("token")
	if s.store == nil || !validToken(tok) {
		s.confirmFailed(w)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil || !s.csrf.valid(r.PostFormValue("csrf"), "confirm", tok) {
		s.errorPage(w, r, http.StatusForbidden, "Form expired", "This confirmation form is too old or did not come from this site. Open the link from the mail again.")
		return
	}
	ctx := r.Context()
	req, err := s.store.ConfirmRequest(ctx, tok, s.now())
	if err != nil {
		if !errors.Is(err, store.ErrTokenInvalid) {
			s.log.Error("web: confirm request", "err", err)
		}
		s.confirmFailed(w)
		return
	}
	cfg := s.config()
	q, win := cfg.RemovalQuota, cfg.RemovalWindow
	removed, err := s.store.DecideConfirmed(ctx, req.ID, q, win, cfg.SelfServiceCategories)
	if err != nil {
		s.log.Error("web: decide confirmed request", "id", req.ID, "err", err)
		s.message(w, http.StatusOK, "Request confirmed", req.IP.String(),
			"Your request is confirmed and waits for the operator of this mail service.")
		return
	}
	s.log.Info("web: removal request confirmed", "id", req.ID, "ip", req.IP, "removed", removed)
	note := fmt.Sprintf("Removal by request works %d times in %s for one address. If the address is listed again after a removal, that listing counts toward this limit; beyond it, the operator decides.", q, windowWords(win))
	if removed {
		s.message(w, http.StatusOK, "Removed", req.IP.String(),
			req.IP.String()+" is no longer on this site's own list. Mail from it is no longer refused because of that listing, from now on.",
			"Other lists decide for themselves; the address's page shows whether any still lists it.", note)
		return
	}
	s.message(w, http.StatusOK, "Waiting for the operator", req.IP.String(),
		"Your request is confirmed. It cannot be granted automatically (the address has used its removals by request, the listing covers a whole network, or its category needs a person to look at it), so it waits for the operator of this mail service.",
		note)
}

func (s *Server) confirmFailed(w http.ResponseWriter) {
	s.message(w, http.StatusNotFound, "Link not valid", "",
		"This confirmation link is not valid: it was already used, it has expired, or it was copied incompletely.",
		"If you still need the removal, send the form on the address's page again.")
}

// validToken accepts what CreateRequest hands out (URL-safe base64).
func validToken(t string) bool {
	if t == "" || len(t) > 128 {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// sendConfirmation sends the mail with the confirmation link through the
// [web.smtp] relay.
func (s *Server) sendConfirmation(ctx context.Context, cfg *Settings, to string, ip netip.Addr, link string) error {
	sc := cfg.SMTP
	host := s.host()
	from := sc.From
	if from == "" {
		from = "noreply@" + host
	}
	msg := confirmationMail(from, to, host, ip, link, s.now())

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", sc.Server)
	if err != nil {
		return fmt.Errorf("dial relay %s: %w", sc.Server, err)
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
			return fmt.Errorf("relay %s: starttls: %w", sc.Server, err)
		}
	} else {
		if sc.Username != "" {
			conn.Close()
			return fmt.Errorf("relay %s: refusing to authenticate without starttls", sc.Server)
		}
		c = smtp.NewClient(conn)
	}
	defer c.Close()
	if err := c.Hello(host); err != nil {
		return fmt.Errorf("relay %s: hello: %w", sc.Server, err)
	}
	if sc.Username != "" {
		if err := c.Auth(sasl.NewPlainClient("", sc.Username, sc.Password)); err != nil {
			return fmt.Errorf("relay %s: auth: %w", sc.Server, err)
		}
	}
	if err := c.SendMail(from, []string{to}, bytes.NewReader(msg)); err != nil {
		return fmt.Errorf("relay %s: send: %w", sc.Server, err)
	}
	if err := c.Quit(); err != nil {
		return fmt.Errorf("relay %s: quit: %w", sc.Server, err)
	}
	return nil
}

// confirmationMail builds the message. Every header value is either ours
// or checked (the address has no CR/LF), and the body is plain text.
func confirmationMail(from, to, host string, ip netip.Addr, link string, now time.Time) []byte {
	var id [12]byte
	rand.Read(id[:])
	var b bytes.Buffer
	hdr := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	hdr("From", from)
	hdr("To", to)
	hdr("Subject", mime.QEncoding.Encode("utf-8", "Confirm the removal of "+ip.String()+" from "+host+"'s list"))
	hdr("Date", now.Format(time.RFC1123Z))
	hdr("Message-ID", "<"+hex.EncodeToString(id[:])+"@"+host+">")
	hdr("Auto-Submitted", "auto-generated")
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", "text/plain; charset=utf-8")
	hdr("Content-Transfer-Encoding", "8bit")
	b.WriteString("\r\n")
	body := "Someone, probably you, asked " + host + " to remove the IP address\r\n" +
		ip.String() + " from its list of addresses it refuses mail from.\r\n\r\n" +
		"To confirm, open this link and press the button on the page:\r\n\r\n" +
		link + "\r\n\r\n" +
		"The link works once and expires. If you did not ask for this, ignore\r\n" +
		"this mail: nothing happens without the confirmation.\r\n"
	b.WriteString(body)
	return b.Bytes()
}
