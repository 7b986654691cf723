//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
)

// policydWeight is policyd-weight from the Debian package, the Perl policy
// server blmilter's policy server is compared with. It runs with a config of
// its own that keeps only its DNS list checks, on the same three test lists
// as blmilter's load config, with the same weights:
//
//   - $dnsbl_checks_only = 1: it answers right after the lists, so none of
//     its HELO, reverse DNS, MX or sender checks runs (they would also send
//     queries that rbldnsd, serving only the test zones, refuses). Its RHSBL
//     list is emptied too.
//   - In that mode it refuses only through its immediate DNSBL limit:
//     $MAXDNSBLSCORE, the sum of the positive weights of the lists that
//     listed the client, above which it answers $MAXDNSBLMSG. At 3 (strictly
//     above) it refuses what blmilter refuses at its threshold 3 (at or
//     above) with these weights (4 and 1). It stops asking at the first list
//     that takes the sum over the limit, as it does in production.
//   - What cannot be made the same: an allow list's negative weight is not
//     subtracted from that sum, so a client on both the block list and the
//     allow list is refused, where blmilter accepts it. No client of the
//     load comparison is on the allow list; the allow list is still asked
//     for every client it gets to, as by blmilter.
//   - What stays on, as in production: its cache process (a listed client
//     is refused from it when it comes back; a clean one is asked about
//     afresh each time, since in this mode it caches no pass), a syslog
//     line per decision (two for a refusal), a look at the config file's
//     time every fifth request, and its reply's link to robtex.com. It
//     answers DUNNO, not PREPEND, as blmilter does.
//
// Its list lookups go to port 53 of the first address in $NS, with no way
// to give another port (only its slower Net::DNS path, forced with
// $USE_NET_DNS, would take one from RES_OPTIONS, and measuring that would
// not be fair to it), so rbldnsd serves the same zone files on port 53 of
// a loopback address of its own (startRbldnsdPort53). It runs in the
// foreground (-D start), as the Debian package's user polw, with its pid
// file, cache socket and lock directory in the test's temp dir, and logs to
// a syslog socket there that the test reads. Its cache process leaves the
// process group (setsid), so the whole program runs in a PID namespace of
// its own (unshare --pid --fork --kill-child): when its master exits, the
// kernel ends the cache too, and stopping the process group stops all.
type policydWeight struct {
	p    *proc
	Addr string          // its policy service, "127.0.0.1:port"
	log  *testkit.Buffer // the lines it sent to syslog
}

// startPolicydWeight runs policyd-weight against the test lists served on
// port 53 of dnsHost, until t ends.
func startPolicydWeight(t testing.TB, dnsHost string) *policydWeight {
	t.Helper()
	dir := tempDir(t, "policyd-weight")
	pw := &policydWeight{
		Addr: "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "tcp")),
		log:  &testkit.Buffer{},
	}
	logSock := filepath.Join(dir, "log")
	listenSyslog(t, logSock, pw.log)
	_, port, _ := net.SplitHostPort(pw.Addr)
	conf := fmt.Sprintf(`# policyd-weight for blmilter's load comparison: its DNS list checks only
$dnsbl_checks_only = 1;
@dnsbl_score = (
#   HOST, HIT SCORE, MISS SCORE, LOG NAME
    %[1]q,  4,   0, 'E2E_BL',
    %[2]q, -10,  0, 'E2E_WL',
    %[3]q,  1,   0, 'E2E_DYN',
);
@rhsbl_score = ();
$MAXDNSBLSCORE = 3;
$MAXDNSBLMSG = '550 5.7.1 Listed by a DNS block list';
$CACHEREJECTMSG = '550 5.7.1 Listed by a DNS block list [cached]';
$ADD_X_HEADER = 0;
$NS = %[4]q;
$BIND_ADDRESS = '127.0.0.1';
$TCP_PORT = %[5]s;
$LOCKPATH = '%[6]s/run/';
$SPATH = $LOCKPATH.'polw.sock';
$PIDFILE = '%[6]s/policyd-weight.pid';
$syslog_socktype = { type => 'unix', path => %[7]q };
`, zoneBlock, zoneAllow, zoneDyn, dnsHost, port, dir, logSock)
	cfg := filepath.Join(dir, "policyd-weight.conf")
	writeFile(t, cfg, conf) // 0644: it refuses a config others may write
	pw.p = startProc(t, tool("unshare"), "--pid", "--fork", "--kill-child", "--",
		tool("policyd-weight"), "-D", "-f", cfg, "start")
	waitTCP(t, "policyd-weight", pw.Addr, pw.p)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("policyd-weight's log:\n%s", tail(pw.log.String(), 60))
		}
	})
	return pw
}

// listenSyslog receives syslog datagrams on a unix socket at path, as
// /dev/log would, and keeps their lines in buf until t ends.
func listenSyslog(t testing.TB, path string, buf *testkit.Buffer) {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	// The daemon writes to it after it has dropped its privileges.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 64<<10)
		for {
			n, err := conn.Read(b)
			if err != nil {
				return
			}
			buf.Write(append(bytes.TrimRight(b[:n], "\x00\r\n "), '\n'))
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
}

// TestPolicydWeightComparable checks the policy server comparison's other
// side: through Postfix, as the load comparison reaches it, policyd-weight
// asks the test lists and refuses a listed client at RCPT, and lets a clean
// one through. Without this, a policyd-weight that did not judge (a DNS
// mistake ends in DUNNO) would answer fast and win.
func TestPolicydWeightComparable(t *testing.T) {
	need(t, "postfix", "rbldnsd", "policyd-weight", "unshare")
	pw := startPolicydWeight(t, startRbldnsdPort53(t))
	pf := startPostfix(t, postfixOpts{Policy: "inet:" + pw.Addr})
	tests := []struct {
		name string
		ip   string
		want int
	}{
		{"listed by bl and pbl (cold rows)", "198.18.200.1", 550},
		{"listed by bl (warm pool)", "198.19.0.5", 550},
		{"listed by bl, again (from its cache)", "198.19.0.5", 550},
		{"in no list (cold rows)", "198.19.200.1", 250},
		{"in no list (warm pool)", "198.19.0.100", 250},
	}
	for _, tt := range tests {
		var failed error
		t.Run(tt.name, func(t *testing.T) {
			r, err := session(pf.Addr, sessionOpts{XClient: tt.ip})
			if err != nil {
				failed = err
				t.Fatalf("session from %s: %v", tt.ip, err)
			}
			if r.Stage != "rcpt" || r.Code != tt.want {
				t.Fatalf("client %s: got %v, want %d at RCPT", tt.ip, r, tt.want)
			}
		})
		stopIfNoReply(t, failed)
	}
	// Its refusal came from the block list, not from some other check.
	testkit.WaitFor(t, "policyd-weight's decision about a listed client in its log", 5*time.Second, func() error {
		for _, l := range lines(pw.log.String()) {
			if strings.Contains(l, "IN_E2E_BL=4") && strings.Contains(l, "[198.18.200.1]") {
				return nil
			}
		}
		return fmt.Errorf("no line with IN_E2E_BL=4 for 198.18.200.1 in:\n%s", tail(pw.log.String(), 20))
	})
}
