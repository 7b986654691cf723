//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
)

// blmilter is the blmilter binary running with a test config.
type blmilter struct {
	p       *proc
	Milter  string // "127.0.0.1:port"
	Policy  string // "127.0.0.1:port"
	Web     string // "http://127.0.0.1:port" with blmilterOpts.Web
	config  string // path of the config file
	db      string // the store
	logFile string // with blmilterOpts.LogFile
}

// blmilterOpts adjusts the test config.
type blmilterOpts struct {
	DNS         string // rbldnsd's address
	Bin         string // the binary; "" builds ./cmd/blmilter
	WithError   bool   // add the list that answers 127.255.255.254 for everything
	NoPolicyd   bool
	Extra       string // more TOML, appended
	MilterAddr  string // listen here instead of a free port ("127.0.0.1:port")
	MilterUnix  string // listen on this unix socket instead of TCP
	MilterTOML  string // more [milter] lines
	LogLevel    string // default "debug"
	LogFile     bool   // log to a file in the temp dir, not to the test's pipe
	Web         bool   // serve the lookup service on a free port
	WebExtra    string // more [web] lines
	PolicyExtra string // more [policy] lines
}

// startBlmilter writes a config for the test lists and runs `blmilter serve`
// until t ends. It logs JSON to its stderr, which the tests read.
func startBlmilter(t testing.TB, o blmilterOpts) *blmilter {
	t.Helper()
	bin := o.Bin
	if bin == "" {
		bin = testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")
	}
	dir := tempDir(t, "blmilter")
	b := &blmilter{config: filepath.Join(dir, "blmilter.toml"), Milter: o.MilterAddr, db: filepath.Join(dir, "blmilter.db")}
	webListen := ""
	if o.Web {
		webListen = "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "tcp"))
		b.Web = "http://" + webListen
	}
	if b.Milter == "" {
		b.Milter = "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "tcp"))
	}
	milterListen := "inet:" + b.Milter
	if o.MilterUnix != "" {
		b.Milter, milterListen = "", "unix:"+o.MilterUnix
	}
	policyd := ""
	if !o.NoPolicyd {
		b.Policy = "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "tcp"))
		policyd = b.Policy
	}
	logLevel, logFile := o.LogLevel, ""
	if logLevel == "" {
		logLevel = "debug"
	}
	if o.LogFile {
		logFile = filepath.Join(dir, "blmilter.log")
		b.logFile = logFile
	}
	cfg := fmt.Sprintf(`# blmilter end-to-end test config
[milter]
listen = %q
%s

[policyd]
listen = %q

[web]
listen = %q
public_url = %q
lookup_rate = 1000
lookup_burst = 1000
%s

[store]
path = %q

[log]
level = %q
format = "json"
file = %q

[dns]
servers = [%q]
timeout = "1s"

[cache]
error_ttl = "0s"

[policy]
threshold = 3
action = "reject"
reject_at = "rcpt"
allow = []
%s
`, milterListen, o.MilterTOML, policyd, webListen, publicURL, o.WebExtra, b.db, logLevel, logFile, o.DNS, o.PolicyExtra)
	cfg += listsTOML(o.WithError) + o.Extra
	writeFile(t, b.config, cfg)

	b.p = startProc(t, bin, "serve", "-config", b.config)
	if o.MilterUnix != "" {
		waitUnix(t, "blmilter milter", o.MilterUnix, b.p)
	} else {
		waitTCP(t, "blmilter milter", b.Milter, b.p)
	}
	if b.Policy != "" {
		waitTCP(t, "blmilter policy server", b.Policy, b.p)
	}
	if b.Web != "" {
		waitTCP(t, "blmilter lookup service", webListen, b.p)
	}
	return b
}

// logSize is how far blmilter's log file has grown.
func (b *blmilter) logSize(t testing.TB) int64 {
	t.Helper()
	fi, err := os.Stat(b.logFile)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// check is one uncached check in blmilter's decision log.
type check struct {
	ip   string
	took time.Duration
}

// checks returns the checks that were not answered from the cache, from
// the decision lines blmilter's log file got after offset, in order.
func (b *blmilter) checks(t testing.TB, offset int64) []check {
	t.Helper()
	data, err := os.ReadFile(b.logFile)
	if err != nil {
		t.Fatal(err)
	}
	var out []check
	for _, l := range lines(string(data[min(offset, int64(len(data))):])) {
		var m struct {
			IP       string  `json:"ip"`
			Cached   *bool   `json:"cached"`
			Duration float64 `json:"duration"` // nanoseconds
		}
		if json.Unmarshal([]byte(l), &m) != nil || m.IP == "" || m.Cached == nil || *m.Cached {
			continue
		}
		out = append(out, check{m.IP, time.Duration(m.Duration)})
	}
	return out
}

// logLine is one JSON line of blmilter's log.
type logLine map[string]any

// logLines returns blmilter's log lines that mention ip.
func (b *blmilter) logLines(ip string) []logLine {
	var out []logLine
	for _, l := range lines(b.p.out.String()) {
		var m logLine
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		if v, _ := m["ip"].(string); v == ip {
			out = append(out, m)
		}
	}
	return out
}

// strs returns a log field that is a list of strings.
func (l logLine) strs(key string) []string {
	var out []string
	if vs, ok := l[key].([]any); ok {
		for _, v := range vs {
			if s, ok := v.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// listErrorLogged reports whether blmilter logged a decision about ip with
// an error from the named list.
func (b *blmilter) listErrorLogged(ip, list string) bool {
	for _, l := range b.logLines(ip) {
		if slices.ContainsFunc(l.strs("errors"), func(e string) bool { return strings.HasPrefix(e, list+":") }) {
			return true
		}
	}
	return false
}

// milterTroubles returns blmilter's log lines about milter connections it
// closed for a protocol error or a timeout. A real MTA must cause none.
func (b *blmilter) milterTroubles() []string {
	var out []string
	for _, l := range lines(b.p.out.String()) {
		var m logLine
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "milter: connection closed" {
			out = append(out, l)
		}
	}
	return out
}

// checkMessagesAndProtocol sends two messages in one SMTP session from a
// clean client through the MTA at addr (Postfix with XCLIENT, Sendmail
// from a local address), and then checks that nothing the MTA sent broke
// blmilter's milter protocol rules.
func checkMessagesAndProtocol(t *testing.T, b *blmilter, addr string, o sessionOpts) {
	t.Run("two messages in one session", func(t *testing.T) {
		o.Messages = 2
		r, err := session(addr, o)
		if err != nil {
			t.Fatal(err)
		}
		if r.Stage != "data" || r.Code != 250 {
			t.Fatalf("clean client sending two messages: got %v, want 250 after DATA", r)
		}
	})
	t.Run("no milter protocol errors", func(t *testing.T) {
		if tr := b.milterTroubles(); len(tr) > 0 {
			t.Errorf("blmilter closed milter connections from a real MTA:\n%s", strings.Join(tr, "\n"))
		}
	})
}
