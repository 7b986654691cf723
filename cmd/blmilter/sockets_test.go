package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
)

// The chroot recipe as a real group meets it: serve makes the milter's
// missing socket directory for the group and gives the socket the group,
// so a process of that group connects; the policy socket in a directory
// the group cannot enter is reported loudly, by config check and in the
// log, and that process is indeed refused.
func TestUnixSocketsReachTheMTAGroup(t *testing.T) {
	group, gid := testkit.Group(t)
	spool := filepath.Join(testkit.OpenDir(t), "spool")
	private := filepath.Join(spool, "private")
	for _, d := range []string{spool, private} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(private, 0o700); err != nil { // root's own, as a careless admin made it
		t.Fatal(err)
	}
	milterSock := filepath.Join(spool, "blmilter", "milter.sock")
	policySock := filepath.Join(private, "blmilter")
	s := dnstest.Start(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "blmilter.toml")
	writeFile(t, cfgPath, fmt.Sprintf(`[milter]
listen = "unix:%s"
socket_group = %q

[policyd]
listen = "unix:%s"
socket_group = %q

[web]
listen = ""
public_url = "https://lookup.example.org"

[store]
path = %q

[log]
format = "json"

[dns]
servers = [%q]

[[list]]
name = "BL"
zone = "bl.test"
health = false
`, milterSock, group, policySock, group, filepath.Join(dir, "blmilter.db"), s.Addr))

	// config check, as root on this machine, sees the problem first.
	code, out, errs := runCLI("config", "check", cfgPath)
	if code != 1 || !strings.Contains(errs, "policyd.socket_group") || !strings.Contains(errs, private+" (") || strings.Contains(errs, "milter.socket_group") {
		t.Errorf("config check: exit %d\nstdout: %s\nstderr: %s\nwant exit 1 naming policyd.socket_group and %s only", code, out, errs, private)
	}

	d := startServe(t, cfgPath)
	testkit.WaitFor(t, "blmilter started", 20*time.Second, func() error {
		return testkit.Unless(strings.Contains(d.log.String(), `"msg":"blmilter started"`), "log:\n%s", d.log.String())
	})

	fi, err := os.Stat(filepath.Dir(milterSock))
	if err != nil {
		t.Fatalf("the milter's socket directory was not created: %v", err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o750 || int(st.Gid) != gid {
		t.Errorf("socket directory %v gid %d, want 0750 gid %d", fi.Mode().Perm(), st.Gid, gid)
	}
	for _, sock := range []string{milterSock, policySock} {
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o660 || int(st.Gid) != gid {
			t.Errorf("%s: %v gid %d, want 0660 gid %d", sock, fi.Mode().Perm(), st.Gid, gid)
		}
	}
	if err := testkit.DialUnixAs(milterSock, gid); err != nil {
		t.Errorf("a process of group %s cannot reach the milter: %v", group, err)
	}
	if err := testkit.DialUnixAs(policySock, gid); err == nil {
		t.Error("a process of the group reached the policy socket through a 0700 directory; the test's premise is wrong")
	}
	log := d.log.String()
	var errorLines []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `"level":"ERROR"`) {
			errorLines = append(errorLines, l)
		}
	}
	if len(errorLines) != 1 || !strings.Contains(errorLines[0], `"server":"policyd"`) || !strings.Contains(errorLines[0], "mail will pass unfiltered") ||
		!strings.Contains(errorLines[0], private) {
		t.Errorf("want one ERROR line about the policy socket, got %d:\n%s", len(errorLines), strings.Join(errorLines, "\n"))
	}

	// Fixed as the README says (the directory belongs to the MTA's group),
	// config check is content.
	if err := os.Chown(private, -1, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(private, 0o750); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runCLI("config", "check", cfgPath); code != 0 {
		t.Errorf("config check after the fix: exit %d\n%s%s", code, out, errs)
	}
	if err := testkit.DialUnixAs(policySock, gid); err != nil {
		t.Errorf("after the fix, the policy socket: %v", err)
	}
}
