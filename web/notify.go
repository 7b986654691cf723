package web

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/blmilter/blmilter/internal/mailbox"
	"github.com/blmilter/blmilter/store"
)

// The removal loop's mails: the requester hears when an operator decides,
// the operator ([web] operator_email) when a request waits. They are sent
// from the store's PendingNotices, so a decision made by the command line
// in another process is told too, and a relay that is down only delays
// them. Notices older than noticeMaxAge are not sent: a relay configured
// today must not mail about last year's requests.
const (
	noticeInterval = 5 * time.Second
	noticeMaxAge   = 7 * 24 * time.Hour
)

// notifyNow asks the notifier to look for mails to send at once.
func (s *Server) notifyNow() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// runNotices sends the owed mails every noticeInterval and when asked,
// until stop is closed.
func (s *Server) runNotices(stop <-chan struct{}) {
	t := time.NewTicker(noticeInterval)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		s.sendNotices(ctx)
		cancel()
		select {
		case <-stop:
			return
		case <-t.C:
		case <-s.notify:
		}
	}
}

// sendNotices sends every mail owed now, through one relay session as far
// as it goes.
func (s *Server) sendNotices(ctx context.Context) {
	cfg := s.config()
	if s.store == nil || cfg.SMTP.Server == "" {
		return
	}
	ns, err := s.store.PendingNotices(ctx, s.now().Add(-noticeMaxAge), cfg.OperatorEmail != "")
	if err != nil {
		if !errors.Is(err, errStoreUnavailable) {
			s.log.Warn("web: pending notices", "err", err)
		}
		return
	}
	var relay *relayConn
	defer func() {
		if relay != nil {
			relay.close()
		}
	}()
	for _, n := range ns {
		to := n.Request.Email
		if n.Kind == store.NoticeWaiting {
			to = cfg.OperatorEmail
		}
		box, err := mailbox.Parse(to)
		if err != nil {
			s.log.Warn("web: notice not sent: no mailbox", "id", n.Request.ID, "kind", n.Kind, "err", err)
			s.markNotified(ctx, n)
			continue
		}
		if relay == nil {
			if relay, err = s.dialRelay(ctx, cfg); err != nil {
				s.log.Warn("web: mail relay unavailable; notices wait", "err", err)
				return
			}
		}
		if box.NeedsSMTPUTF8() && !relay.utf8 {
			s.log.Warn("web: notice not sent: the address needs SMTPUTF8, which the relay lacks", "id", n.Request.ID, "kind", n.Kind)
			s.markNotified(ctx, n)
			continue
		}
		if err := relay.send(s.mailFrom(cfg), box, s.noticeMail(cfg, n, box)); err != nil {
			s.log.Warn("web: notice not sent; it is tried again", "id", n.Request.ID, "kind", n.Kind, "err", err)
			relay.close()
			relay = nil
			continue
		}
		s.log.Info("web: notice sent", "id", n.Request.ID, "kind", n.Kind, "status", n.Request.Status)
		s.markNotified(ctx, n)
	}
}

func (s *Server) markNotified(ctx context.Context, n store.Notice) {
	if err := s.store.MarkNotified(ctx, n.Request.ID, n.Kind, s.now()); err != nil {
		s.log.Warn("web: mark notice sent", "id", n.Request.ID, "err", err)
	}
}

// noticeMail writes the mail of a notice.
func (s *Server) noticeMail(cfg *Settings, n store.Notice, to mailbox.Mailbox) []byte {
	q := n.Request
	host := s.host()
	base := strings.TrimRight(cfg.PublicURL, "/")
	status := base + "/request/" + s.store.StatusToken(q.ID)
	ip := q.IP.String()
	var subject, body string
	switch {
	case n.Kind == store.NoticeWaiting:
		subject = fmt.Sprintf("Removal request %d for %s waits for you", q.ID, ip)
		body = fmt.Sprintf("A removal request for %s from %s's own list waits for an operator.\r\n\r\n"+
			"  request  %d\r\n  address  %s\r\n  from     %s\r\n  reason   %s\r\n  made     %s\r\n\r\n"+
			"Decide with\r\n\r\n  blmilter requests approve %d\r\n  blmilter requests deny %d\r\n\r\n"+
			"The address's page: %s/ip/%s\r\n",
			ip, host, q.ID, ip, oneLine(q.Email), oneLine(q.Reason), fmtTime(q.Created), q.ID, q.ID, base, ip)
	case q.Status == store.StatusApproved:
		subject = "Approved: the removal of " + ip + " from " + host + "'s list"
		body = "The operator of " + host + " approved your request to remove\r\n" + ip +
			" from its list. The listing is removed: mail from " + ip + "\r\n" +
			"is no longer refused because of it. Mail that was deferred is\r\n" +
			"delivered at the sending server's next retry.\r\n\r\n" +
			"Your request: " + status + "\r\n"
	default:
		subject = "Denied: the removal of " + ip + " from " + host + "'s list"
		body = "The operator of " + host + " denied your request to remove\r\n" + ip +
			" from its list. The listing stays; the address's page says why\r\n" +
			"it was listed and what to do:\r\n\r\n  " + base + "/ip/" + ip + "\r\n\r\n" +
			"Your request: " + status + "\r\n"
	}
	return newMail(s.mailFrom(cfg), to, host, subject, body, s.now())
}

// oneLine keeps requester text on one line of a mail: control characters
// become spaces, long text is cut.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if r := []rune(s); len(r) > 300 {
		s = string(r[:299]) + "…"
	}
	return s
}
