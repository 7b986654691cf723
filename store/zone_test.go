package store

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestZoneSerialSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "z.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if serial, digest, err := s.ZoneSerial(ctx, "bl.example.org"); err != nil || serial != 0 || digest != "" {
		t.Fatalf("fresh store: serial %d digest %q err %v, want 0 \"\" nil", serial, digest, err)
	}
	if err := s.SetZoneSerial(ctx, "bl.example.org.", 1780000000, "abc"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The name is matched without regard to case or the trailing dot.
	serial, digest, err := s.ZoneSerial(ctx, "BL.Example.org")
	if err != nil || serial != 1780000000 || digest != "abc" {
		t.Fatalf("after reopen: serial %d digest %q err %v", serial, digest, err)
	}
	if serial, _, _ := s.ZoneSerial(ctx, "other.example.org"); serial != 0 {
		t.Errorf("another zone has serial %d, want 0", serial)
	}
}

func TestSetZoneSerialOnlyMovesForward(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	const zone = "bl.example.org."
	steps := []struct {
		name    string
		serial  uint32
		digest  string
		wantErr bool
	}{
		{"first", 100, "a", false},
		{"same serial same content", 100, "a", false},
		{"same serial other content", 100, "b", true},
		{"backwards", 99, "b", true},
		{"forward", 101, "b", false},
		{"half the space ahead is after", 101 + 1<<31 - 1, "c", false},
		// 2^32-1 .. wraps past zero: after, in serial arithmetic.
		{"to the top", 1<<32 - 1, "d", false},
		{"wrap around", 5, "e", false},
		{"exactly half the space is not after", 5 + 1<<31, "f", true},
	}
	for _, st := range steps {
		err := s.SetZoneSerial(ctx, zone, st.serial, st.digest)
		if (err != nil) != st.wantErr {
			t.Fatalf("%s: SetZoneSerial(%d) = %v, want error %v", st.name, st.serial, err, st.wantErr)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: error %v is not ErrInvalid", st.name, err)
		}
	}
	if serial, digest, _ := s.ZoneSerial(ctx, zone); serial != 5 || digest != "e" {
		t.Errorf("stored serial %d digest %q, want 5 e", serial, digest)
	}
}

func TestLiveListingsFromSnapshot(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	soon := time.Now().Add(300 * time.Millisecond)
	for _, l := range []Listing{
		{Prefix: mustPrefix(t, "192.0.2.7"), Category: "zombie", Reason: "trap"},
		{Prefix: mustPrefix(t, "198.51.100.0/24"), Category: "dynamic"},
		{Prefix: mustPrefix(t, "2001:db8::/32"), Category: "spam-source"},
		{Prefix: mustPrefix(t, "203.0.113.9"), Category: "zombie", ExpiresAt: &soon},
	} {
		if _, err := s.AddListing(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RemoveListing(ctx, mustPrefix(t, "198.51.100.0/24"), "test"); err != nil {
		t.Fatal(err)
	}
	prefixes := func() []string {
		var out []string
		for _, l := range s.LiveListings() {
			out = append(out, l.Prefix.String())
		}
		slices.Sort(out)
		return out
	}
	want := []string{"192.0.2.7/32", "2001:db8::/32", "203.0.113.9/32"}
	if got := prefixes(); !slices.Equal(got, want) {
		t.Fatalf("live listings %v, want %v", got, want)
	}
	for _, l := range s.LiveListings() {
		if l.Prefix.String() == "192.0.2.7/32" && (l.Category != "zombie" || l.Reason != "trap") {
			t.Errorf("listing lost its fields: %+v", l)
		}
	}
	// An expired listing is left out even before the snapshot is rebuilt.
	time.Sleep(time.Until(soon) + 10*time.Millisecond)
	want = []string{"192.0.2.7/32", "2001:db8::/32"}
	if got := prefixes(); !slices.Equal(got, want) {
		t.Fatalf("after the expiry: live listings %v, want %v", got, want)
	}
}

// A database written before the zone serials existed (schema version 1)
// gains them on the first read-write open and keeps its listings; until
// then a read-only open refuses it and says what upgrades it.
func TestZoneSerialsMigrateFromVersion1(t *testing.T) {
	ctx := context.Background()
	path, db := version1DB(t)
	if _, err := db.Exec(`INSERT INTO listings (prefix, category, listed_at) VALUES ('192.0.2.7/32', 'zombie', ?)`, millis(time.Now())); err != nil {
		t.Fatal(err)
	}
	db.Close()

	if ro, err := Open(path, Options{ReadOnly: true, PollInterval: -1}); err == nil {
		ro.Close()
		t.Fatal("a read-only open accepted schema version 1")
	} else if !strings.Contains(err.Error(), "older") {
		t.Errorf("read-only open of version 1: %v, want it to say the schema is older", err)
	}

	s, err := Open(path, Options{PollInterval: -1})
	if err != nil {
		t.Fatalf("open version 1: %v", err)
	}
	defer s.Close()
	if v, _ := schemaVersion(ctx, s.db); v != len(migrations) {
		t.Errorf("schema version %d after open, want %d", v, len(migrations))
	}
	if _, ok := s.ListingFor(netip.MustParseAddr("192.0.2.7")); !ok {
		t.Error("the listing written at version 1 is gone")
	}
	if err := s.SetZoneSerial(ctx, "bl.example.org", 7, "d"); err != nil {
		t.Fatal(err)
	}
	if serial, digest, err := s.ZoneSerial(ctx, "bl.example.org"); err != nil || serial != 7 || digest != "d" {
		t.Errorf("serial %d digest %q err %v, want 7 \"d\" nil", serial, digest, err)
	}
}
