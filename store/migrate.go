package store

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations[i] brings the schema from version i to i+1; PRAGMA user_version
// holds the version. Append only: a released migration is never edited,
// because databases out there have already run it.
var migrations = []string{
	// 1: listings, removal requests, removal history, decisions.
	`
CREATE TABLE listings (
	id            INTEGER PRIMARY KEY,
	prefix        TEXT    NOT NULL UNIQUE, -- canonical CIDR: 192.0.2.7/32, 2001:db8::/48
	category      TEXT    NOT NULL,
	reason        TEXT    NOT NULL DEFAULT '',
	source        TEXT    NOT NULL DEFAULT '',
	listed_at     INTEGER NOT NULL,        -- Unix nanoseconds, as every time here
	expires_at    INTEGER,
	removal_count INTEGER NOT NULL DEFAULT 0,
	-- A removed listing keeps its row, so its removal count survives a re-listing.
	removed_at    INTEGER,
	removed_by    TEXT    NOT NULL DEFAULT ''
);

CREATE TABLE removal_requests (
	id            INTEGER PRIMARY KEY,
	ip            TEXT    NOT NULL,
	email         TEXT    NOT NULL COLLATE NOCASE,
	reason        TEXT    NOT NULL DEFAULT '',
	status        TEXT    NOT NULL CHECK (status IN ('pending','confirmed','waiting','approved','denied','removed')),
	token_hash    BLOB    UNIQUE,          -- SHA-256 of the confirmation token; NULL once used
	token_expires INTEGER NOT NULL,
	created       INTEGER NOT NULL,
	verified      INTEGER,
	decided       INTEGER,
	decided_by    TEXT    NOT NULL DEFAULT '',
	self_service  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX removal_requests_email ON removal_requests (email, created);
CREATE INDEX removal_requests_status ON removal_requests (status, id);

-- Every removal of a listing, kept when the listing comes back: the
-- self-service quota counts these by IP.
CREATE TABLE removals (
	id           INTEGER PRIMARY KEY,
	ip           TEXT    NOT NULL,
	prefix       TEXT    NOT NULL,
	at           INTEGER NOT NULL,
	self_service INTEGER NOT NULL,
	by           TEXT    NOT NULL DEFAULT '',
	request_id   INTEGER REFERENCES removal_requests (id)
);
CREATE INDEX removals_ip ON removals (ip, at);

CREATE TABLE decisions (
	ref       TEXT    PRIMARY KEY,
	at        INTEGER NOT NULL,
	ip        TEXT    NOT NULL,
	action    TEXT    NOT NULL,
	score     REAL    NOT NULL,
	threshold REAL    NOT NULL,
	hits      TEXT    NOT NULL, -- JSON
	errors    TEXT    NOT NULL, -- JSON
	reply     TEXT    NOT NULL  -- JSON
);
CREATE INDEX decisions_at ON decisions (at);

-- listings_gen changes with every change to listings, whoever makes it, so
-- a running daemon notices edits made by the command line.
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('listings_gen', 0);
CREATE TRIGGER listings_gen_insert AFTER INSERT ON listings
	BEGIN UPDATE meta SET value = value + 1 WHERE key = 'listings_gen'; END;
CREATE TRIGGER listings_gen_update AFTER UPDATE ON listings
	BEGIN UPDATE meta SET value = value + 1 WHERE key = 'listings_gen'; END;
CREATE TRIGGER listings_gen_delete AFTER DELETE ON listings
	BEGIN UPDATE meta SET value = value + 1 WHERE key = 'listings_gen'; END;
`,
	// 2: the serial each published DNS zone last had, so it never goes back
	// across restarts, and a digest of what that serial published, so a
	// restart with the same listings keeps it.
	`
CREATE TABLE zone_serials (
	zone    TEXT    PRIMARY KEY, -- the zone's name, lower case with a trailing dot
	serial  INTEGER NOT NULL,    -- 0 .. 2^32-1, compared as RFC 1982 serial numbers
	digest  TEXT    NOT NULL DEFAULT '',
	updated INTEGER NOT NULL
);
`,
}

// schemaVersion reads PRAGMA user_version.
func schemaVersion(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (int, error) {
	var v int
	if err := q.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// checkSchema is what a read-only store does instead of migrating: the file
// must already have the schema this blmilter writes.
func checkSchema(ctx context.Context, db *sql.DB, want int) error {
	v, err := schemaVersion(ctx, db)
	if err != nil {
		return err
	}
	switch {
	case v > want:
		return fmt.Errorf("schema version %d is newer than this blmilter knows (%d); use a newer blmilter", v, want)
	case v < want:
		return fmt.Errorf("schema version %d is older than this blmilter's (%d), and the file is opened read-only; a command that writes (or blmilter serve) upgrades it", v, want)
	}
	return nil
}

// migrate applies the migrations the database has not had yet, each in its
// own transaction together with its version bump, so a failed migration
// leaves the previous version intact. Two processes opening the same new
// file at once are serialised by the immediate transaction; the loser
// re-reads the version inside it and finds nothing to do.
func migrate(ctx context.Context, db *sql.DB, migs []string) error {
	for {
		done, err := migrateOne(ctx, db, migs)
		if err != nil || done {
			return err
		}
	}
}

func migrateOne(ctx context.Context, db *sql.DB, migs []string) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback()
	v, err := schemaVersion(ctx, tx)
	if err != nil {
		return false, err
	}
	switch {
	case v > len(migs):
		return false, fmt.Errorf("schema version %d is newer than this blmilter knows (%d); use a newer blmilter", v, len(migs))
	case v == len(migs):
		return true, nil
	}
	if _, err := tx.ExecContext(ctx, migs[v]); err != nil {
		return false, fmt.Errorf("migrate to schema version %d: %w", v+1, err)
	}
	// PRAGMA takes no parameters; v+1 is our own integer.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
		return false, fmt.Errorf("set schema version %d: %w", v+1, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("migrate to schema version %d: commit: %w", v+1, err)
	}
	return false, nil
}
