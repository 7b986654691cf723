package main

import (
	"bytes"
	"context"
	"database/sql"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/store"
)

func storeRun(t *testing.T, fn func([]string, *bytes.Buffer, *bytes.Buffer) int, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := fn(args, &out, &errb)
	return code, out.String(), errb.String()
}

func listCmd(args []string, out, errb *bytes.Buffer) int {
	return run(append([]string{"list"}, args...), out, errb)
}

func requestsCmd(args []string, out, errb *bytes.Buffer) int {
	return run(append([]string{"requests"}, args...), out, errb)
}

func TestListCommand(t *testing.T) {
	db := filepath.Join(t.TempDir(), "cli.db")
	steps := []struct {
		name    string
		args    []string
		code    int
		out     []string // substrings of stdout
		errText string   // substring of stderr
	}{
		{"add to a new store without -create", []string{"add", "192.0.2.7", "-db", db}, 1, nil, "give -create"},
		{"add host and network", []string{"add", "192.0.2.7", "198.51.100.0/24", "-category", "zombie", "-reason", "trap hits", "-db", db, "-create"}, 0,
			[]string{"listed 192.0.2.7/32 (zombie)", "listed 198.51.100.0/24 (zombie)"}, ""},
		{"add with expiry, flags first", []string{"add", "-db", db, "-expires", "30d", "2001:db8::/32"}, 0, []string{"listed 2001:db8::/32 (local) until "}, ""},
		{"show all", []string{"show", "-db", db}, 0, []string{"PREFIX", "192.0.2.7/32", "198.51.100.0/24", "2001:db8::/32", "trap hits", "never"}, ""},
		{"show an address inside a network", []string{"show", "198.51.100.42", "-db", db}, 0, []string{"198.51.100.0/24"}, ""},
		{"show unlisted", []string{"show", "203.0.113.1", "-db", db}, 1, nil, "203.0.113.1/32: not listed"},
		{"remove", []string{"remove", "192.0.2.7", "-db", db}, 0, []string{"removed 192.0.2.7/32"}, ""},
		{"remove again", []string{"remove", "192.0.2.7", "-db", db}, 1, nil, "not listed"},
		{"bad address", []string{"add", "192.0.2.300", "-db", db}, 2, nil, "not an IP address or CIDR"},
		{"bad expiry", []string{"add", "192.0.2.1", "-expires", "soon", "-db", db}, 2, nil, "-expires"},
		// Far lifetimes are refused in words, never wrapped into "never".
		{"expiry past 9999", []string{"add", "192.0.2.1", "-expires", "3000000d", "-db", db}, 2, nil, "by the year 9999"},
		{"expiry past 2262", []string{"add", "192.0.2.9", "-expires", "110000d", "-db", db}, 0, []string{"listed 192.0.2.9/32 (local) until 23"}, ""},
		{"category with markup", []string{"add", "192.0.2.1", "-category", "<b>x</b>", "-db", db}, 2, nil, "one word"},
		{"category of two words", []string{"add", "192.0.2.1", "-category", "spam source", "-db", db}, 2, nil, "one word"},
		{"no address", []string{"add", "-db", db}, 2, nil, "no IP or CIDR"},
		{"unknown verb", []string{"frobnicate", "-db", db}, 2, nil, "unknown command"},
		{"no verb", nil, 2, nil, "usage:"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			code, out, errText := storeRun(t, listCmd, st.args...)
			if code != st.code {
				t.Errorf("exit %d, want %d; stderr %q", code, st.code, errText)
			}
			for _, want := range st.out {
				if !strings.Contains(out, want) {
					t.Errorf("stdout lacks %q:\n%s", want, out)
				}
			}
			if st.errText != "" && !strings.Contains(errText, st.errText) {
				t.Errorf("stderr %q lacks %q", errText, st.errText)
			}
		})
	}

	s, err := store.Open(db, store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, listed := s.Lookup(netip.MustParseAddr("192.0.2.7")); listed {
		t.Error("192.0.2.7 still listed after list remove")
	}
	if cat, _, _ := s.Lookup(netip.MustParseAddr("198.51.100.9")); cat != "zombie" {
		t.Errorf("198.51.100.9: category %q, want zombie", cat)
	}
	l, _ := s.ListingFor(netip.MustParseAddr("2001:db8::1"))
	if l.ExpiresAt == nil || l.ExpiresAt.Sub(l.ListedAt).Round(time.Hour) != 30*24*time.Hour {
		t.Errorf("-expires 30d gave %+v", l)
	}
	if !strings.HasPrefix(l.Source, "cli") {
		t.Errorf("source %q, want cli...", l.Source)
	}
}

func TestListCommandUsesConfigStorePath(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "from-config.db")
	cfg := filepath.Join(dir, "blmilter.toml")
	if err := os.WriteFile(cfg, []byte("[store]\npath = \""+db+"\"\n\n[[list]]\nname = \"site\"\nstore = true\nweight = 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errText := storeRun(t, listCmd, "add", "192.0.2.9", "-config", cfg, "-create"); code != 0 {
		t.Fatalf("exit %d: %s", code, errText)
	}
	if _, err := os.Stat(db); err != nil {
		t.Errorf("the config's [store] path was not used: %v", err)
	}
}

