package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/blmilter/blmilter/internal/mailbox"
)

// Request statuses. A request starts pending, becomes confirmed when its
// link is followed, and is then either removed at once (self-service) or
// waiting for an operator, who approves or denies it. Without a way to
// send the confirmation mail it starts waiting. A pending request whose
// link expired unused ends as expired: the pruner decides it, and it is
// kept, so the requester's status page can say so.
const (
	StatusPending   = "pending"
	StatusConfirmed = "confirmed"
	StatusWaiting   = "waiting"
	StatusApproved  = "approved"
	StatusDenied    = "denied"
	StatusRemoved   = "removed"
	StatusExpired   = "expired"
)

// Limits on what a requester may store.
const (
	MaxEmailLen  = mailbox.MaxPath
	MaxReasonLen = 2000
)

// ErrQuota is CreateRequest's answer when the mailbox has made its
// requests for the period.
var ErrQuota = errors.New("too many requests for this email address")

// RemovalRequest is a request to remove an IP from the site's own list.
type RemovalRequest struct {
	ID     int64
	IP     netip.Addr
	Email  string // as the requester typed it
	Reason string
	Status string
	// Token is the confirmation token, set only in CreateRequest's result:
	// the database keeps its SHA-256 alone, so it cannot be read back.
	Token        string
	TokenExpires time.Time
	Created      time.Time
	Verified     *time.Time
	Decided      *time.Time
	DecidedBy    string // "self-service", "not listed", "unconfirmed", or the operator
	SelfService  bool   // removed by the self-service rule
}

// Open reports whether the request still waits for its requester or an operator.
func (r RemovalRequest) Open() bool {
	return r.Status == StatusPending || r.Status == StatusConfirmed || r.Status == StatusWaiting
}

// NewRequest is a removal request as the requester made it.
type NewRequest struct {
	IP     string
	Email  string // an RFC 5321 mailbox with a domain name (package mailbox)
	Reason string // at most MaxReasonLen bytes
	// ToOperator stores the request as waiting for an operator at once,
	// with no confirmation link: for a site that cannot send the mail.
	ToOperator bool
	// MaxPerEmail, when above 0, refuses the request with ErrQuota if the
	// mailbox (compared without case) already made that many requests
	// within Per. The count and the insert are one transaction, so
	// requests sent in parallel cannot pass the limit together.
	MaxPerEmail int
	Per         time.Duration
}

// CreateRequest stores a removal request: pending, with a fresh one-time
// confirmation token returned in the result's Token and nowhere else, or
// waiting with n.ToOperator.
func (s *Store) CreateRequest(ctx context.Context, n NewRequest) (RemovalRequest, error) {
	addr, err := netip.ParseAddr(strings.TrimSpace(n.IP))
	if err != nil || addr.Zone() != "" {
		return RemovalRequest{}, fmt.Errorf("create request: %w: %q is not an IP address", ErrInvalid, n.IP)
	}
	box, err := mailbox.Parse(strings.TrimSpace(n.Email))
	if err != nil {
		return RemovalRequest{}, fmt.Errorf("create request: %w: %w", ErrInvalid, err)
	}
	reason := strings.TrimSpace(n.Reason)
	if len(reason) > MaxReasonLen || !utf8.ValidString(reason) {
		return RemovalRequest{}, fmt.Errorf("create request: %w: reason longer than %d bytes or not UTF-8", ErrInvalid, MaxReasonLen)
	}
	now := s.now()
	r := RemovalRequest{
		IP: addr.Unmap(), Email: box.String(), Reason: reason, Status: StatusPending,
		TokenExpires: now.Add(s.opts.TokenTTL), Created: now,
	}
	var hash []byte
	if n.ToOperator {
		r.Status = StatusWaiting
	} else {
		token, h, err := newToken()
		if err != nil {
			return RemovalRequest{}, fmt.Errorf("create request: %w", err)
		}
		r.Token, hash = token, h[:]
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if n.MaxPerEmail > 0 {
			var made int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM removal_requests WHERE email_key = ? AND created >= ?`,
				box.Key(), millis(now.Add(-n.Per))).Scan(&made); err != nil {
				return err
			}
			if made >= n.MaxPerEmail {
				return ErrQuota
			}
		}
		return tx.QueryRowContext(ctx, `
INSERT INTO removal_requests (ip, email, email_key, reason, status, token_hash, token_expires, created)
VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			r.IP.String(), r.Email, box.Key(), r.Reason, r.Status, hash, millis(r.TokenExpires), millis(r.Created)).Scan(&r.ID)
	})
	if err != nil {
		return RemovalRequest{}, fmt.Errorf("create request for %s: %w", r.IP, err)
	}
	return r, nil
}

