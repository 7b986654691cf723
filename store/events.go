package store

import (
	"context"
	"database/sql"
	"net/netip"
	"time"
)

// Listing events, the history of each prefix's listing.
const (
	EventListed  = "listed"  // a listing period started
	EventChanged = "changed" // a live listing's category, reason or expiry changed
	EventRemoved = "removed"
	EventExpired = "expired"
)

// Who makes changes, as events and removals record them besides an
// operator's "cli:LOGIN" or "admin-api".
const (
	ByTraps       = "traps"
	BySelfService = "self-service"
	ByProof       = "proof of control"
)

type event struct {
	at       time.Time
	prefix   netip.Prefix
	kind     string
	by       string
	category string
	expires  *time.Time
	detail   string
}

func logEventTx(ctx context.Context, tx *sql.Tx, e event) error {
	_, err := tx.ExecContext(ctx, `
INSERT INTO listing_events (at, prefix, event, by, category, expires, detail) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		millis(e.at), e.prefix.String(), e.kind, e.by, e.category, nullMillis(e.expires), e.detail)
	return err
}
