package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/blmilter/blmilter/policy"
)

// Listing is one entry of the site's own list.
type Listing struct {
	ID        int64
	Prefix    netip.Prefix // a single address is a /32 or /128
	Category  string       // zombie, open-proxy, spam-source, dynamic, local, ...
	Reason    string       // shown on the lookup page
	Source    string       // who or what listed it: "cli", "admin:alice", ...
	ListedAt  time.Time
	ExpiresAt *time.Time // nil: until removed
	Removals  int        // how often this prefix has been removed before
	// Level counts the listing periods of this prefix that ended (removed
	// or expired) before the current one: a trap listing lasts twice as
	// long for each.
	Level int
	// FirstRefused is when a refusal by this listing was first deferred
	// (delist-and-deliver), and Deferred how many were, in this period.
	FirstRefused *time.Time
	Deferred     int
}

// Expired reports whether the listing no longer counts at now.
func (l Listing) Expired(now time.Time) bool {
	return l.ExpiresAt != nil && !l.ExpiresAt.After(now)
}

// ParsePrefix reads an address or CIDR in the form the list takes: the
// prefix is masked and an IPv4-mapped IPv6 address becomes IPv4, so each
// network has one spelling.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%w: %q is not an IP address or CIDR", ErrInvalid, s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%w: %q has a zone", ErrInvalid, s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: %q is not an IP address or CIDR", ErrInvalid, s)
	}
	return canonPrefix(p), nil
}

func canonPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	if a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// AddListing lists l.Prefix, or updates its listing when it is already
// there. A prefix that was removed before comes back with its removal count
// (and its removal history keeps counting toward the self-service quota).
// ListedAt defaults to now. The snapshot and OnChange callbacks are updated
// before AddListing returns.
func (s *Store) AddListing(ctx context.Context, l Listing) (Listing, error) {
	if !l.Prefix.IsValid() {
		return Listing{}, fmt.Errorf("add listing: %w: no prefix", ErrInvalid)
	}
	l.Prefix = canonPrefix(l.Prefix)
	l.Category = strings.TrimSpace(l.Category)
	if l.Category == "" {
		return Listing{}, fmt.Errorf("add listing %s: %w: no category", l.Prefix, ErrInvalid)
	}
	if !policy.IsCategory(l.Category) {
		return Listing{}, fmt.Errorf("add listing %s: %w: category %q is not one word of a-z, 0-9 and '-' (at most %d characters)",
			l.Prefix, ErrInvalid, l.Category, policy.MaxCategoryLen)
	}
	if len(l.Reason) > MaxReasonLen || !utf8.ValidString(l.Reason) {
		return Listing{}, fmt.Errorf("add listing %s: %w: reason longer than %d bytes or not UTF-8", l.Prefix, ErrInvalid, MaxReasonLen)
	}
	if l.ListedAt.IsZero() {
		l.ListedAt = s.now()
	}
	if err := CheckTime("listed_at", l.ListedAt); err != nil {
		return Listing{}, fmt.Errorf("add listing %s: %w", l.Prefix, err)
	}
	if l.ExpiresAt != nil {
		if err := CheckTime("expires_at", *l.ExpiresAt); err != nil {
			return Listing{}, fmt.Errorf("add listing %s: %w", l.Prefix, err)
		}
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		l, _, err = upsertListingTx(ctx, tx, l, s.now())
		return err
	})
	if err != nil {
		return Listing{}, fmt.Errorf("add listing %s: %w", l.Prefix, err)
	}
	s.changed(ctx)
	return l, nil
}

