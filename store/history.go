package store

import (
	"context"
	"database/sql"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// History is an address's story as this site recorded it: the evidence
// against it, its listings and who made and ended each, and what the
// filter refused. It never names a trap.
type History struct {
	FirstSeen *time.Time // the first trap hit, refusal or listing event recorded; nil: none
	LastSeen  *time.Time
	Days      []Day   // days with trap hits or refusals, newest first
	Events    []Event // the listings containing the address, newest first
	// Deferral is delist-and-deliver of the newest listing period that
	// deferred a refusal; nil when none did.
	Deferral *Deferral
}

// Day is one UTC day of an address's history.
type Day struct {
	Day      time.Time // midnight UTC
	TrapHits int
	HELOs    []string // some HELO names the client gave at those hits
	Refused  int      // recorded refusals (5xx)
	Deferred int      // recorded temporary refusals (4xx)
}

// Event is one change to a listing that contains the address.
type Event struct {
	At       time.Time
	Prefix   netip.Prefix
	Kind     string // EventListed, EventChanged, EventRemoved, EventExpired
	By       string // ByTraps, BySelfService, ByProof, "cli:LOGIN", "admin-api"
	Category string
	Expires  *time.Time
	Detail   string
}

// Deferral is what delist-and-deliver did in one listing period.
type Deferral struct {
	Prefix  netip.Prefix
	Since   time.Time  // the first deferred refusal
	Count   int        // refusals deferred
	Removed *time.Time // when the listing was removed; nil while it stands
}

// Bounds on what History returns.
const (
	maxHistoryDays   = 90
	maxHistoryEvents = 50
	maxHELOs         = 5
)

// historyQuery is what the parts of History share: the address and the
// prefixes that contain it, as SQL arguments.
type historyQuery struct {
	ip       string
	covering []any  // every prefix that contains the address, as text
	in       string // "(?,?,...)" for covering
}

// History returns ip's history as of now.
func (s *Store) History(ctx context.Context, ip netip.Addr, now time.Time) (History, error) {
	ip = ip.Unmap().WithZone("")
	if !ip.IsValid() {
		return History{}, fmt.Errorf("history: %w: no address", ErrInvalid)
	}
	q := historyQuery{ip: ip.String(), covering: coveringPrefixes(ip)}
	q.in = "(" + strings.TrimSuffix(strings.Repeat("?,", len(q.covering)), ",") + ")"
	var (
		h    History
		days = map[int64]*Day{}
	)
	dayOf := func(n int64) *Day {
		d, ok := days[n]
		if !ok {
			d = &Day{Day: time.Unix(n*86400, 0).UTC()}
			days[n] = d
		}
		return d
	}
	seen := func(t time.Time) {
		if h.FirstSeen == nil || t.Before(*h.FirstSeen) {
			h.FirstSeen = &t
		}
		if h.LastSeen == nil || t.After(*h.LastSeen) {
			h.LastSeen = &t
		}
	}
	for _, part := range []func() error{
		func() error { return s.historyTrapHits(ctx, q, dayOf, seen) },
		func() error { return s.historyDecisions(ctx, q, dayOf, seen) },
		func() error { return s.historySummaries(ctx, q, dayOf, seen) },
		func() error { return s.historyEvents(ctx, q, &h, now, seen) },
		func() error { return s.historyDeferral(ctx, q, &h) },
	} {
		if err := part(); err != nil {
			return History{}, fmt.Errorf("history of %s: %w", ip, err)
		}
	}
	for _, d := range days {
		h.Days = append(h.Days, *d)
	}
	slices.SortFunc(h.Days, func(a, b Day) int { return b.Day.Compare(a.Day) })
	if len(h.Days) > maxHistoryDays {
		h.Days = h.Days[:maxHistoryDays]
	}
	return h, nil
}

// historyTrapHits adds the trap hits still kept in detail, per day.
func (s *Store) historyTrapHits(ctx context.Context, q historyQuery, dayOf func(int64) *Day, seen func(time.Time)) error {
	rows, err := s.db.QueryContext(ctx, `
SELECT at / 86400000, count(*), min(at), max(at), group_concat(DISTINCT helo) FROM trap_hits
WHERE ip = ? OR prefix IN `+q.in+` GROUP BY at / 86400000`, append([]any{q.ip}, q.covering...)...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			n, count, first, last int64
			helos                 sql.NullString
		)
		if err := rows.Scan(&n, &count, &first, &last, &helos); err != nil {
			return err
		}
		d := dayOf(n)
		d.TrapHits += int(count)
		d.HELOs = mergeHELOs(d.HELOs, strings.Split(helos.String, ","))
		seen(fromMillis(first))
		seen(fromMillis(last))
	}
	return rows.Err()
}