// HandToOperator turns a pending request into one waiting for an
// operator, its link dead: for when the confirmation mail could not be
// sent, so the request is not lost.
func (s *Store) HandToOperator(ctx context.Context, id int64) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE removal_requests SET status = ?, token_hash = NULL WHERE id = ? AND status = ?`,
			StatusWaiting, id, StatusPending)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			if _, err := requestTx(ctx, tx, id); err != nil {
				return err
			}
			return ErrDecided
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hand request %d to the operator: %w", id, err)
	}
	return nil
}

// newToken makes a 256-bit random token, URL-safe, and its SHA-256.
func newToken() (string, [sha256.Size]byte, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", [sha256.Size]byte{}, fmt.Errorf("random token: %w", err)
	}
	t := base64.RawURLEncoding.EncodeToString(b[:])
	return t, sha256.Sum256([]byte(t)), nil
}

// ConfirmRequest marks the request whose token this is as confirmed, and
// forgets the token so it works once. An unknown, used or expired (at now)
// token gives ErrTokenInvalid.
//
// The token is looked up by its SHA-256, so the lookup time tells an
// attacker nothing about a token they do not already have.
func (s *Store) ConfirmRequest(ctx context.Context, token string, now time.Time) (RemovalRequest, error) {
	if token == "" || len(token) > 128 {
		return RemovalRequest{}, ErrTokenInvalid
	}
	hash := sha256.Sum256([]byte(token))
	var r RemovalRequest
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var id, expires int64
		err := tx.QueryRowContext(ctx, `SELECT id, token_expires FROM removal_requests WHERE token_hash = ? AND status = ?`,
			hash[:], StatusPending).Scan(&id, &expires)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrTokenInvalid
		}
		if err != nil {
			return err
		}
		if now.UnixMilli() >= expires {
			return fmt.Errorf("%w: expired at %s", ErrTokenInvalid, fromMillis(expires).UTC().Format(time.RFC3339))
		}
		if _, err := tx.ExecContext(ctx, `UPDATE removal_requests SET status = ?, verified = ?, token_hash = NULL WHERE id = ?`,
			StatusConfirmed, millis(now), id); err != nil {
			return err
		}
		r, err = requestTx(ctx, tx, id)
		return err
	})
	if err != nil {
		return RemovalRequest{}, fmt.Errorf("confirm request: %w", err)
	}
	return r, nil
}

// DecideConfirmed applies the self-service rule to a confirmed request.
// The IP's listing is removed at once when it is a single-address listing
// (a network is never delisted by one of its hosts), the only one containing the IP,
// its category is in selfServiceCategories, and the IP has had fewer than
// quota self-service removals within window (a listing that came back after
// a removal counts: the history is kept by IP). Then removed is true and
// the request's status is "removed". Otherwise the request waits for an
// operator ("waiting"). An IP that is no longer listed closes the request
// as "removed" with DecidedBy "not listed", without using the quota.
func (s *Store) DecideConfirmed(ctx context.Context, id int64, quota int, window time.Duration, selfServiceCategories []string) (removed bool, err error) {
	now := s.now()
	err = s.tx(ctx, func(tx *sql.Tx) error {
		r, err := requestTx(ctx, tx, id)
		if err != nil {
			return err
		}
		if r.Status != StatusConfirmed {
			if !r.Open() {
				return ErrDecided
			}
			return fmt.Errorf("%w: request %d is %s, not confirmed", ErrInvalid, id, r.Status)
		}
		ls, err := containing(ctx, tx, r.IP, now)
		if err != nil {
			return err
		}
		if len(ls) == 0 {
			removed = true
			return setStatus(ctx, tx, id, StatusRemoved, "not listed", false, now)
		}
		l := ls[0]
		rule := SelfService{Categories: selfServiceCategories, Quota: quota, Window: window}
		if len(ls) == 1 && rule.Covers(l) {
			used, err := selfServiceUsedTx(ctx, tx, r.IP, l.Prefix, now.Add(-window))
			if err != nil {
				return err
			}
			if used < quota {
				if err := removeListingTx(ctx, tx, l.Prefix, r.IP.String(), BySelfService, "", true, id, now); err != nil {
					return err
				}
				removed = true
				return setStatus(ctx, tx, id, StatusRemoved, BySelfService, true, now)
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE removal_requests SET status = ? WHERE id = ?`, StatusWaiting, id)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("decide request %d: %w", id, err)
	}
	if removed {
		s.changed(ctx)
	}
	return removed, nil
}

