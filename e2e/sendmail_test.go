//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
)

// Sendmail has no XCLIENT: the milter sees the TCP peer. blmilter never
// looks up loopback clients, so the Sendmail test runs in a private network
// namespace whose loopback also carries 198.18.0.0/15 (the benchmarking
// network the test clients come from), and its clients bind to those
// addresses. Nothing in that namespace reaches any other network.
const (
	envNetNS       = "BLMILTER_E2E_NETNS"        // set in the re-executed test binary
	envBlmilterBin = "BLMILTER_E2E_BLMILTER_BIN" // the binary built outside
)

// netnsMain prepares the namespaces the test binary was re-executed in.
func netnsMain(m *testing.M) int {
	// Sendmail sleeps a minute at start when it cannot qualify its own host
	// name; the private UTS namespace gets a qualified one.
	if err := syscall.Sethostname([]byte("mta.e2e.test")); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: sethostname:", err)
		return 1
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", "198.18.255.1/15", "dev", "lo"},
	} {
		if out, err := exec.Command(tool("ip"), args...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: ip %s: %v\n%s", strings.Join(args, " "), err, out)
			return 1
		}
	}
	return testkit.Main(m)
}

// sendmailCFDir is where sendmail-cf keeps cf.m4.
const sendmailCFDir = "/usr/share/sendmail/cf"

// startSendmail runs Sendmail as a daemon in the foreground with blmilter
// as its milter, and returns its address.
func startSendmail(t *testing.T, milterAddr string) string {
	t.Helper()
	dir := tempDir(t, "sendmail")
	if err := os.Mkdir(filepath.Join(dir, "mqueue"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "service.switch"), "hosts files\naliases files\n")
	writeFile(t, filepath.Join(dir, "hosts"), "127.0.0.1 localhost mta.e2e.test\n")
	writeFile(t, filepath.Join(dir, "aliases"), "")
	writeFile(t, filepath.Join(dir, "statistics"), "")

	port := testkit.FreePort(t, "tcp")
	_, milterPort, _ := strings.Cut(milterAddr, ":")
	tmpl, err := os.ReadFile(filepath.Join("testdata", "sendmail.mc"))
	if err != nil {
		t.Fatal(err)
	}
	mc := strings.NewReplacer("@DIR@", dir, "@PORT@", strconv.Itoa(port), "@CFDIR@", sendmailCFDir).Replace(string(tmpl)) +
		contribSnippet(t, "sendmail/blmilter.mc", "S=inet:8895@127.0.0.1", "S=inet:"+milterPort+"@127.0.0.1") +
		"MAILER(`smtp')dnl\n"
	writeFile(t, filepath.Join(dir, "sendmail.mc"), mc)
	cf := run(t, tool("m4"), filepath.Join(dir, "sendmail.mc"))
	if !strings.Contains(cf, "Xblmilter, S=inet:"+milterPort+"@127.0.0.1") {
		t.Fatalf("generated sendmail.cf has no blmilter filter:\n%s", tail(cf, 30))
	}
	writeFile(t, filepath.Join(dir, "sendmail.cf"), cf)

	addr := "127.0.0.1:" + strconv.Itoa(port)
	// -bD: run as a daemon, in the foreground.
	p := startProc(t, tool("sendmail"), "-bD", "-C", filepath.Join(dir, "sendmail.cf"))
	waitTCP(t, "sendmail", addr, p)
	return addr
}

// sendmailCases run through Sendmail from bound client addresses.
var sendmailCases = []mtaCase{
	{"listed spam source", clientSpam, "", 550, "spam-source"},
	{"listed zombie", clientZombie, "", 550, "zombie"},
	{"unlisted", clientClean, "", 250, ""},
	{"postmaster from listed", clientSpam, "postmaster@e2e.test", 250, ""},
	{"allow-listed and block-listed", clientAllowed, "", 250, ""},
}

func TestSendmail(t *testing.T) {
	if os.Getenv(envNetNS) == "" {
		need(t, "sendmail", "m4", "unshare", "ip", "rbldnsd")
		if _, err := os.Stat(filepath.Join(sendmailCFDir, "m4", "cf.m4")); err != nil {
			need(t, "sendmail-cf") // reports it missing
		}
		bin := testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")
		runInNetNS(t, bin)
		return
	}

	dns := startRbldnsd(t)
	b := startBlmilter(t, blmilterOpts{DNS: dns, Bin: os.Getenv(envBlmilterBin), NoPolicyd: true})
	addr := startSendmail(t, b.Milter)
	for _, c := range sendmailCases {
		var failed error
		t.Run(c.name, func(t *testing.T) {
			r, err := session(addr, sessionOpts{Local: c.client, Rcpt: c.rcpt})
			if err != nil {
				failed = err
				t.Fatalf("session from %s: %v", c.client, err)
			}
			t.Logf("%s rcpt %s: %v", c.client, c.rcpt, r)
			checkReply(t, c, r)
		})
		stopIfNoReply(t, failed)
	}
	checkMessagesAndProtocol(t, b, addr, sessionOpts{Local: clientClean})
	// F=T in contrib/sendmail/blmilter.mc: with blmilter gone, Sendmail
	// tempfails instead of accepting unchecked mail.
	t.Run("blmilter stopped: tempfail (F=T)", func(t *testing.T) {
		b.p.stop()
		r, err := session(addr, sessionOpts{Local: clientClean})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s with blmilter stopped: %v", clientClean, r)
		if r.Code/100 != 4 {
			t.Fatalf("with blmilter stopped and F=T: got %v, want a 4xx reply", r)
		}
	})
}

// runInNetNS re-executes this test in new network and UTS namespaces (and
// the extra ones named, such as "--mount") and reports its outcome as t's.
func runInNetNS(t *testing.T, blmilterBin string, extra ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := append(append([]string{"--net", "--uts"}, extra...), "--",
		os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout=3m")
	cmd := exec.CommandContext(ctx, tool("unshare"), args...)
	cmd.Env = append(os.Environ(), envNetNS+"=1", envBlmilterBin+"="+blmilterBin)
	out, err := cmd.CombinedOutput()
	text := string(out)
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, "--- ") || strings.Contains(l, "sendmail_test.go:") || strings.Contains(l, "fleet_test.go:") {
			t.Log(strings.TrimSpace(l))
		}
	}
	if err != nil {
		t.Fatalf("%s in a private network namespace: %v\n%s", t.Name(), err, tail(text, 120))
	}
	if !strings.Contains(text, "--- PASS: "+t.Name()) {
		t.Fatalf("%s did not pass in its network namespace:\n%s", t.Name(), tail(text, 120))
	}
}