// upsertListingTx lists l.Prefix or updates its live listing, and records
// the event. A listing period starts when the prefix was not listed or its
// last period ended (removed, or expired at now); the level counts the
// periods that ended before, for the escalation of trap listings. started
// reports whether a period started.
func upsertListingTx(ctx context.Context, tx *sql.Tx, l Listing, now time.Time) (_ Listing, started bool, err error) {
	var (
		removed, expires sql.NullInt64
		level            int
	)
	err = tx.QueryRowContext(ctx, `SELECT removed_at, expires_at, level FROM listings WHERE prefix = ?`, l.Prefix.String()).
		Scan(&removed, &expires, &level)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return l, false, err
	}
	lapsed := exists && !removed.Valid && expires.Valid && expires.Int64 <= millis(now)
	started = !exists || removed.Valid || lapsed
	if lapsed {
		// Its expiry was never written down as an event; it is now.
		if err := logEventTx(ctx, tx, event{at: fromMillis(expires.Int64), prefix: l.Prefix, kind: EventExpired}); err != nil {
			return l, false, err
		}
	}
	if exists && started {
		level++
	}
	err = tx.QueryRowContext(ctx, `
INSERT INTO listings (prefix, category, reason, source, listed_at, expires_at, level)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (prefix) DO UPDATE SET
	category = excluded.category, reason = excluded.reason, source = excluded.source,
	expires_at = excluded.expires_at, level = excluded.level,
	-- a change of a live listing keeps its date; a new period starts anew
	listed_at = CASE WHEN ? THEN excluded.listed_at ELSE listed_at END,
	first_refused = CASE WHEN ? THEN NULL ELSE first_refused END,
	deferred = CASE WHEN ? THEN 0 ELSE deferred END,
	removed_at = NULL, removed_by = ''
RETURNING id, listed_at, removal_count, level`,
		l.Prefix.String(), l.Category, l.Reason, l.Source, millis(l.ListedAt), nullMillis(l.ExpiresAt), level,
		started, started, started,
	).Scan(&l.ID, (*msTime)(&l.ListedAt), &l.Removals, &l.Level)
	if err != nil {
		return l, false, err
	}
	kind := EventChanged
	if started {
		kind = EventListed
	}
	err = logEventTx(ctx, tx, event{at: now, prefix: l.Prefix, kind: kind, by: l.Source, category: l.Category, expires: l.ExpiresAt})
	return l, started, err
}

// RemoveListing removes the listing of exactly prefix (not of a network
// containing it), recording by in its history. ErrNotFound when it is not
// listed.
func (s *Store) RemoveListing(ctx context.Context, prefix netip.Prefix, by string) error {
	if !prefix.IsValid() {
		return fmt.Errorf("remove listing: %w: no prefix", ErrInvalid)
	}
	prefix = canonPrefix(prefix)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		ip := prefix.String()
		if prefix.IsSingleIP() {
			ip = prefix.Addr().String()
		}
		return removeListingTx(ctx, tx, prefix, ip, by, "", false, 0, s.now())
	})
	if err != nil {
		return fmt.Errorf("remove listing %s: %w", prefix, err)
	}
	s.changed(ctx)
	return nil
}

// removeListingTx marks the live listing of prefix removed and records the
// removal against ip, with detail (what proved control, say) in the event.
func removeListingTx(ctx context.Context, tx *sql.Tx, prefix netip.Prefix, ip, by, detail string, selfService bool, requestID int64, now time.Time) error {
	res, err := tx.ExecContext(ctx, `
UPDATE listings SET removed_at = ?, removed_by = ?, removal_count = removal_count + 1
WHERE prefix = ? AND removed_at IS NULL`, millis(now), by, prefix.String())
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	req := sql.NullInt64{Int64: requestID, Valid: requestID != 0}
	if _, err = tx.ExecContext(ctx, `
INSERT INTO removals (ip, prefix, at, self_service, by, request_id) VALUES (?, ?, ?, ?, ?, ?)`,
		ip, prefix.String(), millis(now), selfService, by, req); err != nil {
		return err
	}
	return logEventTx(ctx, tx, event{at: now, prefix: prefix, kind: EventRemoved, by: by, detail: detail})
}

// ListingFor returns the listing that applies to ip now: the longest live
// prefix containing it. It reads the in-memory snapshot only.
func (s *Store) ListingFor(ip netip.Addr) (Listing, bool) {
	e, ok := s.snap.Load().lookup(ip)
	if !ok {
		return Listing{}, false
	}
	return e.l, true
}

// Lookup implements policy.StoreList: lock-free, no allocation, no I/O.
func (s *Store) Lookup(ip netip.Addr) (category, reason string, listed bool) {
	e, ok := s.snap.Load().lookup(ip)
	if !ok {
		return "", "", false
	}
	return e.l.Category, e.l.Reason, true
}

// Len is the number of live listings, from memory.
func (s *Store) Len() int { return s.snap.Load().len() }

// Listings returns the live listings (not removed, not expired), ordered by
// prefix text.
func (s *Store) Listings(ctx context.Context) ([]Listing, error) {
	ls, err := s.liveListings(ctx, s.db, s.now())
	if err != nil {
		return nil, fmt.Errorf("listings: %w", err)
	}
	return ls, nil
}