// SelfService is the rule under which a listing goes without an operator:
// a confirmed removal request, proof of control of the IP, and the
// delist-and-deliver deferral all follow it.
type SelfService struct {
	Categories []string      // categories that may be removed so
	Quota      int           // removals per address within Window
	Window     time.Duration //
}

// Covers reports whether l is a listing of one host in a self-service
// category: a single address, or an IPv6 /64 or longer (a host's share of
// IPv6, as spam traps list it). A wider network is never removed by one of
// its hosts.
func (r SelfService) Covers(l Listing) bool {
	host := l.Prefix.IsSingleIP() || (l.Prefix.Addr().Is6() && l.Prefix.Bits() >= 64)
	return host && slices.Contains(r.Categories, l.Category)
}

// selfServiceUsedTx counts the self-service removals since since of ip or
// of prefix, so the hosts of one IPv6 /64 share one quota.
func selfServiceUsedTx(ctx context.Context, q querier, ip netip.Addr, prefix netip.Prefix, since time.Time) (int, error) {
	var used int
	err := q.QueryRowContext(ctx, `SELECT count(*) FROM removals WHERE (ip = ? OR prefix = ?) AND self_service AND at >= ?`,
		ip.String(), prefix.String(), millis(since)).Scan(&used)
	return used, err
}

// ApproveRequest is an operator's yes: every live listing containing the
// request's IP is removed (the request is for the IP, so a covering network
// goes too) and the request is "approved". ErrDecided if it was already
// decided.
func (s *Store) ApproveRequest(ctx context.Context, id int64, by string) error {
	now := s.now()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		r, err := requestTx(ctx, tx, id)
		if err != nil {
			return err
		}
		if !r.Open() {
			return ErrDecided
		}
		ls, err := containing(ctx, tx, r.IP, now)
		if err != nil {
			return err
		}
		for _, l := range ls {
			if err := removeListingTx(ctx, tx, l.Prefix, r.IP.String(), by, "", false, id, now); err != nil {
				return err
			}
		}
		return setStatus(ctx, tx, id, StatusApproved, by, false, now)
	})
	if err != nil {
		return fmt.Errorf("approve request %d: %w", id, err)
	}
	s.changed(ctx)
	return nil
}

// DenyRequest is an operator's no: the listing stays, the request is "denied".
func (s *Store) DenyRequest(ctx context.Context, id int64, by string) error {
	now := s.now()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		r, err := requestTx(ctx, tx, id)
		if err != nil {
			return err
		}
		if !r.Open() {
			return ErrDecided
		}
		return setStatus(ctx, tx, id, StatusDenied, by, false, now)
	})
	if err != nil {
		return fmt.Errorf("deny request %d: %w", id, err)
	}
	return nil
}

func setStatus(ctx context.Context, tx *sql.Tx, id int64, status, by string, selfService bool, now time.Time) error {
	// A decided request's link must not work any more either.
	_, err := tx.ExecContext(ctx, `
UPDATE removal_requests SET status = ?, decided = ?, decided_by = ?, self_service = ?, token_hash = NULL WHERE id = ?`,
		status, millis(now), by, selfService, id)
	return err
}

