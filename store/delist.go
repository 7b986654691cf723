package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base32"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Proof of control: the status page of a listing its owner may remove
// offers a one-time address, delist+TOKEN@<delist domain>. Mail from the
// listed address to it proves control of the address itself (the TCP
// connection came from there), which a mailbox does not; the listing goes
// at once, within the self-service quota.

// DelistTokenLen is the length of a token: 16 base32 letters, 80 bits.
const DelistTokenLen = 16

var delistEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// DelistToken returns ip's delisting token and when it expires: the one
// issued before while it is valid, so the page shows one address all day,
// or a new one valid for ttl.
func (s *Store) DelistToken(ctx context.Context, ip netip.Addr, ttl time.Duration) (string, time.Time, error) {
	ip = ip.Unmap().WithZone("")
	now := s.now()
	var (
		token   string
		expires int64
	)
	err := s.db.QueryRowContext(ctx, `SELECT token, expires FROM delist_tokens WHERE ip = ? AND expires > ?`, ip.String(), millis(now)).
		Scan(&token, &expires)
	if err == nil {
		return token, fromMillis(expires), nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return "", time.Time{}, fmt.Errorf("delist token of %s: %w", ip, err)
	}
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", time.Time{}, fmt.Errorf("delist token: %w", err)
	}
	token = delistEncoding.EncodeToString(b[:])
	until := now.Add(ttl)
	err = s.tx(ctx, func(tx *sql.Tx) error {
		// Two pages asking at once: the first token stays.
		_, err := tx.ExecContext(ctx, `
INSERT INTO delist_tokens (ip, token, expires) VALUES (?, ?, ?)
ON CONFLICT (ip) DO UPDATE SET token = excluded.token, expires = excluded.expires WHERE delist_tokens.expires <= ?`,
			ip.String(), token, millis(until), millis(now))
		if err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT token, expires FROM delist_tokens WHERE ip = ?`, ip.String()).Scan(&token, &expires)
	})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("delist token of %s: %w", ip, err)
	}
	return token, fromMillis(expires), nil
}

// ControlEvidence is what the sending path showed when it proved control.
type ControlEvidence struct {
	HELO    string
	PTR     string // the client's name as the MTA had it
	TLS     string // protocol and cipher, "" without TLS
	QueueID string
}

func (e ControlEvidence) String() string {
	tls := e.TLS
	if tls == "" {
		tls = "none"
	}
	return fmt.Sprintf("HELO %s, PTR %s, TLS %s", dash(clip(e.HELO)), dash(clip(e.PTR)), clip(tls))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Why ProveControl removed nothing.
const (
	ProofInvalidToken  = "invalid token" // unknown, used or expired
	ProofOtherAddress  = "token of another address"
	ProofNotListed     = "not listed"
	ProofNeedsOperator = "needs an operator" // a network, a category or a quota beyond self-service
)

// ProofResult is what a proof of control did.
type ProofResult struct {
	Removed bool
	Prefix  netip.Prefix // the listing removed
	Why     string       // when not removed: one of the Proof constants
}

// ProveControl removes ip's listing when token is ip's valid delisting
// token and the listing is one its owner may remove under rule (the same
// rule and quota as a confirmed removal request). The token works once.
// The evidence is recorded with the removal.
func (s *Store) ProveControl(ctx context.Context, token string, ip netip.Addr, ev ControlEvidence, rule SelfService) (ProofResult, error) {
	token = strings.ToLower(strings.TrimSpace(token))
	ip = ip.Unmap().WithZone("")
	if len(token) != DelistTokenLen {
		return ProofResult{Why: ProofInvalidToken}, nil
	}
	now := s.now()
	var res ProofResult
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var (
			owner   string
			expires int64
		)
		err := tx.QueryRowContext(ctx, `SELECT ip, expires FROM delist_tokens WHERE token = ?`, token).Scan(&owner, &expires)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			res.Why = ProofInvalidToken
			return nil
		case err != nil:
			return err
		case expires <= millis(now):
			res.Why = ProofInvalidToken
			return nil
		case owner != ip.String():
			res.Why = ProofOtherAddress
			return nil
		}
		ls, err := containing(ctx, tx, ip, now)
		if err != nil {
			return err
		}
		if len(ls) == 0 {
			res.Why = ProofNotListed
			return nil
		}
		l, err := listingTx(ctx, tx, ls[0].Prefix)
		if err != nil {
			return err
		}
		if len(ls) != 1 || !rule.Covers(l) {
			res.Why = ProofNeedsOperator
			return nil
		}
		used, err := selfServiceUsedTx(ctx, tx, ip, l.Prefix, now.Add(-rule.Window))
		if err != nil {
			return err
		}
		if used >= rule.Quota {
			res.Why = ProofNeedsOperator
			return nil
		}
		if err := removeListingTx(ctx, tx, l.Prefix, ip.String(), ByProof, ev.String(), true, 0, now); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM delist_tokens WHERE token = ?`, token); err != nil {
			return err
		}
		res.Removed, res.Prefix = true, l.Prefix
		return nil
	})
	if err != nil {
		return ProofResult{}, fmt.Errorf("proof of control by %s: %w", ip, err)
	}
	if res.Removed {
		s.changed(ctx)
	}
	return res, nil
}

// listingTx reads the listing row of prefix.
func listingTx(ctx context.Context, tx *sql.Tx, prefix netip.Prefix) (Listing, error) {
	l := Listing{Prefix: prefix}
	var expires sql.NullInt64
	err := tx.QueryRowContext(ctx, `
SELECT id, category, reason, source, listed_at, expires_at, removal_count, level FROM listings WHERE prefix = ?`, prefix.String()).
		Scan(&l.ID, &l.Category, &l.Reason, &l.Source, (*msTime)(&l.ListedAt), &expires, &l.Removals, &l.Level)
	l.ExpiresAt = fromNullMillis(expires)
	return l, err
}
