package store

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/policy"
)

// An address's history: trap hits and refusals per day, its listings and
// who made and ended them; old evidence is summarised, not lost, and
// forgotten after the history's age.
func TestHistoryAndRetention(t *testing.T) {
	c := newClock()
	s := openTest(t, Options{Now: c.Now, PollInterval: -1})
	ctx := context.Background()
	ip := netip.MustParseAddr("192.0.2.7")
	start := c.Now()

	hit(t, s, c, "192.0.2.7", trapRules) // day 0: listed by the traps
	c.Add(time.Hour)
	hit(t, s, c, "192.0.2.7", trapRules)
	for i := range 3 {
		action := policy.ActionReject
		if i == 2 {
			action = policy.ActionTempfail
		}
		s.RecordDecision(policy.Decision{Ref: "r" + string(rune('a'+i)), Time: c.Now(), Verdict: policy.Verdict{IP: ip, Action: action}})
	}
	s.RecordDecision(policy.Decision{Ref: "tag", Time: c.Now(), Verdict: policy.Verdict{IP: ip, Action: policy.ActionTag}})
	s.RecordDecision(policy.Decision{Ref: "other", Time: c.Now(), Verdict: policy.Verdict{IP: netip.MustParseAddr("192.0.2.8"), Action: policy.ActionReject}})
	s.Flush()
	c.Add(day) // day 1: removed by its owner
	r := confirmed(t, s, "192.0.2.7")
	if removed, err := s.DecideConfirmed(ctx, r.ID, 2, 90*day, []string{"spam-source"}); err != nil || !removed {
		t.Fatalf("self-service removal: %v, %v", removed, err)
	}

	h, err := s.History(ctx, ip, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	if h.FirstSeen == nil || !h.FirstSeen.Equal(start) || h.LastSeen == nil || !h.LastSeen.Equal(c.Now()) {
		t.Errorf("first seen %v, last seen %v", h.FirstSeen, h.LastSeen)
	}
	wantDay := Day{Day: time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), TrapHits: 2, HELOs: []string{"bot.example"}, Refused: 2, Deferred: 1}
	if len(h.Days) != 1 || !sameDay(h.Days[0], wantDay) {
		t.Errorf("days %+v, want %+v", h.Days, wantDay)
	}
	var kinds []string
	for _, e := range h.Events {
		kinds = append(kinds, e.Kind+" by "+e.By)
	}
	if want := []string{"removed by self-service", "listed by traps"}; !slices.Equal(kinds, want) {
		t.Errorf("events %v, want %v", kinds, want)
	}
	for _, e := range h.Events {
		if strings.Contains(e.Detail+e.By+e.Category, "spamtrap") {
			t.Errorf("an event names the trap: %+v", e)
		}
	}

	// 91 days on, the detailed evidence is summarised: the day still
	// counts the same, but the traps and senders are gone.
	s.SetRetention(Retention{EvidenceMaxAge: 90 * day, HistoryMaxAge: 730 * day})
	s.SetDecisionLimits(30*day, 0)
	c.Add(91 * day)
	if err := s.Prune(ctx, c.Now()); err != nil {
		t.Fatal(err)
	}
	if hs, _ := s.TrapHits(ctx, ip, 10); len(hs) != 0 {
		t.Errorf("detailed hits kept past the evidence's age: %+v", hs)
	}
	if _, err := s.Decision(ctx, "ra"); err == nil {
		t.Error("a decision kept past its age")
	}
	h, err = s.History(ctx, ip, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Days) != 1 || !sameDay(h.Days[0], wantDay) {
		t.Errorf("summarised days %+v, want %+v", h.Days, wantDay)
	}
	if h2, _ := s.History(ctx, netip.MustParseAddr("192.0.2.8"), c.Now()); len(h2.Days) != 1 || h2.Days[0].Refused != 1 {
		t.Errorf("the other address's summary: %+v", h2.Days)
	}

	// After the history's age, nothing is left, and a new trap listing
	// starts again at the first level.
	c.Add(730 * day)
	if err := s.Prune(ctx, c.Now()); err != nil {
		t.Fatal(err)
	}
	h, _ = s.History(ctx, ip, c.Now())
	if len(h.Days) != 0 || len(h.Events) != 0 || h.FirstSeen != nil {
		t.Errorf("history after its age: %+v", h)
	}
	if _, err := s.Request(ctx, r.ID); err == nil {
		t.Error("a decided request kept past the history's age")
	}
	if out := hit(t, s, c, "192.0.2.7", trapRules); out.Level != 0 {
		t.Errorf("a listing forgotten long ago still escalates: %+v", out)
	}
}

// A listing that lapsed shows its expiry in the history before any event
// records it, and once it is relisted.
func TestHistoryShowsExpiry(t *testing.T) {
	c := newClock()
	s := openTest(t, Options{Now: c.Now, PollInterval: -1})
	ctx := context.Background()
	out := hit(t, s, c, "192.0.2.7", trapRules)
	c.Add(8 * day)
	check := func(want []string) {
		t.Helper()
		h, err := s.History(ctx, netip.MustParseAddr("192.0.2.7"), c.Now())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range h.Events {
			got = append(got, e.Kind)
		}
		if !slices.Equal(got, want) {
			t.Errorf("events %v, want %v", got, want)
		}
		for _, e := range h.Events {
			if e.Kind == EventExpired && !e.At.Equal(out.Expires) {
				t.Errorf("expired at %v, want %v", e.At, out.Expires)
			}
		}
	}
	check([]string{"expired", "listed"})
	hit(t, s, c, "192.0.2.7", trapRules)
	check([]string{"listed", "expired", "listed"})
}

func sameDay(a, b Day) bool {
	return a.Day.Equal(b.Day) && a.TrapHits == b.TrapHits && slices.Equal(a.HELOs, b.HELOs) && a.Refused == b.Refused && a.Deferred == b.Deferred
}
