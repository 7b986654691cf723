package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// Retention bounds what the store keeps besides the listings themselves.
// Zero fields keep forever.
type Retention struct {
	// EvidenceMaxAge is how long each trap hit is kept in detail (time,
	// HELO, sender, trap, queue id, reverse DNS); older hits are summarised
	// into per-day counts of the address.
	EvidenceMaxAge time.Duration
	// HistoryMaxAge is how long the per-day summaries, the listing events,
	// the decided removal requests and the removals are kept, and how long
	// an ended listing is remembered for escalation.
	HistoryMaxAge time.Duration
}

// SetRetention changes the retention from the next pruning on.
func (s *Store) SetRetention(r Retention) {
	s.evidenceMaxAge.Store(int64(r.EvidenceMaxAge))
	s.historyMaxAge.Store(int64(r.HistoryMaxAge))
}

// Prune applies the limits as of now, each step summarising before it
// deletes:
//   - decisions beyond their age and row limits become per-day counts of
//     refusals of their address;
//   - pending requests whose link expired unused are closed as expired;
//   - trap hits older than EvidenceMaxAge become per-day counts of hits,
//     with a few HELO names;
//   - summaries, events, decided requests, removals and ended listings
//     older than HistoryMaxAge go;
//   - proof-of-control tokens that expired go.
//
// The writer does this every PruneInterval; it is exported for tests and
// maintenance.
func (s *Store) Prune(ctx context.Context, now time.Time) error {
	maxAge, maxRows := time.Duration(s.decisionMaxAge.Load()), s.decisionMaxRows.Load()
	evidence, history := time.Duration(s.evidenceMaxAge.Load()), time.Duration(s.historyMaxAge.Load())
	return s.tx(ctx, func(tx *sql.Tx) error {
		if maxAge > 0 {
			if err := pruneDecisionsTx(ctx, tx, `at < ?`, millis(now.Add(-maxAge))); err != nil {
				return fmt.Errorf("prune decisions by age: %w", err)
			}
		}
		if maxRows > 0 {
			if err := pruneDecisionsTx(ctx, tx, `ref IN (SELECT ref FROM decisions ORDER BY at DESC LIMIT -1 OFFSET ?)`, maxRows); err != nil {
				return fmt.Errorf("prune decisions by count: %w", err)
			}
		}
		// A request nobody confirmed is decided by this rule, not
		// deleted: its requester's status page still tells what became
		// of it.
		if _, err := tx.ExecContext(ctx, `
UPDATE removal_requests SET status = ?, decided = token_expires, decided_by = 'unconfirmed', token_hash = NULL
WHERE status = ? AND token_expires <= ?`,
			StatusExpired, StatusPending, millis(now)); err != nil {
			return fmt.Errorf("expire unconfirmed requests: %w", err)
		}
		if evidence > 0 {
			if err := summariseTrapHitsTx(ctx, tx, millis(now.Add(-evidence))); err != nil {
				return fmt.Errorf("summarise trap hits: %w", err)
			}
		}
		if history > 0 {
			if err := forgetTx(ctx, tx, millis(now.Add(-history))); err != nil {
				return fmt.Errorf("prune history: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM delist_tokens WHERE expires <= ?`, millis(now)); err != nil {
			return fmt.Errorf("prune delist tokens: %w", err)
		}
		return nil
	})
}

// pruneDecisionsTx counts the refusals among the decisions where cond
// holds into ip_days, then deletes those decisions.
func pruneDecisionsTx(ctx context.Context, tx *sql.Tx, cond string, arg any) error {
	if _, err := tx.ExecContext(ctx, `
INSERT INTO ip_days (ip, day, refused, deferred)
SELECT ip, at / 86400000, sum(action = 'reject'), sum(action = 'tempfail') FROM decisions
WHERE `+cond+` AND ip != '' AND action IN ('reject', 'tempfail')
GROUP BY ip, at / 86400000
ON CONFLICT (ip, day) DO UPDATE SET refused = refused + excluded.refused, deferred = deferred + excluded.deferred`, arg); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM decisions WHERE `+cond, arg)
	return err
}

// summariseTrapHitsTx turns the trap hits before cutoff into per-day
// counts with a few HELO names, and deletes them.
func summariseTrapHitsTx(ctx context.Context, tx *sql.Tx, cutoff int64) error {
	rows, err := tx.QueryContext(ctx, `
SELECT ip, at / 86400000, count(*), group_concat(DISTINCT helo) FROM trap_hits WHERE at < ? GROUP BY ip, at / 86400000`, cutoff)
	if err != nil {
		return err
	}
	type sum struct {
		ip    string
		day   int64
		hits  int
		helos string
	}
	var sums []sum
	for rows.Next() {
		var (
			x     sum
			helos sql.NullString
		)
		if err := rows.Scan(&x.ip, &x.day, &x.hits, &helos); err != nil {
			rows.Close()
			return err
		}
		x.helos = helos.String
		sums = append(sums, x)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, x := range sums {
		var have string
		err := tx.QueryRowContext(ctx, `SELECT helos FROM ip_days WHERE ip = ? AND day = ?`, x.ip, x.day).Scan(&have)
		if err != nil && err != sql.ErrNoRows {
			return err
		}
		helos := mergeHELOs(strings.Split(have, "\n"), strings.Split(x.helos, ","))
		if _, err := tx.ExecContext(ctx, `
INSERT INTO ip_days (ip, day, trap_hits, helos) VALUES (?, ?, ?, ?)
ON CONFLICT (ip, day) DO UPDATE SET trap_hits = trap_hits + excluded.trap_hits, helos = excluded.helos`,
			x.ip, x.day, x.hits, strings.Join(helos, "\n")); err != nil {
			return err
		}
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM trap_hits WHERE at < ?`, cutoff)
	return err
}

// forgetTx deletes what is older than the history's age. A listing whose
// period ended before cutoff is forgotten too, so a new listing of its
// prefix starts again at level 0; live listings are never touched.
func forgetTx(ctx context.Context, tx *sql.Tx, cutoff int64) error {
	for _, q := range []string{
		`DELETE FROM ip_days WHERE day < ? / 86400000`,
		`DELETE FROM listing_events WHERE at < ?`,
		`DELETE FROM removals WHERE at < ?`,
		// The removals that pointed at the requests deleted next are gone or newer.
		`UPDATE removals SET request_id = NULL WHERE request_id IN (SELECT id FROM removal_requests WHERE decided < ? AND status NOT IN ('pending', 'confirmed', 'waiting'))`,
		`DELETE FROM removal_requests WHERE decided < ? AND status NOT IN ('pending', 'confirmed', 'waiting')`,
		`DELETE FROM listings WHERE (removed_at IS NOT NULL AND removed_at < ?1) OR (removed_at IS NULL AND expires_at IS NOT NULL AND expires_at < ?1)`,
	} {
		if _, err := tx.ExecContext(ctx, q, cutoff); err != nil {
			return err
		}
	}
	return nil
}
