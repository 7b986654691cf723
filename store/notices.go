package store

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The removal loop closes: a requester follows the request on a status
// page (/request/TOKEN) and gets a mail when an operator decides; the
// operator gets a mail when a request waits. The mails are sent by the
// lookup service from PendingNotices, so a decision made anywhere (the
// command line, the admin API) is told, and a relay that is down delays a
// mail without losing it.

// Kinds of notices.
const (
	NoticeOutcome = "outcome" // to the requester: an operator approved or denied
	NoticeWaiting = "waiting" // to the operator: a request waits
)

// statusSecret is the name of the key that signs requesters' status links.
const statusSecret = "request_status"

// loadSecret reads the named secret, creating it first in a store that may
// write. A read-only store of a file no writer has opened has none.
func loadSecret(ctx context.Context, db *sql.DB, name string, create bool) ([]byte, error) {
	if create {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		if _, err := db.ExecContext(ctx, `INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)`, name, key); err != nil {
			return nil, err
		}
	}
	var key []byte
	err := db.QueryRowContext(ctx, `SELECT value FROM secrets WHERE name = ?`, name).Scan(&key)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return key, err
}

// StatusToken is the token of request id's status page: the id and a MAC
// under the store's secret, so it can be written into any mail later and
// needs no column of its own. It does not expire.
func (s *Store) StatusToken(id int64) string {
	if len(s.statusKey) == 0 {
		return ""
	}
	n := strconv.FormatInt(id, 10)
	return n + "-" + s.statusMAC(n)
}

func (s *Store) statusMAC(id string) string {
	m := hmac.New(sha256.New, s.statusKey)
	m.Write([]byte("request-status\x00" + id))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:18])
}

// RequestByStatusToken returns the request a status token was made for;
// ErrTokenInvalid for any other text.
func (s *Store) RequestByStatusToken(ctx context.Context, token string) (RemovalRequest, error) {
	n, mac, ok := strings.Cut(token, "-")
	if !ok || len(token) > 64 || len(s.statusKey) == 0 {
		return RemovalRequest{}, ErrTokenInvalid
	}
	id, err := strconv.ParseInt(n, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != n || !hmac.Equal([]byte(mac), []byte(s.statusMAC(n))) {
		return RemovalRequest{}, ErrTokenInvalid
	}
	r, err := s.Request(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return RemovalRequest{}, ErrTokenInvalid // decided long ago and forgotten
	}
	return r, err
}

// Notice is a mail the removal loop owes.
type Notice struct {
	Kind    string
	Request RemovalRequest
}

// PendingNotices returns the mails owed for requests decided or waiting
// since since, oldest first: outcomes to requesters, and with operator set
// the waiting requests to the operator.
func (s *Store) PendingNotices(ctx context.Context, since time.Time, operator bool) ([]Notice, error) {
	q := `SELECT 'outcome', ` + requestColumns + ` FROM removal_requests
WHERE status IN ('approved', 'denied') AND requester_notified IS NULL AND decided >= ?`
	args := []any{millis(since)}
	if operator {
		q += ` UNION ALL SELECT 'waiting', ` + requestColumns + ` FROM removal_requests
WHERE status = 'waiting' AND operator_notified IS NULL AND coalesce(verified, created) >= ?`
		args = append(args, millis(since))
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("pending notices: %w", err)
	}
	defer rows.Close()
	var out []Notice
	for rows.Next() {
		var kind string
		r, err := scanRequest(prefixScanner{rows, &kind})
		if err != nil {
			return nil, fmt.Errorf("pending notices: %w", err)
		}
		out = append(out, Notice{Kind: kind, Request: r})
	}
	return out, rows.Err()
}

// prefixScanner scans one leading column into first, the rest as asked.
type prefixScanner struct {
	rows  *sql.Rows
	first *string
}

func (p prefixScanner) Scan(dest ...any) error {
	return p.rows.Scan(append([]any{p.first}, dest...)...)
}

// MarkNotified records that the notice of kind for request id was sent at at.
func (s *Store) MarkNotified(ctx context.Context, id int64, kind string, at time.Time) error {
	col := "requester_notified"
	if kind == NoticeWaiting {
		col = "operator_notified"
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE removal_requests SET `+col+` = ? WHERE id = ?`, millis(at), id)
		return err
	})
	if err != nil {
		return fmt.Errorf("mark request %d notified: %w", id, err)
	}
	return nil
}

// WaitingRequests counts the requests waiting for an operator and says
// since when the oldest waits (its confirmation, else its creation).
func (s *Store) WaitingRequests(ctx context.Context) (n int, oldest time.Time, err error) {
	var first sql.NullInt64
	err = s.db.QueryRowContext(ctx, `SELECT count(*), min(coalesce(verified, created)) FROM removal_requests WHERE status = ?`, StatusWaiting).
		Scan(&n, &first)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("waiting requests: %w", err)
	}
	if first.Valid {
		oldest = fromMillis(first.Int64)
	}
	return n, oldest, nil
}
