package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/blmilter/blmilter/policy"
)

// TrapHit is one message to a spam trap: what the filter saw at that
// moment. Trap is kept for the operator alone; no page, reply or API shows
// it.
type TrapHit struct {
	Time     time.Time
	IP       netip.Addr
	HELO     string
	MailFrom string
	Trap     string
	QueueID  string
	RDNS     string // the client's name as the MTA had it (verified or not)
}

// TrapRules are the [traps] rules that turn hits into listings.
type TrapRules struct {
	Hits       int           // hits within Window that list the client
	Window     time.Duration //
	Expires    time.Duration // a listing lasts this long after its last hit ...
	MaxExpires time.Duration // ... doubled for each earlier listing period, up to this
	Category   string
	IPv6Prefix int // an IPv6 client is listed as its /IPv6Prefix
}

// TrapReason is the reason of a trap listing, as the lookup page shows it.
const TrapReason = "sent mail to spam traps of this site"

// TrapOutcome is what a hit did.
type TrapOutcome struct {
	Prefix  netip.Prefix // the client's address or IPv6 network, as listed
	Hits    int          // hits of Prefix within the window, this one included
	Listed  bool         // Prefix is listed by the traps now (listed, relisted or extended)
	Started bool         // this hit started a listing period; with Level > 0 a relisting
	Level   int          // earlier listing periods of Prefix that ended: the expiry was doubled this often
	Expires time.Time    // when the trap listing expires, when Listed
	// Operator is set when an operator's listing of exactly Prefix stands:
	// the hit is evidence, and the listing is left as the operator made it.
	Operator bool
}

// TrapPrefix is what a trap listing of ip covers.
func (r TrapRules) TrapPrefix(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	if ip.Is6() && r.IPv6Prefix > 0 && r.IPv6Prefix < 128 {
		p, _ := ip.Prefix(r.IPv6Prefix)
		return p
	}
	return netip.PrefixFrom(ip, ip.BitLen())
}

// lifetime is how long a trap listing of level lasts after its last hit.
func (r TrapRules) lifetime(level int) time.Duration {
	d := r.Expires
	for range level {
		if d >= r.MaxExpires || d > 1<<61 {
			break
		}
		d *= 2
	}
	return min(d, max(r.MaxExpires, r.Expires))
}

// maxTrapField bounds what a client can make the store keep per hit.
const maxTrapField = 512

func clip(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) > maxTrapField {
		s = strings.ToValidUTF8(s[:maxTrapField], "")
	}
	return s
}

// cleanHELO keeps a HELO name on one line and free of the comma that
// separates names in summaries: a real one has neither.
func cleanHELO(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == ',' {
			return '?'
		}
		return r
	}, clip(s))
}

