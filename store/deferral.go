package store

import (
	"context"
	"database/sql"
	"net/netip"
	"time"
)

// Delist-and-deliver: a client refused only by a listing its owner may
// remove gets a temporary refusal for a while after the first one, so the
// sending server keeps the mail queued, and once the owner has removed
// the listing the retry is delivered. The policy engine asks DeferState on
// the mail path (memory only) and reports each deferred refusal with
// NoteDeferral; the writer keeps the count.

// SetSelfService sets the rule that decides which listings their owners
// may remove, as delist-and-deliver needs to know it on the mail path,
// and rebuilds the in-memory listings by it.
func (s *Store) SetSelfService(r SelfService) {
	s.selfService.Store(&r)
	if err := s.rebuild(context.Background(), true); err != nil {
		s.log.Warn("rebuilding listings for the self-service rule", "err", err)
	}
}

// DeferState reports whether ip's listing is the only one containing it
// and one its owner may remove now, and when a refusal by it was first
// deferred (zero: never). It reads memory only.
func (s *Store) DeferState(ip netip.Addr) (selfRemovable bool, first time.Time) {
	snap := s.snap.Load()
	e, ok := snap.lookup(ip)
	if !ok || !snap.selfRemovable(e) {
		return false, time.Time{}
	}
	if ms := e.firstRefused.Load(); ms != 0 {
		first = fromMillis(ms)
	}
	return true, first
}

// NoteDeferral records a deferred refusal of ip by its listing at at: the
// first starts the listing's delist-and-deliver window. It never blocks:
// the count is written by the writer, and dropped when its queue is full.
func (s *Store) NoteDeferral(ip netip.Addr, at time.Time) {
	e, ok := s.snap.Load().lookup(ip)
	if !ok {
		return
	}
	e.firstRefused.CompareAndSwap(0, millis(at))
	if s.closed.Load() || s.opts.ReadOnly {
		return
	}
	select {
	case s.deferNotes <- deferNote{id: e.l.ID, listedAt: millis(e.l.ListedAt), at: millis(at)}:
	default:
	}
}

type deferNote struct {
	id, listedAt, at int64
}

// writeDeferrals writes first, and what else is queued, in one transaction.
func (s *Store) writeDeferrals(first deferNote) {
	notes := []deferNote{first}
	for len(notes) < maxBatch {
		select {
		case n := <-s.deferNotes:
			notes = append(notes, n)
			continue
		default:
		}
		break
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for _, n := range notes {
			if _, err := tx.ExecContext(ctx, `
UPDATE listings SET first_refused = coalesce(first_refused, ?), deferred = deferred + 1 WHERE id = ? AND listed_at = ?`,
				n.at, n.id, n.listedAt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("recording deferred refusals", "count", len(notes), "err", err)
	}
}
