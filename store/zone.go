package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// What the DNS zone server needs from the store: the serial it last
// published, kept across restarts, and the live listings without a query.

// ZoneSerial returns the serial last published for zone and the digest of
// what it published; zero and "" when the zone never published one.
func (s *Store) ZoneSerial(ctx context.Context, zone string) (serial uint32, digest string, err error) {
	var v int64
	err = s.db.QueryRowContext(ctx, `SELECT serial, digest FROM zone_serials WHERE zone = ?`, zoneKey(zone)).Scan(&v, &digest)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("zone serial of %s: %w", zone, err)
	}
	return uint32(v), digest, nil
}

// SetZoneSerial records serial as the one zone now publishes, with the
// digest of its content. The serial only moves forward in RFC 1982 serial
// arithmetic: a serial that is not after the stored one is refused with
// ErrInvalid, unless it is the same serial with the same digest.
func (s *Store) SetZoneSerial(ctx context.Context, zone string, serial uint32, digest string) error {
	key := zoneKey(zone)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var (
			old       int64
			oldDigest string
		)
		err := tx.QueryRowContext(ctx, `SELECT serial, digest FROM zone_serials WHERE zone = ?`, key).Scan(&old, &oldDigest)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		case uint32(old) == serial && oldDigest == digest:
			return nil
		case !serialAfter(serial, uint32(old)):
			return fmt.Errorf("%w: serial %d is not after the stored %d", ErrInvalid, serial, old)
		}
		_, err = tx.ExecContext(ctx, `
INSERT INTO zone_serials (zone, serial, digest, updated) VALUES (?, ?, ?, ?)
ON CONFLICT (zone) DO UPDATE SET serial = excluded.serial, digest = excluded.digest, updated = excluded.updated`,
			key, int64(serial), digest, millis(time.Now()))
		return err
	})
	if err != nil {
		return fmt.Errorf("set zone serial of %s: %w", zone, err)
	}
	return nil
}

// serialAfter reports whether a is after b in RFC 1982 serial arithmetic
// (section 3.2, SERIAL_BITS = 32). Serials exactly 2^31 apart are not
// ordered; neither is after the other.
func serialAfter(a, b uint32) bool {
	d := a - b
	return d != 0 && d < 1<<31
}

// zoneKey is the zone's name as stored: lower case, one trailing dot.
func zoneKey(zone string) string {
	return strings.ToLower(strings.TrimSuffix(zone, ".")) + "."
}

// LiveListings returns the listings in effect now, from the in-memory
// snapshot: no query, so a caller that follows OnChange can afford to take
// the whole list on every change. The order is unspecified.
func (s *Store) LiveListings() []Listing {
	snap := s.snap.Load()
	now := s.now()
	out := make([]Listing, 0, snap.len())
	for e := range snap.entries() {
		if !e.l.Expired(now) {
			out = append(out, e.l)
		}
	}
	return out
}