// RecordTrapHit keeps the evidence of a hit and, when the client's prefix
// has had r.Hits hits within r.Window, lists it (or extends its trap
// listing) until r.Expires after this hit, doubled for each earlier listing
// period of the prefix that ended, up to r.MaxExpires. An operator's live
// listing of the prefix is left as it is. Hit and listing are one
// transaction; the listing applies to the next check.
func (s *Store) RecordTrapHit(ctx context.Context, h TrapHit, r TrapRules) (TrapOutcome, error) {
	if !h.IP.IsValid() {
		return TrapOutcome{}, fmt.Errorf("trap hit: %w: no client address", ErrInvalid)
	}
	if !policy.IsCategory(r.Category) || r.Hits < 1 || r.Expires <= 0 {
		return TrapOutcome{}, fmt.Errorf("trap hit: %w: incomplete rules %+v", ErrInvalid, r)
	}
	if h.Time.IsZero() {
		h.Time = s.now()
	}
	ip := h.IP.Unmap().WithZone("")
	out := TrapOutcome{Prefix: r.TrapPrefix(ip)}
	changed := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `
INSERT INTO trap_hits (at, ip, prefix, helo, mail_from, trap, queue_id, rdns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			millis(h.Time), ip.String(), out.Prefix.String(), cleanHELO(h.HELO), clip(h.MailFrom), clip(h.Trap), clip(h.QueueID), clip(h.RDNS)); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM trap_hits WHERE prefix = ? AND at > ?`,
			out.Prefix.String(), millis(h.Time.Add(-r.Window))).Scan(&out.Hits); err != nil {
			return err
		}
		var (
			source           string
			removed, expires sql.NullInt64
			level            int
		)
		err := tx.QueryRowContext(ctx, `SELECT source, removed_at, expires_at, level FROM listings WHERE prefix = ?`, out.Prefix.String()).
			Scan(&source, &removed, &expires, &level)
		exists := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		live := exists && !removed.Valid && (!expires.Valid || expires.Int64 > millis(h.Time))
		switch {
		case live && source != ByTraps:
			out.Operator = true
			return nil
		case live:
			// Every hit extends the trap listing it belongs to.
			out.Level = level
			until := h.Time.Add(r.lifetime(level))
			if expires.Valid && fromMillis(expires.Int64).After(until) {
				until = fromMillis(expires.Int64)
			}
			out.Listed, out.Expires = true, until
			if expires.Valid && expires.Int64 == millis(until) {
				return nil
			}
			changed = true
			_, err := tx.ExecContext(ctx, `UPDATE listings SET expires_at = ? WHERE prefix = ?`, millis(until), out.Prefix.String())
			return err
		case out.Hits < r.Hits:
			return nil
		}
		if exists {
			level++ // the period that ended counts (upsertListingTx counts it the same)
		} else {
			level = 0
		}
		until := h.Time.Add(r.lifetime(level))
		l, started, err := upsertListingTx(ctx, tx, Listing{
			Prefix: out.Prefix, Category: r.Category, Reason: TrapReason, Source: ByTraps,
			ListedAt: h.Time, ExpiresAt: &until,
		}, h.Time)
		if err != nil {
			return err
		}
		changed = true
		out.Listed, out.Started, out.Level, out.Expires = true, started, l.Level, until
		return nil
	})
	if err != nil {
		return TrapOutcome{}, fmt.Errorf("trap hit of %s: %w", ip, err)
	}
	if changed {
		s.changed(ctx)
	}
	return out, nil
}

// TrapHitRecord is a stored trap hit, for the operator.
type TrapHitRecord struct {
	TrapHit
	Prefix netip.Prefix
}

// TrapHits returns the hits of ip, or of the trap listing's prefix that
// contains it, newest first, at most limit: the detailed evidence still
// kept (see Retention). It names the traps: for the operator only.
func (s *Store) TrapHits(ctx context.Context, ip netip.Addr, limit int) ([]TrapHitRecord, error) {
	ip = ip.Unmap().WithZone("")
	prefix := ip.String() + "/" + fmt.Sprint(ip.BitLen())
	if l, ok := s.ListingFor(ip); ok {
		prefix = l.Prefix.String()
	}
	rows, err := s.db.QueryContext(ctx, `
SELECT at, ip, prefix, helo, mail_from, trap, queue_id, rdns FROM trap_hits
WHERE ip = ? OR prefix = ? ORDER BY at DESC, id DESC LIMIT ?`, ip.String(), prefix, limit)
	if err != nil {
		return nil, fmt.Errorf("trap hits of %s: %w", ip, err)
	}
	defer rows.Close()
	var out []TrapHitRecord
	for rows.Next() {
		var (
			h          TrapHitRecord
			hip, hpref string
		)
		if err := rows.Scan((*msTime)(&h.Time), &hip, &hpref, &h.HELO, &h.MailFrom, &h.Trap, &h.QueueID, &h.RDNS); err != nil {
			return nil, fmt.Errorf("trap hits of %s: %w", ip, err)
		}
		h.IP, _ = netip.ParseAddr(hip)
		h.Prefix, _ = netip.ParsePrefix(hpref)
		out = append(out, h)
	}
	return out, rows.Err()
}
