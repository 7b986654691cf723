package web

import (
	"errors"
	"net/http"
	"time"

	"github.com/blmilter/blmilter/store"
)

// requestBody is the requester's status page of one removal request.
type requestBody struct {
	IP          string
	StatusTitle string
	Class       string // the verdict box's colour: good, warn or bad
	Paragraphs  []string
	Steps       []requestStep
}

type requestStep struct {
	At   time.Time
	What string
}

// handleRequest shows a removal request to whoever holds its status link:
// pending, confirmed, waiting, removed or denied, with dates. It shows
// neither the requester's address nor the operator.
func (s *Server) handleRequest(w http.ResponseWriter, r *http.Request) {
	tok := r.PathValue("token")
	if s.store == nil || len(tok) > 64 {
		s.requestNotFound(w)
		return
	}
	req, err := s.store.RequestByStatusToken(r.Context(), tok)
	if err != nil {
		if !errors.Is(err, store.ErrTokenInvalid) {
			s.log.Error("web: request status", "err", err)
			s.errorPage(w, r, http.StatusServiceUnavailable, "Temporarily unavailable", "The request could not be read. Try again in a minute.")
			return
		}
		s.requestNotFound(w)
		return
	}
	s.render(w, http.StatusOK, "request", page{Title: "Removal request for " + req.IP.String(), Body: requestPage(req)})
}

func (s *Server) requestNotFound(w http.ResponseWriter) {
	s.message(w, http.StatusNotFound, "No such request", "",
		"This link does not lead to a removal request: it was copied incompletely, or the request was decided so long ago that it is no longer kept.")
}

// requestPage tells a request's status in words.
func requestPage(q store.RemovalRequest) requestBody {
	b := requestBody{IP: q.IP.String()}
	b.Steps = append(b.Steps, requestStep{q.Created.UTC(), "request received"})
	if q.Verified != nil {
		b.Steps = append(b.Steps, requestStep{q.Verified.UTC(), "confirmed through the link in the mail"})
	}
	decided := func(what string) {
		if q.Decided != nil {
			b.Steps = append(b.Steps, requestStep{q.Decided.UTC(), what})
		}
	}
	switch q.Status {
	case store.StatusPending:
		b.StatusTitle, b.Class = "Pending: waiting for your confirmation", "warn"
		b.Paragraphs = []string{"We sent a mail with a link to the address you gave. Open it and press the button on the page it leads to; the link works until " + fmtTime(q.TokenExpires) + "."}
	case store.StatusConfirmed:
		b.StatusTitle, b.Class = "Confirmed", "warn"
		b.Paragraphs = []string{"The request is confirmed and being decided."}
	case store.StatusWaiting:
		b.StatusTitle, b.Class = "Waiting for the operator", "warn"
		b.Paragraphs = []string{"A person at this site decides on this request. You get a mail when they do, if this site can send mail; this page shows it too."}
	case store.StatusRemoved:
		b.StatusTitle, b.Class = "Removed", "good"
		if q.DecidedBy == "not listed" {
			b.Paragraphs = []string{"The address was no longer listed when the request was confirmed: there was nothing left to remove."}
			decided("closed: the address was no longer listed")
		} else {
			b.Paragraphs = []string{"The listing was removed by the self-service rule: mail from the address is no longer refused because of it."}
			decided("removed")
		}
	case store.StatusApproved:
		b.StatusTitle, b.Class = "Removed", "good"
		b.Paragraphs = []string{"The operator approved the request and removed the listing: mail from the address is no longer refused because of it."}
		decided("approved by the operator; the listing was removed")
	case store.StatusDenied:
		b.StatusTitle, b.Class = "Denied", "bad"
		b.Paragraphs = []string{"The operator denied the request: the listing stays until it expires or the cause is fixed and a new request is granted."}
		decided("denied by the operator")
	case store.StatusExpired:
		b.StatusTitle, b.Class = "Expired: never confirmed", "bad"
		b.Paragraphs = []string{"The confirmation link was not followed in time, so nothing was done. If the removal is still needed, send the form on the address's page again."}
		decided("closed: the confirmation link expired unused")
	}
	return b
}
