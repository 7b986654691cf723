package sockets

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

func TestSetGroup(t *testing.T) {
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Skipf("the process's group has no name here: %v", err)
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := ListenUnix(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, group := range []string{g.Name, g.Gid} {
		if err := SetGroup(path, group); err != nil {
			t.Fatalf("SetGroup(%q): %v", group, err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if gid := fi.Sys().(*syscall.Stat_t).Gid; strconv.Itoa(int(gid)) != g.Gid {
			t.Errorf("SetGroup(%q): gid %d, want %s", group, gid, g.Gid)
		}
	}
	if err := SetGroup(path, "no-such-group-blmilter"); err == nil {
		t.Error("an unknown group was accepted")
	}
}
