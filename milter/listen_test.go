package milter

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// keepAlive reports whether SO_KEEPALIVE is set on c.
func keepAlive(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) }); err != nil || serr != nil {
		t.Fatalf("getsockopt: %v %v", err, serr)
	}
	return v != 0
}

// The stale-socket rules themselves are tested in internal/sockets; these
// check that milter.Listen goes through them.
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
			defer c.Close()
			// The session timeouts end a dead MTA's sessions: no
			// keepalive set up for each connection.
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			if on := keepAlive(t, sc.(*net.TCPConn)); on {
				t.Error("keepalive set on an MTA connection")
			}
		})
	}
	if _, err := Listen("inet:192.0.2.1:1", 0); err == nil || !strings.Contains(err.Error(), "inet:192.0.2.1:1") {
		t.Fatalf("Listen on a foreign address: %v, want an error naming the spec", err)
	}
}
