// Package store keeps the site's own block list, the removal requests made
// against it and the recent decisions that bounces refer to, in one SQLite
// file (modernc.org/sqlite: pure Go, no cgo).
//
// The listings are also served from an in-memory snapshot, so the mail path
// (Lookup, ListingFor) never touches the database. The snapshot is rebuilt
// after every change made through this Store, and within PollInterval of a
// change made by another process (the `blmilter list` command, for one).
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blmilter/blmilter/policy"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Defaults for Options fields left zero.
const (
	DefaultTokenTTL       = 24 * time.Hour
	DefaultDecisionBuffer = 4096
	DefaultPollInterval   = 500 * time.Millisecond
	DefaultPruneInterval  = 10 * time.Minute
	DefaultBusyTimeout    = 5 * time.Second
)

// Errors callers tell apart with errors.Is.
var (
	ErrNotFound     = errors.New("not found")
	ErrTokenInvalid = errors.New("confirmation link is invalid or has expired")
	ErrDecided      = errors.New("request already decided")
	ErrInvalid      = errors.New("invalid value")
	ErrReadOnly     = errors.New("the store is open read-only")
)

// Options tune a Store; the zero value is usable.
type Options struct {
	Logger *slog.Logger
	// ReadOnly opens the file read-only (SQLite mode=ro): no schema
	// migration, no writer, every write fails with ErrReadOnly. Commands
	// that only read use it, so they work on a file they may not write.
	ReadOnly bool
	// TokenTTL is how long a removal request's confirmation link works (24h).
	TokenTTL time.Duration
	// DecisionMaxAge and DecisionMaxRows bound the recorded decisions; 0
	// sets no bound. SetDecisionLimits changes them while the store is open.
	DecisionMaxAge  time.Duration
	DecisionMaxRows int
	// DecisionBuffer is how many decisions may wait for the writer before
	// RecordDecision starts dropping them (4096).
	DecisionBuffer int
	// Retention bounds the evidence and history kept; SetRetention
	// changes it while the store is open.
	Retention Retention
	// PruneInterval is how often old records are pruned (10m); the writer
	// also prunes after every DecisionMaxRows/10 inserts.
	PruneInterval time.Duration
	// PollInterval is how often the listings are checked for changes made by
	// other processes (500ms: one small query; with the reload of 100,000
	// listings and the zone's rebuild, a change on the command line is in
	// the DNS zone within 2 s). Negative disables polling.
	PollInterval time.Duration
	// BusyTimeout is how long a write waits for another writer (5s).
	BusyTimeout time.Duration
	// Now is the clock (time.Now when nil): expiry, escalation and the
	// pruning of old records follow it, so tests move days in an instant.
	Now func() time.Time
}