func TestRequestsCommand(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "req.db")
	s, err := store.Open(db, store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"192.0.2.7", "192.0.2.8"} {
		if _, err := s.AddListing(ctx, store.Listing{Prefix: netip.MustParsePrefix(p + "/32"), Category: "local"}); err != nil {
			t.Fatal(err)
		}
	}
	a, err := s.CreateRequest(ctx, store.NewRequest{IP: "192.0.2.7", Email: "a@example.org", Reason: "fixed\x1b[2J the relay"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.CreateRequest(ctx, store.NewRequest{IP: "192.0.2.8", Email: "b@example.org", Reason: ""})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	id := func(r store.RemovalRequest) string { return strconv.FormatInt(r.ID, 10) }

	steps := []struct {
		name    string
		args    []string
		code    int
		out     []string
		errText string
	}{
		{"list open", []string{"list", "-db", db}, 0, []string{"a@example.org", "b@example.org", "pending", "fixed [2J the relay"}, ""},
		{"approve", []string{"approve", id(a), "-db", db}, 0, []string{"request " + id(a) + " for 192.0.2.7: approved"}, ""},
		{"deny", []string{"deny", "-db", db, id(b)}, 0, []string{"for 192.0.2.8: denied"}, ""},
		{"approve decided", []string{"approve", id(a), "-db", db}, 1, nil, "already decided"},
		{"list open after", []string{"list", "-db", db}, 0, nil, ""},
		{"list all", []string{"list", "-status", "all", "-db", db}, 0, []string{"approved", "denied"}, ""},
		{"bad status", []string{"list", "-status", "lost", "-db", db}, 2, nil, "unknown status"},
		{"bad id", []string{"approve", "x1", "-db", db}, 2, nil, "not a request ID"},
		{"unknown id", []string{"deny", "999", "-db", db}, 1, nil, "not found"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			code, out, errText := storeRun(t, requestsCmd, st.args...)
			if code != st.code {
				t.Errorf("exit %d, want %d; stderr %q", code, st.code, errText)
			}
			for _, want := range st.out {
				if !strings.Contains(out, want) {
					t.Errorf("stdout lacks %q:\n%s", want, out)
				}
			}
			if st.name == "list open after" && strings.Contains(out, "example.org") {
				t.Errorf("decided requests listed as open:\n%s", out)
			}
			if strings.Contains(out, "\x1b") {
				t.Error("a control character from the requester reached the terminal")
			}
			if st.errText != "" && !strings.Contains(errText, st.errText) {
				t.Errorf("stderr %q lacks %q", errText, st.errText)
			}
		})
	}

	s, err = store.Open(db, store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, listed := s.Lookup(netip.MustParseAddr("192.0.2.7")); listed {
		t.Error("approved request's IP still listed")
	}
	if _, _, listed := s.Lookup(netip.MustParseAddr("192.0.2.8")); !listed {
		t.Error("denied request's IP delisted")
	}
}

// The management commands find the daemon's store or refuse; they never
// make a database somewhere the daemon does not look.
func TestStoreCommandsFindTheStore(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	oldSystem := systemConfig
	t.Cleanup(func() { systemConfig = oldSystem })
	systemConfig = filepath.Join(dir, "etc", "blmilter.toml")

	// No -db, no -config, no system config: refuse, create nothing.
	code, _, errText := storeRun(t, listCmd, "add", "192.0.2.9")
	if code != 1 || !strings.Contains(errText, "which store?") || !strings.Contains(errText, "-db PATH") {
		t.Fatalf("no store named: exit %d, %q", code, errText)
	}
	if _, err := os.Stat(filepath.Join(dir, "blmilter.db")); !os.IsNotExist(err) {
		t.Fatalf("a database was created in the working directory: %v", err)
	}

	// The system config names the store; without -create it is not made.
	db := filepath.Join(dir, "var", "blmilter.db")
	os.MkdirAll(filepath.Dir(db), 0o755)
	os.MkdirAll(filepath.Dir(systemConfig), 0o755)
	writeFile(t, systemConfig, "[store]\npath = \""+db+"\"\n\n[[list]]\nname = \"x\"\nzone = \"bl.example\"\n")
	code, _, errText = storeRun(t, listCmd, "add", "192.0.2.9")
	if code != 1 || !strings.Contains(errText, "no database at "+db) || !strings.Contains(errText, systemConfig) || !strings.Contains(errText, "-create") {
		t.Fatalf("missing store: exit %d, %q", code, errText)
	}
	code, out, errText := storeRun(t, listCmd, "add", "192.0.2.9", "-create")
	if code != 0 || !strings.Contains(out, "listed 192.0.2.9/32") {
		t.Fatalf("add -create: exit %d, %q %q", code, out, errText)
	}
	// The config does not use the store for refusing mail: say so.
	if !strings.Contains(errText, "warning: the site's own list refuses no mail") {
		t.Errorf("no warning about the unused store: %q", errText)
	}
	if code, out, _ := storeRun(t, listCmd, "show"); code != 0 || !strings.Contains(out, "192.0.2.9/32") {
		t.Errorf("show through the system config: exit %d, %q", code, out)
	}

	// A relative [store] path is resolved where the command runs; the
	// message says so rather than creating a database there.
	rel := filepath.Join(dir, "rel.toml")
	writeFile(t, rel, "[store]\npath = \"blmilter.db\"\n\n[[list]]\nname = \"site\"\nstore = true\n")
	code, _, errText = storeRun(t, listCmd, "show", "-config", rel)
	if code != 1 || !strings.Contains(errText, "relative to this command's working directory") {
		t.Errorf("relative path: exit %d, %q", code, errText)
	}

	// Reading commands do not wait for a writer: they open the file
	// read-only, without the write transaction of a migration.
	other, err := sql.Open("sqlite", "file:"+db+"?_pragma=busy_timeout(1000)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	lock, err := other.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback()
	for _, args := range [][]string{{"list", "show"}, {"requests", "list"}} {
		start := time.Now()
		var o, e bytes.Buffer
		if code := run(append(args, "-db", db), &o, &e); code != 0 || time.Since(start) > 3*time.Second {
			t.Errorf("%v while another process writes: exit %d after %v: %s", args, code, time.Since(start), e.String())
		}
	}
}