// listingColumns are what a Listing is read from, in scanListing's order.
const listingColumns = `id, prefix, category, reason, source, listed_at, expires_at, removal_count, level, first_refused, deferred, removed_at IS NOT NULL`

func (s *Store) liveListings(ctx context.Context, q querier, now time.Time) ([]Listing, error) {
	rows, err := q.QueryContext(ctx, `
SELECT `+listingColumns+`
FROM listings WHERE removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?)
ORDER BY prefix`, millis(now))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Listing
	for rows.Next() {
		l, _, err := s.scanListing(rows)
		if err != nil {
			return nil, err
		}
		if l.Prefix.IsValid() {
			out = append(out, l)
		}
	}
	return out, rows.Err()
}

// scanListing reads a row of listingColumns, and whether the listing was
// removed. A row whose prefix does not parse is logged and comes back
// with no Prefix.
func (s *Store) scanListing(rows *sql.Rows) (l Listing, removed bool, err error) {
	var (
		prefix            string
		expires, firstRef sql.NullInt64
	)
	if err := rows.Scan(&l.ID, &prefix, &l.Category, &l.Reason, &l.Source, (*msTime)(&l.ListedAt), &expires, &l.Removals,
		&l.Level, &firstRef, &l.Deferred, &removed); err != nil {
		return Listing{}, false, err
	}
	p, err := netip.ParsePrefix(prefix)
	if err != nil {
		// Someone edited the file by hand; one bad row must not hide the rest.
		s.log.Warn("skipping listing with a bad prefix", "id", l.ID, "prefix", prefix, "err", err)
		return Listing{ID: l.ID}, removed, nil
	}
	l.Prefix = canonPrefix(p)
	l.ExpiresAt = fromNullMillis(expires)
	l.FirstRefused = fromNullMillis(firstRef)
	return l, removed, nil
}

// changedListings reads the rows changed since generation gen: the
// prefixes whose listing may have changed, and the listings among them
// that are live at now.
func (s *Store) changedListings(ctx context.Context, gen int64, now time.Time) (live []Listing, touched []netip.Prefix, err error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+listingColumns+` FROM listings WHERE gen > ?`, gen)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	touched = []netip.Prefix{}
	for rows.Next() {
		l, removed, err := s.scanListing(rows)
		if err != nil {
			return nil, nil, err
		}
		if !l.Prefix.IsValid() {
			continue
		}
		touched = append(touched, l.Prefix)
		if !removed && !l.Expired(now) {
			live = append(live, l)
		}
	}
	return live, touched, rows.Err()
}

// OnChange registers fn to be called with each prefix whose listing was
// added, changed, removed or expired, after the snapshot shows the change.
// Changes made through this Store call fn before the changing method
// returns; changes by other processes and expiries within PollInterval.
// fn runs on the changing goroutine; it must not block or change listings.
func (s *Store) OnChange(fn func(prefix netip.Prefix)) {
	s.cbMu.Lock()
	s.callbacks = append(s.callbacks, fn)
	s.cbMu.Unlock()
}

// InvalidateFor adapts a cache invalidation by address, such as
// policy.Engine.Invalidate (where the zero Addr purges everything), for
// OnChange: a single-address listing drops that address, a network drops
// every cached verdict, since the cache is keyed by address.
func InvalidateFor(invalidate func(ip netip.Addr)) func(prefix netip.Prefix) {
	return func(p netip.Prefix) {
		if p.IsSingleIP() {
			invalidate(p.Addr())
			return
		}
		invalidate(netip.Addr{})
	}
}

// changed brings the snapshot and the OnChange callbacks up to a write of
// ours that has committed, before the writer returns. Writers share the
// rebuilds (rebuildGroup), so a flood of writes costs as many rebuilds as
// fit end to end in its time, not one per write. The write is committed
// whatever happens here; failing to reload it is logged and retried by the
// watcher.
func (s *Store) changed(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	s.rebuilds.after(func() {
		if err := s.refresh(ctx); err != nil {
			s.log.Error("reloading listings after a change", "err", err)
		}
	})
}

// refresh rebuilds the snapshot if the listings changed (by generation) or
// a listing expired, then tells the OnChange callbacks what differs.
func (s *Store) refresh(ctx context.Context) error { return s.rebuild(ctx, false) }

