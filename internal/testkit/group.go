package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"testing"
)

// Group creates a real group for the test and removes it when the test
// ends; the test is skipped unless it runs as root with groupadd, setpriv
// and perl (DialUnixAs needs the last two).
func Group(t testing.TB) (name string, gid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a group and run a client as another user")
	}
	for _, tool := range []string{"groupadd", "groupdel", "setpriv", "perl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	for i := 0; ; i++ {
		name = fmt.Sprintf("blmt%d%d", os.Getpid()%100000, i)
		out, err := exec.Command("groupadd", name).CombinedOutput()
		if err == nil {
			break
		}
		if i == 9 {
			t.Fatalf("groupadd %s: %v\n%s", name, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("groupdel", name).Run() })
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	gid, _ = strconv.Atoi(g.Gid)
	return name, gid
}

// DialUnixAs connects to the unix socket at path from a process running as
// nobody (uid 65534) in group gid alone, as an MTA of that group would, and
// reports why it could not.
func DialUnixAs(path string, gid int) error {
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid="+strconv.Itoa(gid), "--clear-groups",
		"perl", "-MIO::Socket::UNIX", "-e",
		`IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $ARGV[0]) or die "connect: $!\n"`, path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// OpenDir is a temp directory every user may enter (t.TempDir's parent is
// root's alone), removed when the test ends.
func OpenDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "blmilter-open-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}
