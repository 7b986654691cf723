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
