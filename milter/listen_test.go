package milter

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "milter.sock")

	t.Run("new socket gets the mode", func(t *testing.T) {
		ln, err := Listen("unix:"+path, 0o660)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("mode = %v, want socket 0660", fi.Mode())
		}
		// A second blmilter must not steal the socket of a running one.
		if ln2, err := Listen("unix:"+path, 0o660); err == nil {
			ln2.Close()
			t.Fatal("second Listen on a live socket succeeded")
		} else if !strings.Contains(err.Error(), "another process is listening") {
			t.Fatalf("second Listen: %v", err)
		}
	})

	t.Run("stale socket is replaced", func(t *testing.T) {
		stale := filepath.Join(dir, "stale.sock")
		ln, err := net.Listen("unix", stale)
		if err != nil {
			t.Fatal(err)
		}
		// Leave the file behind as a crashed process would.
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
		if _, err := os.Stat(stale); err != nil {
			t.Fatalf("stale socket not left behind: %v", err)
		}
		ln, err = Listen("local:"+stale, 0o600)
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		defer ln.Close()
		c, err := net.Dial("unix", stale)
		if err != nil {
			t.Fatalf("dial new socket: %v", err)
		}
		c.Close()
	})

	t.Run("regular file is not removed", func(t *testing.T) {
		file := filepath.Join(dir, "not-a-socket")
		if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if ln, err := Listen("unix:"+file, 0o660); err == nil {
			ln.Close()
			t.Fatal("Listen replaced a regular file")
		} else if !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("Listen: %v", err)
		}
		if b, _ := os.ReadFile(file); string(b) != "keep me" {
			t.Fatal("regular file changed")
		}
	})

	t.Run("missing directory", func(t *testing.T) {
		_, err := Listen("unix:"+filepath.Join(dir, "nodir", "m.sock"), 0o660)
		if err == nil || !strings.Contains(err.Error(), "nodir") {
			t.Fatalf("Listen = %v, want error naming the path", err)
		}
	})
}

func TestListenInet(t *testing.T) {
	for _, spec := range []string{"inet:127.0.0.1:0", "inet:0@127.0.0.1", "inet6:[::1]:0", "inet:[::1]:0"} {
		t.Run(spec, func(t *testing.T) {
			ln, err := Listen(spec, 0)
			if err != nil {
				if strings.Contains(spec, "::1") && strings.Contains(err.Error(), "cannot assign") {
					t.Skip("no IPv6 loopback here")
				}
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		})
	}
	if _, err := Listen("inet:192.0.2.1:1", 0); err == nil || !strings.Contains(err.Error(), "inet:192.0.2.1:1") {
		t.Fatalf("Listen on a foreign address: %v, want an error naming the spec", err)
	}
}
