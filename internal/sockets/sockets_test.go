package sockets

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	t.Run("new socket gets its mode", func(t *testing.T) {
		path := filepath.Join(dir, "new.sock")
		ln, err := ListenUnix(path, 0o640)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o640 {
			t.Fatalf("mode %v, %v", fi.Mode(), err)
		}
	})
	t.Run("stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		old, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		// Leave the file behind, as a crash would.
		old.(*net.UnixListener).SetUnlinkOnClose(false)
		old.Close()
		ln, err := ListenUnix(path, 0)
		if err != nil {
			t.Fatalf("stale socket not replaced: %v", err)
		}
		ln.Close()
	})
	t.Run("live socket is left alone", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		live, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		if _, err := ListenUnix(path, 0); err == nil || !strings.Contains(err.Error(), "another process") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("regular file is left alone", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ListenUnix(path, 0); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("err = %v", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "keep me" {
			t.Fatal("file changed")
		}
	})
}
