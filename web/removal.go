package web

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/blmilter/blmilter/internal/mailbox"
	"github.com/blmilter/blmilter/store"
)

// handleRemoval takes a removal request from the form on the status page.
// With a relay it is stored as pending and a mail with a one-time link goes
// to the address given; nothing is removed until the link is followed.
// Without a relay, or when the mail cannot be sent, the request waits for
// an operator: a request a person made is never left to die unseen.
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
	// The address is kept as typed: only the owner's server may fold the
	// case of its local part. The limit per mailbox ignores case.
	email := strings.TrimSpace(r.PostFormValue("email"))
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	box, msg := checkRemovalForm(email, reason)
	if msg != "" {
		s.errorPage(w, r, http.StatusBadRequest, "Please correct the form", msg)
		return
	}
	listing, ok := s.store.ListingFor(ip)
	if !ok || listing.Expired(s.now()) {
		s.message(w, http.StatusOK, "Not on our list", ip.String(),
			"This address is not on this site's own list, so there is nothing to remove here.",
			"If another list lists it, only that list can remove it: follow the link in its row on the address's page.")
		return
	}
	ctx := r.Context()
	cfg := s.config()

	// With a relay, talk to it before storing anything: an address it
	// cannot deliver to is refused while the requester is still here.
	var relay *relayConn
	if cfg.SMTP.Server != "" {
		relay, err = s.dialRelay(ctx, cfg)
		if err != nil {
			s.log.Error("web: mail relay unavailable; the removal request goes to the operator", "err", err)
			relay = nil
		} else {
			defer relay.close()
			if box.NeedsSMTPUTF8() && !relay.utf8 {
				s.errorPage(w, r, http.StatusBadRequest, "Address not supported",
					"Your address has characters outside ASCII before the @, and this site's mail relay cannot send to such addresses (it does not offer SMTPUTF8). Give an address with only ASCII characters before the @.")
				return
			}
		}
	}
	req, err := s.store.CreateRequest(ctx, store.NewRequest{
		IP: ip.String(), Email: email, Reason: reason,
		ToOperator:  relay == nil,
		MaxPerEmail: mailsPerAddress, Per: 24 * time.Hour,
	})
	switch {
	case errors.Is(err, store.ErrQuota):
		w.Header().Set("Retry-After", "86400")
		s.errorPage(w, r, http.StatusTooManyRequests, "Too many requests for this address",
			fmt.Sprintf("We take at most %d removal requests a day from one email address. Look for the mails already sent, or try again tomorrow.", mailsPerAddress))
		return
	case errors.Is(err, store.ErrInvalid):
		s.errorPage(w, r, http.StatusBadRequest, "Please correct the form", "The email address or the text was not accepted. Use a plain address such as admin@example.org.")
		return
	case err != nil:
		s.log.Error("web: create removal request", "ip", ip, "err", err)
		s.errorPage(w, r, http.StatusServiceUnavailable, "Temporarily unavailable", "Your request could not be stored. Try again later.")
		return
	}
	s.log.Info("web: removal request", "id", req.ID, "ip", ip, "client", remoteIP(r), "status", req.Status)
	base := strings.TrimRight(cfg.PublicURL, "/")
	status := base + "/request/" + s.store.StatusToken(req.ID)
	follow := "Follow your request at " + status + " (keep this address)."
	if relay == nil {
		s.notifyNow()
		s.messageLink(w, http.StatusOK, "Request received", ip.String(), status,
			"Your removal request is stored and waits for the operator of this mail service, who decides on it. You do not need to do anything else.",
			follow)
		return
	}
	link := base + "/confirm/" + url.PathEscape(req.Token)
	msgText := confirmationMail(s.mailFrom(cfg), box, s.host(), ip, link, status, s.now())
	if err := relay.send(s.mailFrom(cfg), box, msgText); err != nil {
		s.log.Error("web: send confirmation mail; the removal request goes to the operator", "id", req.ID, "err", err)
		if err := s.store.HandToOperator(context.WithoutCancel(ctx), req.ID); err != nil {
			s.log.Error("web: hand removal request to the operator", "id", req.ID, "err", err)
		}
		s.notifyNow()
		s.messageLink(w, http.StatusOK, "Request received", ip.String(), status,
			"Your removal request is stored, but the confirmation mail could not be sent. The request waits for the operator of this mail service instead, who decides on it. You do not need to do anything else.",
			follow)
		return
	}
	s.messageLink(w, http.StatusOK, "Check your mailbox", ip.String(), status,
		"We sent a mail to "+email+" with a link. Open it and press the button on the page it leads to: that confirms the request. The link works once, for a limited time.",
		"Nothing changes until you confirm.", follow)
}

// checkRemovalForm returns the requester's mailbox, or what is wrong with
// the form in words.
func checkRemovalForm(email, reason string) (mailbox.Mailbox, string) {
	if email == "" {
		return mailbox.Mailbox{}, "Enter your email address: we send the confirmation link there."
	}
	box, err := mailbox.Parse(email)
	if err != nil {
		why := strings.TrimPrefix(err.Error(), mailbox.ErrInvalid.Error()+": ")
		return mailbox.Mailbox{}, "Enter a plain email address with a domain name, such as admin@example.org (" + why + ")."
	}
	if reason == "" {
		return mailbox.Mailbox{}, "Say briefly what you fixed: that helps the operator if the request needs a decision."
	}
	if len(reason) > maxReason || !utf8.ValidString(reason) {
		return mailbox.Mailbox{}, fmt.Sprintf("The text is too long; keep it under %d characters.", maxReason)
	}
	return box, ""
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
	s.notifyNow()
	s.messageLink(w, http.StatusOK, "Waiting for the operator", req.IP.String(), strings.TrimRight(cfg.PublicURL, "/")+"/request/"+s.store.StatusToken(req.ID),
		"Your request is confirmed. It cannot be granted automatically (the address has used its removals by request, the listing covers a whole network, or its category needs a person to look at it), so it waits for the operator of this mail service. You get a mail when they decide.",
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
