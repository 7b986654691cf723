// Package storeseed fills a new store file with many listings at once, for
// tests and benchmarks that need a store that has run for a while.
package storeseed

import (
	"database/sql"
	"testing"
	"time"

	"github.com/blmilter/blmilter/store"
)

// Hosts writes n host listings in 10.0.0.0/8 (category zombie) into a new
// store file at path: in one statement, which is much quicker than n
// AddListing calls.
func Hosts(t testing.TB, path string, n int) {
	t.Helper()
	st, err := store.Open(path, store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
INSERT INTO listings (prefix, category, reason, source, listed_at)
SELECT printf('10.%d.%d.%d/32', i >> 16 & 255, i >> 8 & 255, i & 255), 'zombie', 'seen', 'cli', ? FROM n`,
		n, time.Now().UnixMilli()); err != nil {
		t.Fatal(err)
	}
}