// rebuild is refresh; force rebuilds even when nothing changed (the
// self-service rule did). It reads every row only for the first snapshot,
// after a row was deleted or moved, or when the generation went back (the
// file was replaced); otherwise only the rows changed since the last
// snapshot, which it derives from that one.
func (s *Store) rebuild(ctx context.Context, force bool) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	now := s.now()
	old := s.snap.Load()
	var gen, gone int64
	if err := s.db.QueryRowContext(ctx, `
SELECT (SELECT value FROM meta WHERE key = 'listings_gen'), (SELECT value FROM meta WHERE key = 'listings_gone')`).
		Scan(&gen, &gone); err != nil {
		return fmt.Errorf("read listings generation: %w", err)
	}
	if !force && gen == old.gen && (old.next.IsZero() || now.Before(old.next)) {
		return nil
	}
	var (
		snap    *snapshot
		changed []netip.Prefix
	)
	if old.gen < 0 || gen < old.gen || gone != old.gone {
		ls, err := s.liveListings(ctx, s.db, now)
		if err != nil {
			return fmt.Errorf("load listings: %w", err)
		}
		snap = newSnapshot(ls, gen, now, s.opts.Now)
		snap.gone = gone
		snap.carryDeferrals(old)
		changed = diff(old, snap)
	} else {
		fresh, touched, err := s.changedListings(ctx, old.gen, now)
		if err != nil {
			return fmt.Errorf("load changed listings: %w", err)
		}
		var expired []netip.Prefix
		snap, expired = old.derive(fresh, touched, gen, now)
		changed = diffOf(old, snap, append(touched, expired...))
	}
	if rule := s.selfService.Load(); rule != nil && len(rule.Categories) > 0 {
		used, err := s.selfServiceUse(ctx, now.Add(-rule.Window))
		if err != nil {
			return fmt.Errorf("load self-service removals: %w", err)
		}
		snap.rule, snap.used = *rule, used
	}
	s.snap.Store(snap)
	select {
	case s.kick <- struct{}{}:
	default:
	}
	if len(changed) == 0 {
		return nil
	}
	s.cbMu.RLock()
	cbs := s.callbacks
	s.cbMu.RUnlock()
	for _, p := range changed {
		for _, fn := range cbs {
			fn(p)
		}
	}
	return nil
}

// selfServiceUse counts the self-service removals since since per prefix.
func (s *Store) selfServiceUse(ctx context.Context, since time.Time) (map[netip.Prefix]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT prefix, count(*) FROM removals WHERE self_service AND at >= ? GROUP BY prefix`, millis(since))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	used := map[netip.Prefix]int{}
	for rows.Next() {
		var (
			text string
			n    int
		)
		if err := rows.Scan(&text, &n); err != nil {
			return nil, err
		}
		if p, err := netip.ParsePrefix(text); err == nil {
			used[canonPrefix(p)] += n
		}
	}
	return used, rows.Err()
}

// watchListings reloads the snapshot when another process changed the
// listings and when the next listing expires.
func (s *Store) watchListings() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := time.Hour
		if s.opts.PollInterval > 0 {
			wait = s.opts.PollInterval
		}
		if next := s.snap.Load().next; !next.IsZero() {
			wait = min(wait, max(next.Sub(s.now()), time.Millisecond))
		}
		timer.Reset(wait)
		select {
		case <-s.done:
			return
		case <-s.kick:
			// Since Go 1.23 a stopped timer delivers no stale tick, so
			// there is nothing to drain.
			timer.Stop()
			continue
		case <-timer.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.refresh(ctx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("reloading listings", "err", err)
		}
		cancel()
	}
}

// querier is what *sql.DB and *sql.Tx share.
type querier interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	QueryRowContext(context.Context, string, ...any) *sql.Row
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}

// tx runs fn in a write transaction and commits when it returns nil.
// Writers queue on writeMu rather than in SQLite: a writer that finds the
// database locked sleeps in SQLite's busy handler (up to 100ms a time),
// where a mutex hands over at once. busy_timeout still covers writers in
// other processes.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	if s.opts.ReadOnly {
		return fmt.Errorf("store: %s: %w", s.path, ErrReadOnly)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// msTime scans an INTEGER Unix-millisecond column into a time.Time.
type msTime time.Time

func (t *msTime) Scan(v any) error {
	n, ok := v.(int64)
	if !ok {
		return fmt.Errorf("time column holds %T, want integer", v)
	}
	*t = msTime(fromMillis(n))
	return nil
}
