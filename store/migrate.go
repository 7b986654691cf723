package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
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
	listed_at     INTEGER NOT NULL,        -- Unix nanoseconds here; milliseconds from version 3 on
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
	// 3: every time in Unix milliseconds instead of nanoseconds, which wrap
	// outside the years 1678-2262; a removal request whose link was never
	// followed ends as "expired" instead of being deleted; the email is
	// kept as typed, with a case-folded key for the limit per mailbox.
	`
UPDATE listings SET listed_at = listed_at / 1000000, expires_at = expires_at / 1000000, removed_at = removed_at / 1000000;
UPDATE removals SET at = at / 1000000;
UPDATE decisions SET at = at / 1000000;
UPDATE zone_serials SET updated = updated / 1000000;

CREATE TABLE removal_requests_v2 (
	id            INTEGER PRIMARY KEY,
	ip            TEXT    NOT NULL,
	email         TEXT    NOT NULL,                  -- as typed
	email_key     TEXT    NOT NULL,                  -- case-folded, for the limit per mailbox
	reason        TEXT    NOT NULL DEFAULT '',
	status        TEXT    NOT NULL CHECK (status IN ('pending','confirmed','waiting','approved','denied','removed','expired')),
	token_hash    BLOB    UNIQUE,
	token_expires INTEGER NOT NULL,
	created       INTEGER NOT NULL,
	verified      INTEGER,
	decided       INTEGER,
	decided_by    TEXT    NOT NULL DEFAULT '',
	self_service  INTEGER NOT NULL DEFAULT 0
);
INSERT INTO removal_requests_v2
SELECT id, ip, email, lower(email), reason, status, token_hash, token_expires / 1000000, created / 1000000,
	verified / 1000000, decided / 1000000, decided_by, self_service
FROM removal_requests;
DROP TABLE removal_requests;
ALTER TABLE removal_requests_v2 RENAME TO removal_requests;
CREATE INDEX removal_requests_email ON removal_requests (email_key, created);
CREATE INDEX removal_requests_status ON removal_requests (status, id);
`,
	// 4: evidence and history. Trap hits with what the filter saw; per IP
	// and day, what older evidence and decisions summarise to; the events
	// of every listing and who made them; the escalation level and the
	// delist-and-deliver state of a listing; the notices of the removal
	// loop; one-time proof-of-control tokens; the secret that signs
	// requesters' status links.
	`
CREATE TABLE trap_hits (
	id        INTEGER PRIMARY KEY,
	at        INTEGER NOT NULL,
	ip        TEXT    NOT NULL,
	prefix    TEXT    NOT NULL,           -- what a listing of the client covers: the address, or its IPv6 /64
	helo      TEXT    NOT NULL DEFAULT '',
	mail_from TEXT    NOT NULL DEFAULT '',
	trap      TEXT    NOT NULL,           -- never leaves the store but for the operator's command line
	queue_id  TEXT    NOT NULL DEFAULT '',
	rdns      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX trap_hits_prefix ON trap_hits (prefix, at);
CREATE INDEX trap_hits_ip ON trap_hits (ip, at);
CREATE INDEX trap_hits_at ON trap_hits (at);

CREATE TABLE ip_days (
	ip        TEXT    NOT NULL,
	day       INTEGER NOT NULL,           -- days since 1970-01-01, UTC
	trap_hits INTEGER NOT NULL DEFAULT 0,
	helos     TEXT    NOT NULL DEFAULT '', -- a few HELO names of those hits, one per line
	refused   INTEGER NOT NULL DEFAULT 0,
	deferred  INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (ip, day)
) WITHOUT ROWID;
CREATE INDEX ip_days_day ON ip_days (day);

CREATE TABLE listing_events (
	id       INTEGER PRIMARY KEY,
	at       INTEGER NOT NULL,
	prefix   TEXT    NOT NULL,
	event    TEXT    NOT NULL CHECK (event IN ('listed','changed','removed','expired')),
	by       TEXT    NOT NULL DEFAULT '',
	category TEXT    NOT NULL DEFAULT '',
	expires  INTEGER,
	detail   TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX listing_events_prefix ON listing_events (prefix, at);
CREATE INDEX listing_events_at ON listing_events (at);

ALTER TABLE listings ADD COLUMN level INTEGER NOT NULL DEFAULT 0;   -- listing periods of this prefix that ended before
ALTER TABLE listings ADD COLUMN first_refused INTEGER;              -- first deferred refusal of this period
ALTER TABLE listings ADD COLUMN deferred INTEGER NOT NULL DEFAULT 0; -- refusals deferred in this period

ALTER TABLE removal_requests ADD COLUMN requester_notified INTEGER;
ALTER TABLE removal_requests ADD COLUMN operator_notified INTEGER;

CREATE TABLE delist_tokens (
	ip      TEXT    PRIMARY KEY,
	token   TEXT    NOT NULL UNIQUE,
	expires INTEGER NOT NULL
);

CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);

-- The generation follows what the list serves, not the bookkeeping of
-- delist-and-deliver.
DROP TRIGGER listings_gen_update;
CREATE TRIGGER listings_gen_update AFTER UPDATE OF prefix, category, reason, source, listed_at, expires_at, removed_at ON listings
	BEGIN UPDATE meta SET value = value + 1 WHERE key = 'listings_gen'; END;
`,
	// 5: each listing carries the generation of its last change, so a
	// rebuild of the in-memory list reads only the rows changed since the
	// generation it had, whoever changed them. A row deleted, or moved to
	// another prefix by hand, leaves nothing that says where it was; those
	// are counted apart (listings_gone), and make the next rebuild read
	// every row.
	`
ALTER TABLE listings ADD COLUMN gen INTEGER NOT NULL DEFAULT 0;
CREATE INDEX listings_gen ON listings (gen);
INSERT INTO meta (key, value) VALUES ('listings_gone', 0);

DROP TRIGGER listings_gen_insert;
CREATE TRIGGER listings_gen_insert AFTER INSERT ON listings BEGIN
	UPDATE meta SET value = value + 1 WHERE key = 'listings_gen';
	UPDATE listings SET gen = (SELECT value FROM meta WHERE key = 'listings_gen') WHERE id = NEW.id;
END;
-- Setting gen is not among the columns this trigger follows, so it does not
-- fire itself.
DROP TRIGGER listings_gen_update;
CREATE TRIGGER listings_gen_update AFTER UPDATE OF prefix, category, reason, source, listed_at, expires_at, removed_at ON listings BEGIN
	UPDATE meta SET value = value + 1 WHERE key = 'listings_gen';
	UPDATE listings SET gen = (SELECT value FROM meta WHERE key = 'listings_gen') WHERE id = NEW.id;
END;
CREATE TRIGGER listings_gone_prefix AFTER UPDATE OF prefix ON listings WHEN OLD.prefix IS NOT NEW.prefix
	BEGIN UPDATE meta SET value = value + 1 WHERE key = 'listings_gone'; END;
DROP TRIGGER listings_gen_delete;
CREATE TRIGGER listings_gen_delete AFTER DELETE ON listings
	BEGIN UPDATE meta SET value = value + 1 WHERE key IN ('listings_gen', 'listings_gone'); END;
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
//
// The migrations run on one connection with foreign keys off, as SQLite
// asks for a migration that rebuilds a table others refer to; each checks
// the keys itself (PRAGMA foreign_key_check) before it commits.
func migrate(ctx context.Context, db *sql.DB, migs []string) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "PRAGMA foreign_keys = OFF"); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// The connection goes back to the pool: with its keys on again, or
	// not at all.
	defer func() {
		if _, err := conn.ExecContext(context.WithoutCancel(ctx), "PRAGMA foreign_keys = ON"); err != nil {
			conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}()
	for {
		done, err := migrateOne(ctx, conn, migs)
		if err != nil || done {
			return err
		}
	}
}

func migrateOne(ctx context.Context, conn *sql.Conn, migs []string) (done bool, err error) {
	tx, err := conn.BeginTx(ctx, nil)
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
	rows, err := tx.QueryContext(ctx, "PRAGMA foreign_key_check")
	if err != nil {
		return false, fmt.Errorf("migrate to schema version %d: foreign key check: %w", v+1, err)
	}
	bad := rows.Next()
	rows.Close()
	if bad {
		return false, fmt.Errorf("migrate to schema version %d: foreign keys broken", v+1)
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
