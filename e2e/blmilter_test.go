//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/blmilter/blmilter/internal/testkit"
)

// blmilter is the blmilter binary running with a test config.
type blmilter struct {
	p      *proc
	Milter string // "127.0.0.1:port"
	Policy string // "127.0.0.1:port"
	config string // path of the config file
}

// blmilterOpts adjusts the test config.
type blmilterOpts struct {
	DNS        string // rbldnsd's address
	Bin        string // the binary; "" builds ./cmd/blmilter
	WithError  bool   // add the list that answers 127.255.255.254 for everything
	NoPolicyd  bool
	Extra      string // more TOML, appended
	MilterAddr string // listen here instead of a free port ("127.0.0.1:port")
	MilterUnix string // listen on this unix socket instead of TCP
	MilterTOML string // more [milter] lines
	LogLevel   string // default "debug"
	LogFile    bool   // log to a file in the temp dir, not to the test's pipe
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
	b := &blmilter{config: filepath.Join(dir, "blmilter.toml"), Milter: o.MilterAddr}
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
	}
	cfg := fmt.Sprintf(`# blmilter end-to-end test config
[milter]
listen = %q
%s

[policyd]
listen = %q

[web]
listen = ""
public_url = %q

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
`, milterListen, o.MilterTOML, policyd, publicURL, filepath.Join(dir, "blmilter.db"), logLevel, logFile, o.DNS)
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
	return b
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