// historyDecisions adds the refusals still recorded one by one, per day.
func (s *Store) historyDecisions(ctx context.Context, q historyQuery, dayOf func(int64) *Day, seen func(time.Time)) error {
	rows, err := s.db.QueryContext(ctx, `
SELECT at / 86400000, sum(action = 'reject'), sum(action = 'tempfail'), min(at), max(at) FROM decisions
WHERE ip = ? AND action IN ('reject', 'tempfail') GROUP BY at / 86400000`, q.ip)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var n, refused, deferred, first, last int64
		if err := rows.Scan(&n, &refused, &deferred, &first, &last); err != nil {
			return err
		}
		d := dayOf(n)
		d.Refused += int(refused)
		d.Deferred += int(deferred)
		seen(fromMillis(first))
		seen(fromMillis(last))
	}
	return rows.Err()
}

// historySummaries adds what older evidence and decisions were summarised to.
func (s *Store) historySummaries(ctx context.Context, q historyQuery, dayOf func(int64) *Day, seen func(time.Time)) error {
	rows, err := s.db.QueryContext(ctx, `SELECT day, trap_hits, helos, refused, deferred FROM ip_days WHERE ip = ?`, q.ip)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			n                       int64
			hits, refused, deferred int
			helos                   string
		)
		if err := rows.Scan(&n, &hits, &helos, &refused, &deferred); err != nil {
			return err
		}
		d := dayOf(n)
		d.TrapHits += hits
		d.Refused += refused
		d.Deferred += deferred
		d.HELOs = mergeHELOs(d.HELOs, strings.Split(helos, "\n"))
		seen(d.Day)
	}
	return rows.Err()
}

// historyEvents adds the events of the listings that contain the address,
// and the expiry of a lapsed listing, which no event records until the
// prefix is listed again.
func (s *Store) historyEvents(ctx context.Context, q historyQuery, h *History, now time.Time, seen func(time.Time)) error {
	rows, err := s.db.QueryContext(ctx, `
SELECT at, prefix, event, by, category, expires, detail FROM listing_events
WHERE prefix IN `+q.in+` ORDER BY at DESC, id DESC LIMIT ?`, append(slices.Clip(q.covering), maxHistoryEvents)...)
	if err != nil {
		return err
	}
	for rows.Next() {
		var (
			e       Event
			prefix  string
			expires sql.NullInt64
		)
		if err := rows.Scan((*msTime)(&e.At), &prefix, &e.Kind, &e.By, &e.Category, &expires, &e.Detail); err != nil {
			rows.Close()
			return err
		}
		e.Prefix, _ = netip.ParsePrefix(prefix)
		e.Expires = fromNullMillis(expires)
		h.Events = append(h.Events, e)
		seen(e.At)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	rows, err = s.db.QueryContext(ctx, `
SELECT prefix, expires_at, category FROM listings
WHERE removed_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ? AND prefix IN `+q.in,
		append([]any{millis(now)}, q.covering...)...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			e      = Event{Kind: EventExpired}
			prefix string
		)
		if err := rows.Scan(&prefix, (*msTime)(&e.At), &e.Category); err != nil {
			return err
		}
		e.Prefix, _ = netip.ParsePrefix(prefix)
		h.Events = append(h.Events, e)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	slices.SortStableFunc(h.Events, func(a, b Event) int { return b.At.Compare(a.At) })
	if len(h.Events) > maxHistoryEvents {
		h.Events = h.Events[:maxHistoryEvents]
	}
	return nil
}

// historyDeferral adds delist-and-deliver of the newest listing period that
// deferred a refusal.
func (s *Store) historyDeferral(ctx context.Context, q historyQuery, h *History) error {
	var (
		d       Deferral
		prefix  string
		removed sql.NullInt64
	)
	err := s.db.QueryRowContext(ctx, `
SELECT prefix, first_refused, deferred, removed_at FROM listings
WHERE first_refused IS NOT NULL AND prefix IN `+q.in+` ORDER BY first_refused DESC LIMIT 1`, q.covering...).
		Scan(&prefix, (*msTime)(&d.Since), &d.Count, &removed)
	if err == sql.ErrNoRows {
		return nil
	}
	if err != nil {
		return err
	}
	d.Prefix, _ = netip.ParsePrefix(prefix)
	d.Removed = fromNullMillis(removed)
	h.Deferral = &d
	return nil
}

// coveringPrefixes is every prefix that contains ip, ip's own included, as
// the listings table spells them.
func coveringPrefixes(ip netip.Addr) []any {
	out := make([]any, 0, ip.BitLen()+1)
	for bits := ip.BitLen(); bits >= 0; bits-- {
		p, _ := ip.Prefix(bits)
		out = append(out, p.String())
	}
	return out
}

// mergeHELOs adds HELO names to have, without duplicates or empty names,
// up to maxHELOs.
func mergeHELOs(have, more []string) []string {
	for _, m := range more {
		if len(have) >= maxHELOs {
			break
		}
		if m = strings.TrimSpace(m); m != "" && !slices.Contains(have, m) {
			have = append(have, m)
		}
	}
	return have
}
