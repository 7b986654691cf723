//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/internal/testkit"
)

// rspamd is an rspamd from the Debian package, running with a config of its
// own for the load comparison: only its RBL module, on the same test lists
// and the same rbldnsd as blmilter, reached over the milter protocol through
// its proxy worker (milter = yes, self_scan: the proxy scans the message
// itself). Nothing else runs: no C filters (filters = ""), no Lua rules, no
// Redis, no controller; the other Lua plugins stay off because they have no
// configuration. The rbl checks the client address only ("from"), as
// blmilter does, and a listing in the block list is a reject, as in
// blmilter's config.
type rspamd struct {
	p      *proc
	Milter string // "127.0.0.1:port"
}

func startRspamd(t testing.TB, dnsAddr string) *rspamd {
	t.Helper()
	bin := tool("rspamd")
	dir := tempDir(t, "rspamd")
	r := &rspamd{Milter: "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "tcp"))}
	// The public suffix list is only for URLs, which nothing here checks; a
	// one-line list spares compiling 9,000 suffixes at every start.
	writeFile(t, filepath.Join(dir, "tld.dat"), "test\n")
	conf := fmt.Sprintf(`# rspamd for the blmilter load comparison: the RBL module only
options {
	pidfile = "%[1]s/rspamd.pid";
	filters = "";
	dns {
		nameserver = [%[2]q];
		timeout = 1s;
		retransmits = 2;
	}
	local_addrs = [];
	cache_file = "%[1]s/symbols.cache";
	history_file = "%[1]s/rspamd.history";
	hs_cache_dir = "%[1]s";
	tempdir = "%[1]s";
	url_tld = "%[1]s/tld.dat";
	task_timeout = 8s;
}
logging {
	type = "file";
	filename = "%[1]s/rspamd.log";
	level = "info";
}
worker "rspamd_proxy" {
	bind_socket = %[3]q;
	milter = yes;
	timeout = 120s;
	upstream "local" {
		default = yes;
		self_scan = yes;
	}
	count = %[4]d;
}
modules {
	path = "/usr/share/rspamd/plugins";
}
actions {
	reject = 15;
	add_header = 6;
	greylist = 4;
}
group "e2e" {
	symbols {
		"E2E_BL" { score = 20.0; }
		"E2E_WL" { score = -10.0; }
		"E2E_DYN" { score = 1.0; }
	}
}
rbl {
	rbls {
		e2e_block {
			symbol = "E2E_BL";
			rbl = %[5]q;
			checks = ["from"];
		}
		e2e_allow {
			symbol = "E2E_WL";
			rbl = %[6]q;
			checks = ["from"];
			ipv6 = false;
		}
		e2e_dynamic {
			symbol = "E2E_DYN";
			rbl = %[7]q;
			checks = ["from"];
		}
	}
}
`, dir, dnsAddr, r.Milter, runtime.NumCPU(), zoneBlock, zoneAllow, zoneDyn)
	cfg := filepath.Join(dir, "rspamd.conf")
	writeFile(t, cfg, conf)
	// -f: foreground, so the test owns the process group; root, since the
	// tests run as root and the config dir is theirs.
	r.p = startProc(t, bin, "-f", "-u", "root", "-g", "root", "-c", cfg)
	waitTCP(t, "rspamd milter", r.Milter, r.p)
	return r
}

// TestRspamdComparable checks the comparison's other side: rspamd asks the
// test lists and refuses a listed client at the end of the message, and
// lets a clean one through. Without this, a misconfigured rspamd would
// accept everything cheaply and win.
func TestRspamdComparable(t *testing.T) {
	need(t, "rbldnsd", "rspamd")
	r := startRspamd(t, startRbldnsd(t))
	tests := []struct {
		ip     string
		reject bool
	}{
		{"198.18.200.1", true},
		{"198.19.200.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			act := milterMessage(t, r.Milter, tt.ip)
			refused := act.Code == gomilter.ActReject || (act.Code == gomilter.ActReplyCode && act.SMTPCode >= 500)
			if refused != tt.reject {
				t.Errorf("rspamd answered %c %d %q for %s, want reject=%v", act.Code, act.SMTPCode, act.SMTPText, tt.ip, tt.reject)
			}
		})
	}
}

// milterMessage sends one message from ip through the milter at addr and
// returns the milter's last answer. Each step has milterStepTimeout (longer
// than rspamd's task_timeout), so a filter that stops answering fails the
// test instead of holding it until the suite's -timeout.
func milterMessage(t *testing.T, addr, ip string) *gomilter.Action {
	t.Helper()
	const milterStepTimeout = 15 * time.Second
	c := gomilter.NewClientWithOptions("tcp", addr, gomilter.ClientOptions{
		Dialer:       &net.Dialer{Timeout: milterStepTimeout},
		ReadTimeout:  milterStepTimeout,
		WriteTimeout: milterStepTimeout,
		ActionMask:   gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
		ProtocolMask: gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoMailFrom | gomilter.OptNoRcptTo | gomilter.OptNoBody | gomilter.OptNoHeaders | gomilter.OptNoEOH,
	})
	s, err := c.Session()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	steps := []func() (*gomilter.Action, error){
		func() (*gomilter.Action, error) { return s.Conn("["+ip+"]", gomilter.FamilyInet, 40000, ip) },
		func() (*gomilter.Action, error) { return s.Helo("client.e2e.test") },
		func() (*gomilter.Action, error) { return s.Mail("sender@e2e.test", nil) },
		func() (*gomilter.Action, error) { return s.Rcpt("user@e2e.test", nil) },
		func() (*gomilter.Action, error) { return s.HeaderField("Subject", "test") },
		func() (*gomilter.Action, error) { return s.HeaderEnd() },
		func() (*gomilter.Action, error) { return s.BodyChunk([]byte("test\r\n")) },
		func() (*gomilter.Action, error) { _, act, err := s.End(); return act, err },
	}
	var act *gomilter.Action
	for _, step := range steps {
		if act, err = step(); err != nil {
			t.Fatal(err)
		}
		if act.Code != gomilter.ActContinue {
			break
		}
	}
	return act
}
