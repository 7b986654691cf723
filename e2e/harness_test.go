//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
)

// tools are the external programs the suite uses, by name, with where to
// look for them (PATH first, then these places: CI's PATH may lack sbin).
var tools = map[string][]string{
	"postfix":        {"/usr/sbin/postfix"},
	"postconf":       {"/usr/sbin/postconf"},
	"rbldnsd":        {"/usr/sbin/rbldnsd"},
	"nsd":            {"/usr/sbin/nsd"},
	"nsd-checkconf":  {"/usr/sbin/nsd-checkconf"},
	"knotd":          {"/usr/sbin/knotd"},
	"knotc":          {"/usr/sbin/knotc"},
	"kdig":           {"/usr/bin/kdig"},
	"dig":            {"/usr/bin/dig"},
	"dnsperf":        {"/usr/bin/dnsperf"},
	"rspamd":         {"/usr/bin/rspamd"},
	"policyd-weight": {"/usr/sbin/policyd-weight"},
	"m4":             {"/usr/bin/m4"},
	"unshare":        {"/usr/bin/unshare"},
	"ip":             {"/usr/sbin/ip", "/sbin/ip", "/bin/ip"},
	// Debian's sendmail-bin conflicts with postfix, so deps.sh unpacks it
	// beside the system; a sendmail installed as a package works too.
	"sendmail": {"/opt/blmilter-e2e/sendmail/usr/libexec/sendmail/sendmail", "/usr/libexec/sendmail/sendmail", "/usr/lib/sm.bin/sendmail"},
}

// tool returns the path of an external program, or "" when it is missing.
func tool(name string) string {
	if name == "sendmail" {
		if p := os.Getenv("BLMILTER_E2E_SENDMAIL"); p != "" {
			return p
		}
	} else if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range tools[name] {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// need fails t unless this machine can run the end-to-end tests with the
// named tools: a run with -tags e2e skips nothing.
func need(t testing.TB, names ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (Postfix and Sendmail run as root)")
	}
	for _, n := range names {
		if tool(n) == "" {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return
	}
	t.Fatalf("e2e: cannot run here, missing: %s; run e2e/deps.sh as root, or leave out -tags e2e (make unit)",
		strings.Join(missing, ", "))
}

func TestMain(m *testing.M) {
	// Postfix and Sendmail daemonize; as a child subreaper this process
	// inherits their orphans and reaps them below, so no zombie outlives
	// the run even where PID 1 does not reap.
	const prSetChildSubreaper = 36
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)

	if os.Getenv(envNetNS) != "" {
		// Re-executed inside a private network namespace (sendmail_test.go).
		os.Exit(netnsMain(m))
	}

	flag.Parse()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > time.Minute {
			// A -timeout panic runs no cleanups; stop the daemons just before.
			time.AfterFunc(d-20*time.Second, runEmergencyStops)
		}
	}
	code := testkit.Main(m)
	reapOrphans()
	os.Exit(code)
}

// emergencyStops stop the daemons that do not die with this process
// (Postfix detaches from it) if the test binary is about to be killed by
// -timeout.
var emergencyStops struct {
	sync.Mutex
	next int
	fns  map[int]func()
}

// onEmergency registers stop and returns a function that unregisters it.
func onEmergency(stop func()) (unregister func()) {
	emergencyStops.Lock()
	defer emergencyStops.Unlock()
	if emergencyStops.fns == nil {
		emergencyStops.fns = map[int]func(){}
	}
	id := emergencyStops.next
	emergencyStops.next++
	emergencyStops.fns[id] = stop
	return func() {
		emergencyStops.Lock()
		defer emergencyStops.Unlock()
		delete(emergencyStops.fns, id)
	}
}

// emergencyDirs are removed after the emergency stops.
var emergencyDirs sync.Map

func runEmergencyStops() {
	emergencyStops.Lock()
	fns := emergencyStops.fns
	emergencyStops.fns = nil
	emergencyStops.Unlock()
	if len(fns) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: test timeout close: stopping %d service(s)\n", len(fns))
	}
	for _, fn := range fns {
		fn()
	}
	emergencyDirs.Range(func(k, _ any) bool {
		os.RemoveAll(k.(string))
		return true
	})
	testkit.RemoveBinaries()
}

// reapOrphans collects the exit status of every orphan this process
// inherited. Every service was stopped by then; one still running after a
// few seconds is reported.
func reapOrphans() {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		switch {
		case errors.Is(err, syscall.ECHILD):
			return
		case err != nil && !errors.Is(err, syscall.EINTR):
			return
		case pid > 0:
			continue
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "e2e: child processes still running after the tests")
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tempDir makes a directory the mail servers' unprivileged users can enter
// (t.TempDir's parent is 0700) and removes it when t ends.
func tempDir(t testing.TB, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "blmilter-e2e-"+pattern+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	emergencyDirs.Store(dir, true)
	t.Cleanup(func() {
		emergencyDirs.Delete(dir)
		os.RemoveAll(dir)
	})
	return dir
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// proc is a service the test started and stops.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *testkit.Buffer
	done chan struct{}
	err  error // the exit status, once done is closed
}

// startProc starts a program in its own process group and stops it (and
// anything it forked) when t ends. Its output is logged if t failed.
func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: filepath.Base(name), out: &testkit.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	// No Pdeathsig: it follows the OS thread that started the child, which
	// the Go runtime may retire while the test goes on. A -timeout is
	// handled by the emergency stops instead.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	unregister := onEmergency(p.stop)
	t.Cleanup(func() {
		unregister()
		p.stop()
		if t.Failed() {
			t.Logf("output of %s:\n%s", p.name, tail(p.out.String(), 60))
		}
	})
	return p
}

// running reports whether the process has not exited yet.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop ends the process group: SIGTERM, then SIGKILL after a grace time.
func (p *proc) stop() {
	if !p.running() {
		return
	}
	pgid := p.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Children that ignored SIGTERM (the group outlived its leader).
	syscall.Kill(-pgid, syscall.SIGKILL)
}

func tail(s string, lines int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// waitTCP waits until addr accepts TCP connections.
func waitTCP(t testing.TB, what, addr string, p *proc) {
	t.Helper()
	testkit.WaitFor(t, what, 15*time.Second, func() error {
		if p != nil && !p.running() {
			t.Fatalf("%s exited: %v\n%s", what, p.err, tail(p.out.String(), 40))
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// waitUnix waits until the unix socket at path accepts connections.
func waitUnix(t testing.TB, what, path string, p *proc) {
	t.Helper()
	testkit.WaitFor(t, what, 15*time.Second, func() error {
		if p != nil && !p.running() {
			t.Fatalf("%s exited: %v\n%s", what, p.err, tail(p.out.String(), 40))
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// run runs a command to completion and fails t with its output on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := execOut(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// lines splits text into its non-empty lines.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// execOut runs a command to completion and returns its combined output.
func execOut(name string, args ...string) (string, error) {
	return execOutWithin(time.Minute, name, args...)
}

// execOutWithin is execOut with a time limit of d.
func execOutWithin(d time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	f, ok := procStat(strconv.Itoa(pid))
	return ok && (len(f) == 0 || f[0] != "Z")
}

// procStat returns the fields of /proc/PID/stat after "pid (comm)": state
// f[0], ppid f[1], pgrp f[2], utime f[11], stime f[12], cutime f[13],
// cstime f[14]. comm may hold spaces, so they start after the last ')'.
// ok is false when the process is gone.
func procStat(pid string) (f []string, ok bool) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return nil, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, true
	}
	return strings.Fields(string(b[i+1:])), true
}
