package iplist

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeList writes text to path with a modification time of base+step
// seconds, so each version looks changed whatever the file system's time
// resolution.
func writeList(t *testing.T, path, text string, step int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Date(2026, 1, 1, 0, 0, step, 0, time.UTC)
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}

func category(f *File, ip string) string {
	e, ok := f.Lookup(netip.MustParseAddr(ip))
	if !ok {
		return "-"
	}
	return e.Category
}

func TestFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "local.txt")
	writeList(t, path, "192.0.2.1 zombie\n", 1)
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := category(f, "192.0.2.1"); got != "zombie" {
		t.Fatalf("after OpenFile: %s", got)
	}

	steps := []struct {
		name        string
		write       func()
		wantChanged bool
		wantErr     string // part of the error, "" for none
		stillBad    string // part of Err() afterwards, "" for nil
		want        map[string]string
	}{
		{
			name:  "unchanged file is not read",
			write: func() {},
			want:  map[string]string{"192.0.2.1": "zombie"},
		},
		{
			name:        "new content",
			write:       func() { writeList(t, path, "192.0.2.1 zombie\n198.51.100.0/24 dynamic\n", 2) },
			wantChanged: true,
			want:        map[string]string{"192.0.2.1": "zombie", "198.51.100.9": "dynamic"},
		},
		{
			name:        "same size, new time",
			write:       func() { writeList(t, path, "192.0.2.2 zombie\n198.51.100.0/24 dynamic\n", 3) },
			wantChanged: true,
			want:        map[string]string{"192.0.2.1": "-", "192.0.2.2": "zombie"},
		},
		{
			name:    "broken edit keeps the last good list",
			write:   func() { writeList(t, path, "192.0.2.2 zombie\n198.51.100.0/24 dynamic\n203.0.113.0/33\n", 4) },
			wantErr: path + ":3: bad network",
			want:    map[string]string{"192.0.2.2": "zombie", "198.51.100.9": "dynamic"},
		},
		{
			name:     "the broken version is reported once",
			write:    func() {},
			wantErr:  "",
			stillBad: path + ":3: bad network",
			want:     map[string]string{"192.0.2.2": "zombie"},
		},
		{
			name:        "fixed file is taken",
			write:       func() { writeList(t, path, "203.0.113.0/24 open-proxy\n", 5) },
			wantChanged: true,
			want:        map[string]string{"192.0.2.2": "-", "203.0.113.5": "open-proxy"},
		},
		{
			name: "replaced by rename with the same size and time",
			write: func() {
				tmp := path + ".new"
				writeList(t, tmp, "203.0.113.0/24 zombie-----\n", 5)
				if err := os.Rename(tmp, path); err != nil {
					t.Fatal(err)
				}
			},
			wantChanged: true,
			want:        map[string]string{"203.0.113.5": "zombie-----"},
		},
		{
			name:    "deleted file keeps the last good list",
			write:   func() { os.Remove(path) },
			wantErr: "no such file",
			want:    map[string]string{"203.0.113.5": "zombie-----"},
		},
		{
			name:     "deleted file is reported once",
			write:    func() {},
			stillBad: "no such file",
			want:     map[string]string{"203.0.113.5": "zombie-----"},
		},
		{
			name:        "file back",
			write:       func() { writeList(t, path, "", 6) },
			wantChanged: true,
			want:        map[string]string{"203.0.113.5": "-"},
		},
	}
	for _, st := range steps {
		// Steps depend on each other: stop at the first failure.
		if !t.Run(st.name, func(t *testing.T) {
			st.write()
			changed, err := f.Reload()
			if changed != st.wantChanged {
				t.Errorf("changed = %v, want %v", changed, st.wantChanged)
			}
			switch {
			case st.wantErr == "" && err != nil:
				t.Errorf("Reload: %v", err)
			case st.wantErr != "" && (err == nil || !strings.Contains(err.Error(), st.wantErr) || !strings.Contains(err.Error(), "keeping the previous list")):
				t.Errorf("Reload error %v, want one containing %q and saying the list was kept", err, st.wantErr)
			}
			stillBad := st.stillBad
			if stillBad == "" {
				stillBad = st.wantErr
			}
			if got := f.Err(); (got == nil) != (stillBad == "") || got != nil && !strings.Contains(got.Error(), stillBad) {
				t.Errorf("Err() = %v, want one containing %q", got, stillBad)
			}
			for ip, want := range st.want {
				if got := category(f, ip); got != want {
					t.Errorf("%s: %s, want %s", ip, got, want)
				}
			}
		}) {
			break
		}
	}
}

func TestReloadErrorIsAParseError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.txt")
	writeList(t, path, "192.0.2.1\n", 1)
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeList(t, path, "192.0.2.1\nnope\n", 2)
	_, err = f.Reload()
	var le *LineError
	if !errors.As(err, &le) || le.Line != 2 {
		t.Errorf("Reload error %v does not unwrap to line 2", err)
	}
}

func TestOpenFileErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.txt")
	writeList(t, bad, "192.0.2.1\n192.0.2.1/16\n", 1)
	tests := []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "missing.txt"), "no such file"},
		{"bad line", bad, bad + ":2: 192.0.2.1/16 has bits set"},
		{"directory", dir, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := OpenFile(tt.path)
			if err == nil || f != nil {
				t.Fatalf("OpenFile(%s) = %v, %v; want an error", tt.path, f, err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.path) {
				t.Errorf("error %q, want the path and %q", err, tt.want)
			}
		})
	}
}

func TestLookupDuringReload(t *testing.T) {
	// Under -race: lookups run while the list is swapped.
	path := filepath.Join(t.TempDir(), "l.txt")
	writeList(t, path, "192.0.2.0/24 a\n", 1)
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			ip := netip.MustParseAddr("192.0.2.9")
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, ok := f.Lookup(ip); !ok {
					t.Error("192.0.2.9 missing during reload: a lookup saw a partial list")
					return
				}
			}
		})
	}
	for i := range 50 {
		writeList(t, path, "192.0.2.0/24 a\n"+strings.Repeat("198.51.100.1\n", i), 2+i)
		if _, err := f.Reload(); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}
