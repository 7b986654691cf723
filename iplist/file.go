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
	// failed is the file version that last failed to parse, and why; the
	// same version is not read again, but keeps reporting its error.
	failed    os.FileInfo
	failedErr error
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
// or file) since the version in use. On a read or parse error the list in
// use stays and the error, naming the path, is returned; a file version
// that failed keeps returning its error without being read again, until it
// changes. Safe to call concurrently with lookups and with itself.
func (f *File) Reload() (changed bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	if err != nil {
		return false, fmt.Errorf("iplist: reloading %s (keeping the previous list): %w", f.path, err)
	}
	if sameVersion(fi, f.loaded) {
		return false, nil
	}
	if f.failed != nil && sameVersion(fi, f.failed) {
		return false, f.failedErr
	}
	l, rfi, err := f.read()
	if err != nil {
		err = fmt.Errorf("iplist: reloading %s (keeping the previous list): %w", f.path, err)
		if rfi != nil {
			f.failed, f.failedErr = rfi, err
		}
		return false, err
	}
	f.list.Store(l)
	f.loaded = rfi
	f.failed, f.failedErr = nil, nil
	return true, nil
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
