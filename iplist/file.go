package iplist

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
)

// File is a list file that keeps its last good version: lookups always
// see a complete list, and a broken edit never empties it.
type File struct {
	path string
	list atomic.Pointer[List]

	mu     sync.Mutex  // serialises Reload
	loaded os.FileInfo // of the file version in list
	// failed is the file version that last failed to parse; it is not
	// read again until it changes.
	failed os.FileInfo
	// missing: the last Reload could not stat the file (already reported).
	missing bool
	// problem is why the list in use is not the file on disk (nil when
	// it is).
	problem atomic.Pointer[error]
}

// OpenFile reads and parses the list at path. Unlike Reload it has no
// earlier version to fall back on, so any error is returned.
func OpenFile(path string) (*File, error) {
	f := &File{path: path}
	l, fi, err := f.read()
	if err != nil {
		return nil, fmt.Errorf("iplist: loading %s: %w", path, err)
	}
	f.list.Store(l)
	f.loaded = fi
	return f, nil
}

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// List returns the current list; it is never nil.
func (f *File) List() *List { return f.list.Load() }

// Lookup looks ip up in the current list.
func (f *File) Lookup(ip netip.Addr) (Entry, bool) { return f.list.Load().Lookup(ip) }

// Reload re-reads the file if it changed (another size, modification time
// or file) since the version last read. On a read or parse error the list
// in use stays and the error, naming the path and every bad line, is
// returned. A version that failed to parse, or a file that has gone, is
// reported once, not again on every later Reload, so that a caller polling
// the file logs one warning per broken edit; Err tells whether the problem
// persists. Safe to call concurrently with lookups and with itself.
func (f *File) Reload() (changed bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	if err != nil {
		if f.missing {
			return false, nil // reported already
		}
		f.missing = true
		return false, f.fail(err)
	}
	f.missing = false
	if sameVersion(fi, f.loaded) {
		f.problem.Store(nil) // back to the version in use
		return false, nil
	}
	if sameVersion(fi, f.failed) {
		return false, nil
	}
	l, rfi, err := f.read()
	if err != nil {
		f.failed = rfi // nil unless that version is known to be bad
		return false, f.fail(err)
	}
	f.list.Store(l)
	f.loaded, f.failed = rfi, nil
	f.problem.Store(nil)
	return true, nil
}

func (f *File) fail(err error) error {
	err = fmt.Errorf("iplist: reloading %s (keeping the previous list): %w", f.path, err)
	f.problem.Store(&err)
	return err
}

// Err returns the error of the last Reload that could not take the file
// on disk, or nil once the list in use matches the file again.
func (f *File) Err() error {
	if p := f.problem.Load(); p != nil {
		return *p
	}
	return nil
}

// read parses the file and returns the FileInfo of the version read, taken
// from the open file so it describes what was parsed. A file that changes
// while being read is an error with no FileInfo, so the next Reload tries
// again rather than trusting a half-written version.
func (f *File) read() (*List, os.FileInfo, error) {
	fd, err := os.Open(f.path)
	if err != nil {
		return nil, nil, err
	}
	defer fd.Close()
	before, err := fd.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !before.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s is not a regular file", f.path)
	}
	l, err := Parse(fd, f.path)
	if err != nil {
		var perr *ParseError
		if errors.As(err, &perr) {
			return nil, before, err // this version is bad: no need to read it again
		}
		return nil, nil, err
	}
	after, err := fd.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !sameVersion(before, after) {
		return nil, nil, fmt.Errorf("%s changed while being read; will read it again", f.path)
	}
	return l, before, nil
}

// sameVersion: same file (not replaced by a rename), size and mtime.
func sameVersion(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
