package web

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/blmilter/blmilter/store"
)

// HistoryInfo is the address's story as this site recorded it: in the
// JSON API under "history", and on the status page. It never names a
// trap, a requester or an operator.
type HistoryInfo struct {
	FirstSeen *time.Time     `json:"first_seen"` // first trap hit, refusal or listing recorded; null: none
	LastSeen  *time.Time     `json:"last_seen"`
	Days      []HistoryDay   `json:"days"`   // days with trap hits or refusals, newest first
	Events    []HistoryEvent `json:"events"` // listings and removals, newest first
	Deferral  *DeferralInfo  `json:"deferral,omitempty"`
}

// HistoryDay is one UTC day.
type HistoryDay struct {
	Date     string   `json:"date"` // 2026-11-30
	TrapHits int      `json:"trap_hits"`
	HELOs    []string `json:"helos,omitempty"` // some HELO names given at those hits
	Refused  int      `json:"refused"`         // 5xx refusals recorded
	Deferred int      `json:"deferred"`        // 4xx refusals recorded
}

// HistoryEvent is one listing event of a network containing the address.
type HistoryEvent struct {
	Time      time.Time  `json:"time"`
	Event     string     `json:"event"` // listed | changed | removed | expired
	Network   string     `json:"network"`
	By        string     `json:"by,omitempty"` // spam-traps | operator | self-service | proof-of-control
	Category  string     `json:"category,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// DeferralInfo is delist-and-deliver of the address's listing: its
// refusals were deferred (451) so the sending servers kept the mail.
type DeferralInfo struct {
	Since    time.Time `json:"since"`    // the first deferred attempt
	Attempts int       `json:"attempts"` // deferred attempts
	// Until is when deferring ends and refusals become 550, while the
	// listing stands.
	Until *time.Time `json:"until,omitempty"`
	// Removed is when the listing was removed; from then on the next
	// retry is accepted.
	Removed *time.Time `json:"removed,omitempty"`
}

// Who made an event, in public words: operators are not named.
func eventBy(by string) string {
	switch {
	case by == "":
		return ""
	case by == store.ByTraps:
		return "spam-traps"
	case by == store.BySelfService:
		return "self-service"
	case by == store.ByProof:
		return "proof-of-control"
	}
	return "operator"
}

// history builds the HistoryInfo of ip.
func (s *Server) history(ctx context.Context, ip netip.Addr, cfg *Settings) (*HistoryInfo, error) {
	h, err := s.store.History(ctx, ip, s.now())
	if err != nil {
		return nil, err
	}
	out := &HistoryInfo{FirstSeen: utcPtr(h.FirstSeen), LastSeen: utcPtr(h.LastSeen), Days: []HistoryDay{}, Events: []HistoryEvent{}}
	for _, d := range h.Days {
		out.Days = append(out.Days, HistoryDay{Date: d.Day.Format(time.DateOnly), TrapHits: d.TrapHits, HELOs: d.HELOs, Refused: d.Refused, Deferred: d.Deferred})
	}
	for _, e := range h.Events {
		network := e.Prefix.String()
		if e.Prefix.IsSingleIP() {
			network = e.Prefix.Addr().String()
		}
		out.Events = append(out.Events, HistoryEvent{Time: e.At.UTC(), Event: e.Kind, Network: network, By: eventBy(e.By),
			Category: e.Category, ExpiresAt: utcPtr(e.Expires)})
	}
	if d := h.Deferral; d != nil && d.Count > 0 {
		di := &DeferralInfo{Since: d.Since.UTC(), Attempts: d.Count, Removed: utcPtr(d.Removed)}
		if d.Removed == nil && cfg.DeferFirst > 0 {
			until := d.Since.Add(cfg.DeferFirst).UTC()
			di.Until = &until
		}
		out.Deferral = di
	}
	return out, nil
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// daySentence tells one day in words.
func daySentence(d HistoryDay) string {
	var parts []string
	if d.TrapHits > 0 {
		s := "hit a spam trap of this site"
		if d.TrapHits > 1 {
			s += fmt.Sprintf(" %d times", d.TrapHits)
		}
		if len(d.HELOs) > 0 {
			s += " from HELO " + strings.Join(d.HELOs, ", ")
		}
		parts = append(parts, s)
	}
	if d.Refused > 0 {
		parts = append(parts, fmt.Sprintf("refused %s", times(d.Refused)))
	}
	if d.Deferred > 0 {
		parts = append(parts, fmt.Sprintf("deferred %s", times(d.Deferred)))
	}
	return strings.Join(parts, "; ")
}

func times(n int) string {
	if n == 1 {
		return "once"
	}
	return fmt.Sprintf("%d times", n)
}

// eventSentence tells one listing event in words.
func eventSentence(e HistoryEvent) string {
	var by string
	switch e.By {
	case "spam-traps":
		by = " by this site's spam traps"
	case "operator":
		by = " by the operator"
	case "self-service":
		by = " at the request of its owner"
	case "proof-of-control":
		by = " by its owner's mail from the address itself (proof of control)"
	}
	switch e.Event {
	case store.EventListed:
		s := "listed " + e.Network
		if e.Category != "" {
			s += " (" + categoryTitle(e.Category) + ")"
		}
		s += by
		if e.ExpiresAt != nil {
			s += ", until " + fmtTime(*e.ExpiresAt)
		}
		return s
	case store.EventChanged:
		s := "listing of " + e.Network + " changed" + by
		if e.ExpiresAt != nil {
			s += ", now until " + fmtTime(*e.ExpiresAt)
		}
		return s
	case store.EventRemoved:
		return "removed " + e.Network + by
	case store.EventExpired:
		return "listing of " + e.Network + " expired"
	}
	return e.Event + " " + e.Network
}
