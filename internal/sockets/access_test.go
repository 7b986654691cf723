package sockets

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/blmilter/blmilter/internal/testkit"
)

// The check agrees with a real client of the group: where Access says the
// group can reach the socket, a process of that group connects, and where
// it names a problem, the process is refused.
func TestAccessAgreesWithARealClient(t *testing.T) {
	group, gid := testkit.Group(t)
	root := filepath.Join(testkit.OpenDir(t), "spool")
	if err := os.Mkdir(root, 0o700); err != nil { // root's: nobody else may enter
		t.Fatal(err)
	}
	sockDir := filepath.Join(root, "blmilter")
	path := filepath.Join(sockDir, "milter.sock")

	// Before anything exists: the temp dir shuts the group out.
	if err := Access(path, group, 0o660); err == nil || !strings.Contains(err.Error(), root+" (") {
		t.Fatalf("Access through a 0700 directory = %v, want it named", err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Access(path, group, 0o600); err == nil || !strings.Contains(err.Error(), "no write access") {
		t.Fatalf("Access with socket mode 0600 = %v, want the mode named", err)
	}
	if err := Access(path, group, 0o660); err != nil {
		t.Fatalf("Access before start, as blmilter will make it: %v", err)
	}

	// What serve does: the directory, the socket, its group.
	if err := PrepareDir(path, group); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sockDir)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != DirMode || int(st.Gid) != gid || int(st.Uid) != os.Getuid() {
		t.Fatalf("created directory: %v uid %d gid %d, want %v uid %d gid %d", fi.Mode().Perm(), st.Uid, st.Gid, DirMode, os.Getuid(), gid)
	}
	ln, err := ListenUnix(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	// The socket still has root's group: the check and the client agree.
	if err := Access(path, group, 0o660); err == nil || !strings.Contains(err.Error(), "not writable by group") {
		t.Errorf("Access of a root:root 0660 socket = %v, want not writable", err)
	}
	if err := testkit.DialUnixAs(path, gid); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("client of the group connected to a root:root socket: %v", err)
	}

	if err := SetGroup(path, group); err != nil {
		t.Fatal(err)
	}
	if err := Access(path, group, 0o660); err != nil {
		t.Errorf("Access with the socket's group set: %v", err)
	}
	if err := testkit.DialUnixAs(path, gid); err != nil {
		t.Errorf("client of the group: %v", err)
	}

	// The directory made unsearchable for the group: both notice.
	if err := os.Chmod(sockDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Access(path, group, 0o660); err == nil || !strings.Contains(err.Error(), sockDir+" (") {
		t.Errorf("Access through a 0700 socket directory = %v, want it named", err)
	}
	if err := testkit.DialUnixAs(path, gid); err == nil {
		t.Error("client connected through a 0700 directory")
	}
}

// A directory owned by a member of the group (Postfix's private/, owned by
// the postfix user, mode 0700) lets that member through.
func TestAccessOwnerInGroup(t *testing.T) {
	group, gid := testkit.Group(t)
	dir := testkit.OpenDir(t)
	passwd := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(passwd, fmt.Appendf(nil, "mta:x:4242:%d::/:/bin/false\n", gid), 0o644); err != nil {
		t.Fatal(err)
	}
	old := passwdFile
	passwdFile = passwd
	t.Cleanup(func() { passwdFile = old })
	private := filepath.Join(dir, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(private, "blmilter")
	if err := Access(path, group, 0o660); err == nil {
		t.Fatal("a root-owned 0700 directory passed")
	}
	if err := os.Chown(private, 4242, 0); err != nil {
		t.Fatal(err)
	}
	if err := Access(path, group, 0o660); err != nil {
		t.Errorf("a 0700 directory owned by a member of the group: %v", err)
	}
}

func TestPrepareDir(t *testing.T) {
	dir := t.TempDir()
	t.Run("existing directory left alone", func(t *testing.T) {
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := PrepareDir(filepath.Join(dir, "s.sock"), ""); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o711 {
			t.Errorf("mode changed to %v", fi.Mode().Perm())
		}
	})
	t.Run("one level only", func(t *testing.T) {
		err := PrepareDir(filepath.Join(dir, "a", "b", "s.sock"), "")
		if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "a")) {
			t.Fatalf("PrepareDir two levels down = %v", err)
		}
	})
	t.Run("unknown group", func(t *testing.T) {
		err := PrepareDir(filepath.Join(dir, "g", "s.sock"), "no-such-group-blmilter")
		if err == nil || !strings.Contains(err.Error(), "no-such-group-blmilter") {
			t.Fatalf("PrepareDir with an unknown group = %v", err)
		}
	})
	t.Run("a file in the way", func(t *testing.T) {
		f := filepath.Join(dir, "file")
		os.WriteFile(f, nil, 0o600)
		if err := PrepareDir(filepath.Join(f, "s.sock"), ""); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatalf("PrepareDir under a file = %v", err)
		}
	})
}