// containing returns the live listings that contain ip, longest prefix first.
func containing(ctx context.Context, tx *sql.Tx, ip netip.Addr, now time.Time) ([]Listing, error) {
	rows, err := tx.QueryContext(ctx, `
SELECT id, prefix, category FROM listings WHERE removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`, millis(now))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Listing
	for rows.Next() {
		var (
			l Listing
			p string
		)
		if err := rows.Scan(&l.ID, &p, &l.Category); err != nil {
			return nil, err
		}
		pr, err := netip.ParsePrefix(p)
		if err != nil {
			continue
		}
		// Keep the prefix text as stored: removeListingTx matches on it.
		if pr.Contains(ip) {
			l.Prefix = pr
			out = append(out, l)
		}
	}
	slices.SortFunc(out, func(a, b Listing) int { return b.Prefix.Bits() - a.Prefix.Bits() })
	return out, rows.Err()
}

// Request returns one request (without its token).
func (s *Store) Request(ctx context.Context, id int64) (RemovalRequest, error) {
	r, err := requestTx(ctx, s.db, id)
	if err != nil {
		return RemovalRequest{}, fmt.Errorf("request %d: %w", id, err)
	}
	return r, nil
}

// Requests returns the requests with the given status ("" for all, "open"
// for pending, confirmed and waiting), oldest first.
func (s *Store) Requests(ctx context.Context, status string) ([]RemovalRequest, error) {
	q := `SELECT ` + requestColumns + ` FROM removal_requests`
	var args []any
	switch status {
	case "":
	case "open":
		q += ` WHERE status IN (?, ?, ?)`
		args = append(args, StatusPending, StatusConfirmed, StatusWaiting)
	case StatusPending, StatusConfirmed, StatusWaiting, StatusApproved, StatusDenied, StatusRemoved, StatusExpired:
		q += ` WHERE status = ?`
		args = append(args, status)
	default:
		return nil, fmt.Errorf("requests: %w: unknown status %q", ErrInvalid, status)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("requests: %w", err)
	}
	defer rows.Close()
	var out []RemovalRequest
	for rows.Next() {
		r, err := scanRequest(rows)
		if err != nil {
			return nil, fmt.Errorf("requests: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("requests: %w", err)
	}
	return out, nil
}

// SelfServiceRemovals counts the self-service removals of ip since since,
// including those of listings that have come back since.
func (s *Store) SelfServiceRemovals(ctx context.Context, ip netip.Addr, since time.Time) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM removals WHERE ip = ? AND self_service AND at >= ?`,
		ip.Unmap().WithZone("").String(), millis(since)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("self-service removals of %s: %w", ip, err)
	}
	return n, nil
}

// RequestsByEmailSince counts the requests made with email (compared
// without case) since since.
func (s *Store) RequestsByEmailSince(ctx context.Context, email string, since time.Time) (int, error) {
	box, err := mailbox.Parse(strings.TrimSpace(email))
	if err != nil {
		return 0, nil // no such address was ever stored
	}
	var n int
	err = s.db.QueryRowContext(ctx, `SELECT count(*) FROM removal_requests WHERE email_key = ? AND created >= ?`,
		box.Key(), millis(since)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("requests by %q: %w", email, err)
	}
	return n, nil
}

const requestColumns = `id, ip, email, reason, status, token_expires, created, verified, decided, decided_by, self_service`

type rowScanner interface{ Scan(...any) error }

func scanRequest(row rowScanner) (RemovalRequest, error) {
	var (
		r                 RemovalRequest
		ip                string
		verified, decided sql.NullInt64
		expires, created  int64
	)
	if err := row.Scan(&r.ID, &ip, &r.Email, &r.Reason, &r.Status, &expires, &created, &verified, &decided, &r.DecidedBy, &r.SelfService); err != nil {
		return RemovalRequest{}, err
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return RemovalRequest{}, fmt.Errorf("request %d: bad ip %q: %w", r.ID, ip, err)
	}
	r.IP = a
	r.TokenExpires = fromMillis(expires)
	r.Created = fromMillis(created)
	r.Verified = fromNullMillis(verified)
	r.Decided = fromNullMillis(decided)
	return r, nil
}

func requestTx(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id int64) (RemovalRequest, error) {
	r, err := scanRequest(q.QueryRowContext(ctx, `SELECT `+requestColumns+` FROM removal_requests WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return RemovalRequest{}, fmt.Errorf("request %d: %w", id, ErrNotFound)
	}
	return r, err
}