func (o *Options) fill() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.TokenTTL <= 0 {
		o.TokenTTL = DefaultTokenTTL
	}
	if o.DecisionBuffer <= 0 {
		o.DecisionBuffer = DefaultDecisionBuffer
	}
	if o.PruneInterval <= 0 {
		o.PruneInterval = DefaultPruneInterval
	}
	if o.PollInterval == 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.BusyTimeout <= 0 {
		o.BusyTimeout = DefaultBusyTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Store is the open database. Its methods are safe for concurrent use.
type Store struct {
	db      *sql.DB
	path    string
	writeMu sync.Mutex // see tx
	opts    Options
	log     *slog.Logger

	// decision bounds (SetDecisionLimits); 0: none
	decisionMaxAge  atomic.Int64 // time.Duration
	decisionMaxRows atomic.Int64
	// retention (SetRetention); 0: keep
	evidenceMaxAge atomic.Int64 // time.Duration
	historyMaxAge  atomic.Int64 // time.Duration

	// listings snapshot, replaced whole; readers never lock.
	snap      atomic.Pointer[snapshot]
	refreshMu sync.Mutex   // one rebuild at a time, so an older snapshot never replaces a newer one
	rebuilds  rebuildGroup // shared by writers after their commits (changed)
	cbMu      sync.RWMutex
	callbacks []func(netip.Prefix)
	kick      chan struct{} // wakes the watcher when the next expiry may have moved

	statusKey []byte // signs requesters' status links (StatusToken)

	// selfService is the rule of SetSelfService; nil: nothing is
	// self-removable for delist-and-deliver.
	selfService atomic.Pointer[SelfService]

	// decision writer, which also writes the deferral notes
	decisions  chan policy.Decision
	deferNotes chan deferNote
	flushReq   chan chan struct{}
	dropped    atomic.Uint64
	closed     atomic.Bool

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// dsn builds the connection string. The pragmas run on every new
// connection of the pool, not just the first.
//
// synchronous(FULL) rather than NORMAL: in WAL mode NORMAL already survives
// a crash of the process (kill -9), because a commit is in the OS page cache
// once it returns; but it can lose the last commits if the machine loses
// power or the kernel panics, since the WAL is fsynced only at checkpoints.
// A removal request or a listing the operator was told is saved must still
// be there after a power cut, and these writes are few, so each commit pays
// for its fsync. Decisions are batched into one transaction, so they pay
// one fsync per batch.
//
// _txlock=immediate takes the write lock at BEGIN, so two writers never
// both read, then fail to upgrade to a write with SQLITE_BUSY.
//
// A read-only store opens the file with mode=ro and sets no pragma that
// writes: the journal mode is the file's own.
func dsn(path string, busy time.Duration, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busy.Milliseconds()))
	if readOnly {
		q.Set("mode", "ro")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(FULL)")
		q.Set("_txlock", "immediate")
	}
	q.Add("_pragma", "foreign_keys(1)")
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// Open opens the database at path, creating it if needed, brings its schema
// up to date and loads the listings. Close stops its background work. With
// opts.ReadOnly the file must exist with the current schema.
func Open(path string, opts Options) (*Store, error) {
	opts.fill()
	if path == "" {
		return nil, errors.New("store: no database path")
	}
	if opts.ReadOnly {
		// mode=ro would not create the file, but say why plainly.
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	db, err := sql.Open("sqlite", dsn(path, opts.BusyTimeout, opts.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	// A few connections let readers run beside the one writer WAL allows.
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(8)
	db.SetConnMaxIdleTime(0)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if opts.ReadOnly {
		err = checkSchema(ctx, db, len(migrations))
	} else {
		err = migrate(ctx, db, migrations)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	s := &Store{
		db:         db,
		path:       path,
		opts:       opts,
		log:        opts.Logger.With("component", "store"),
		kick:       make(chan struct{}, 1),
		decisions:  make(chan policy.Decision, opts.DecisionBuffer),
		deferNotes: make(chan deferNote, 1024),
		flushReq:   make(chan chan struct{}),
		done:       make(chan struct{}),
	}
	if s.statusKey, err = loadSecret(ctx, db, statusSecret, !opts.ReadOnly); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	s.SetDecisionLimits(opts.DecisionMaxAge, opts.DecisionMaxRows)
	s.SetRetention(opts.Retention)
	s.snap.Store(&snapshot{gen: -1, now: opts.Now})
	if err := s.refresh(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	s.wg.Add(1)
	go s.watchListings()
	if !opts.ReadOnly {
		s.wg.Add(1)
		go s.writeDecisions()
	}
	return s, nil
}

// SetDecisionLimits changes how many recorded decisions are kept and for
// how long (0: no bound), from the next pruning on.
func (s *Store) SetDecisionLimits(maxAge time.Duration, maxRows int) {
	s.decisionMaxAge.Store(int64(maxAge))
	s.decisionMaxRows.Store(int64(maxRows))
}

// now is the store's clock.
func (s *Store) now() time.Time { return s.opts.Now() }

// ReadOnly reports whether the store was opened read-only.
func (s *Store) ReadOnly() bool { return s.opts.ReadOnly }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Close writes the decisions still queued, stops the background work and
// closes the database. Later calls return the first result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		s.wg.Wait()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// Times are stored as integer Unix milliseconds: they compare in SQL, and
// unlike Unix nanoseconds (which wrap outside 1678-2262) an int64 of
// milliseconds holds every time a listing or request can carry. Times
// that enter from outside are bounded by CheckTime first.
func millis(t time.Time) int64 { return t.UnixMilli() }

func fromMillis(n int64) time.Time { return time.UnixMilli(n) }

func nullMillis(t *time.Time) sql.NullInt64 {
	if t == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: millis(*t), Valid: true}
}

func fromNullMillis(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := fromMillis(n.Int64)
	return &t
}

// The range of times the store takes from outside (CheckTime): wide enough
// for any real listing, narrow enough that every form a time is written in
// (RFC 3339, a page, a DNS serial) reads it back the same.
var (
	MinTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	MaxTime = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// CheckTime refuses a time outside MinTime..MaxTime with an ErrInvalid that
// says so; what names the value ("expires_at").
func CheckTime(what string, t time.Time) error {
	if t.Before(MinTime) || t.After(MaxTime) {
		return fmt.Errorf("%w: %s %s is outside the years 2000 to 9999", ErrInvalid, what, t.UTC().Format(time.RFC3339))
	}
	return nil
}
