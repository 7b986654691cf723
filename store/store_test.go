package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// openTest opens a store in a fresh directory and closes it at the end of the test.
func openTest(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "blmilter.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// lockWrites holds the write lock of the database at path from another
// connection, as another process would, until the test ends or the
// returned transaction is rolled back.
func lockWrites(t *testing.T, path string) *sql.Tx {
	t.Helper()
	other, err := sql.Open("sqlite", dsn(path, time.Second, false))
	if err != nil {
		t.Fatal(err)
	}
	lock, err := other.Begin() // _txlock=immediate: takes the write lock now
	if err != nil {
		other.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lock.Rollback()
		other.Close()
	})
	return lock
}

// version1DB creates a database of schema version 1 (before any later
// migration) and returns its path and a connection to fill it with.
func version1DB(t *testing.T) (string, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v1.db")
	db, err := sql.Open("sqlite", dsn(path, time.Second, false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := migrate(context.Background(), db, migrations[:1]); err != nil {
		t.Fatal(err)
	}
	return path, db
}

func TestOpenCreatesSchemaAndReopens(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := schemaVersion(ctx, s.db)
	if err != nil {
		t.Fatal(err)
	}
	if v != len(migrations) {
		t.Errorf("schema version %d after Open, want %d", v, len(migrations))
	}
	if _, err := s.AddListing(ctx, Listing{Prefix: mustPrefix(t, "192.0.2.7"), Category: "zombie"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	if v, _ := schemaVersion(ctx, s.db); v != len(migrations) {
		t.Errorf("schema version %d after reopen, want %d", v, len(migrations))
	}
	if _, ok := s.ListingFor(mustAddr(t, "192.0.2.7")); !ok {
		t.Error("listing added before reopening is gone")
	}
}

func TestPragmas(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	// Hold several connections at once so the check covers more than the first.
	var conns []*sql.Conn
	for range 3 {
		c, err := s.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		for _, tc := range []struct{ pragma, want string }{
			{"journal_mode", "wal"},
			{"synchronous", "2"}, // FULL
			{"foreign_keys", "1"},
			{"busy_timeout", "5000"},
		} {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("connection %d: PRAGMA %s = %s, want %s", i, tc.pragma, got, tc.want)
			}
		}
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestMigrate(t *testing.T) {
	v1 := `CREATE TABLE a (x INTEGER);`
	v2 := `ALTER TABLE a ADD COLUMN y TEXT NOT NULL DEFAULT 'two';`
	bad := `CREATE TABLE b (x INTEGER); THIS IS NOT SQL;`
	tests := []struct {
		name        string
		first, then []string
		wantVersion int
		wantErr     string
	}{
		{"from empty", nil, []string{v1, v2}, 2, ""},
		{"one step up keeps data", []string{v1}, []string{v1, v2}, 2, ""},
		{"nothing to do", []string{v1, v2}, []string{v1, v2}, 2, ""},
		{"failed step rolls back", []string{v1}, []string{v1, bad}, 1, "schema version 2"},
		{"newer database", []string{v1, v2}, []string{v1}, 2, "newer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			db, err := sql.Open("sqlite", dsn(filepath.Join(t.TempDir(), "m.db"), time.Second, false))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := migrate(ctx, db, tc.first); err != nil {
				t.Fatal(err)
			}
			if len(tc.first) > 0 {
				if _, err := db.Exec(`INSERT INTO a (x) VALUES (42)`); err != nil {
					t.Fatal(err)
				}
			}
			err = migrate(ctx, db, tc.then)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("migrate: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("migrate error %v, want one containing %q", err, tc.wantErr)
			}
			if v, _ := schemaVersion(ctx, db); v != tc.wantVersion {
				t.Errorf("version %d, want %d", v, tc.wantVersion)
			}
			var n int
			if err := db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE name = 'b'`).Scan(&n); err != nil || n != 0 {
				t.Errorf("table of a failed migration left behind (n=%d, err=%v)", n, err)
			}
			if len(tc.first) > 0 && tc.wantVersion >= 2 && tc.wantErr == "" {
				var y string
				if err := db.QueryRow(`SELECT y FROM a WHERE x = 42`).Scan(&y); err != nil || y != "two" {
					t.Errorf("row from before the upgrade: y=%q err=%v", y, err)
				}
			}
		})
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	db, err := sql.Open("sqlite", dsn(path, time.Second, false))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA user_version = 99`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if s, err := Open(path, Options{}); err == nil {
		s.Close()
		t.Fatal("Open accepted a database from a newer blmilter")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("error %q does not say the schema is newer", err)
	}
}

func TestCloseTwice(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "c.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil && !errors.Is(err, sql.ErrConnDone) {
		t.Errorf("second Close: %v", err)
	}
}

// A database of schema version 1 (times in Unix nanoseconds) is upgraded
// in place: every time keeps its value in milliseconds, a removal keeps
// its request, and the request table takes the new statuses.
func TestMigrateNanosecondsToMilliseconds(t *testing.T) {
	ctx := context.Background()
	path, db := version1DB(t)
	listed := time.Date(2026, 3, 1, 10, 0, 0, 123456789, time.UTC)
	expires := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	far := time.Now().Add(24 * time.Hour)
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO listings (prefix, category, listed_at, expires_at) VALUES ('192.0.2.7/32', 'zombie', ?, ?)`, []any{listed.UnixNano(), expires.UnixNano()}},
		{`INSERT INTO listings (prefix, category, listed_at, expires_at) VALUES ('192.0.2.8/32', 'zombie', ?, ?)`, []any{listed.UnixNano(), far.UnixNano()}},
		{`INSERT INTO removal_requests (id, ip, email, status, token_expires, created, verified) VALUES (5, '192.0.2.7', 'Owner@Example.org', 'confirmed', ?, ?, ?)`, []any{expires.UnixNano(), listed.UnixNano(), listed.UnixNano()}},
		{`INSERT INTO removals (ip, prefix, at, self_service, request_id) VALUES ('192.0.2.7', '192.0.2.7/32', ?, 1, 5)`, []any{listed.UnixNano()}},
		{`INSERT INTO decisions (ref, at, ip, action, score, threshold, hits, errors, reply) VALUES ('r1', ?, '192.0.2.7', 'reject', 5, 3, '[]', '[]', '{}')`, []any{listed.UnixNano()}},
	} {
		if _, err := db.Exec(q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := schemaVersion(ctx, s.db); v != len(migrations) {
		t.Fatalf("schema version %d, want %d", v, len(migrations))
	}
	ms := listed.Truncate(time.Millisecond)
	r, err := s.Request(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Created.Equal(ms) || !r.TokenExpires.Equal(expires) || r.Verified == nil || !r.Verified.Equal(ms) || r.Email != "Owner@Example.org" {
		t.Errorf("request after the upgrade: %+v", r)
	}
	if n, _ := s.RequestsByEmailSince(ctx, "owner@example.org", ms); n != 1 {
		t.Errorf("the upgraded request does not count for its mailbox (%d)", n)
	}
	d, err := s.Decision(ctx, "r1")
	if err != nil || !d.Time.Equal(ms) {
		t.Errorf("decision after the upgrade: %v, %v", d.Time, err)
	}
	l, ok := s.ListingFor(mustAddr(t, "192.0.2.8"))
	if !ok || !l.ListedAt.Equal(ms) || !l.ExpiresAt.Equal(far.Truncate(time.Millisecond)) {
		t.Errorf("live listing after the upgrade: %+v, %v", l, ok)
	}
	if _, ok := s.ListingFor(mustAddr(t, "192.0.2.7")); ok != expires.After(time.Now()) {
		t.Errorf("expired listing: listed %v", ok)
	}
	if n, err := s.SelfServiceRemovals(ctx, mustAddr(t, "192.0.2.7"), ms); err != nil || n != 1 {
		t.Errorf("removal after the upgrade: %d, %v", n, err)
	}
	var fk int
	if err := s.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign keys %d after the upgrade (%v), want on", fk, err)
	}
	if _, err := s.db.Exec(`INSERT INTO removals (ip, prefix, at, self_service, request_id) VALUES ('x', 'x', 0, 0, 999)`); err == nil {
		t.Error("a removal of an unknown request was accepted: the foreign key is gone")
	}
}
