// Package sockets opens the unix sockets blmilter serves on (the milter and
// the policy server): a socket left behind by a crash is removed, but only
// when nothing accepts connections on it, and the new socket gets its mode
// and group.
package sockets

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// ListenUnix listens on the unix socket path. A stale socket file is
// removed first; a live socket or a file that is not a socket is left
// alone and reported. mode, when not 0, is applied to the new socket.
func ListenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on unix:%s: %w", path, err)
	}
	if mode != 0 {
		if err := os.Chmod(path, mode); err != nil {
			ln.Close()
			return nil, fmt.Errorf("set mode %#o on unix:%s: %w", mode, path, err)
		}
	}
	return ln, nil
}

// removeStale removes a socket file that no process listens on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unix:%s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("unix:%s exists and is not a socket; not removing it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("unix:%s: another process is listening on it (is blmilter already running?)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("unix:%s: checking for a stale socket: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket unix:%s: %w", path, err)
	}
	return nil
}
