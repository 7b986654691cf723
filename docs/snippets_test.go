package docs_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/internal/testkit"
)

func TestMain(m *testing.M) { os.Exit(testkit.Main(m)) }

// The repository root, from docs/.
const root = ".."

// A snippet is a piece of configuration an admin pastes or copies: a fenced
// block in the README or a manual, whose info string names its kind
// (```main.cf, ```master.cf, ```sendmail-mc, ```toml), or a file under
// contrib/ or examples/ (main.cf.*, master.cf.*, *.mc, *.toml).
type snippet struct {
	where string // file:line of the block, or the file
	kind  string
	text  string
	file  string // a file checked where it is (its list files beside it); "" for a block
}

const (
	kindMainCF   = "main.cf"
	kindMasterCF = "master.cf"
	kindMC       = "sendmail-mc"
	kindTOML     = "toml"
)

// TestSnippets checks every snippet with the real tool, as an admin would
// use it: Postfix's postconf on a scratch config directory (no warning, and
// every value one Postfix can use), m4 with Sendmail's cf files (no error,
// and the milter definition arrives whole in sendmail.cf), and "blmilter
// config check" for TOML.
func TestSnippets(t *testing.T) {
	snippets, unmarked := collectSnippets(t)
	for _, u := range unmarked {
		t.Error(u)
	}
	counts := map[string]int{}
	for _, s := range snippets {
		counts[s.kind]++
	}
	// The README alone has blocks of each of these; finding none means the
	// collection is broken, not that all is well.
	for _, k := range []string{kindMainCF, kindMC, kindTOML} {
		if counts[k] == 0 {
			t.Fatalf("no %s snippet found", k)
		}
	}
	t.Logf("snippets: %v", counts)

	var blmilter string
	for _, s := range snippets {
		t.Run(s.where, func(t *testing.T) {
			if s.kind == kindTOML && blmilter == "" {
				blmilter = testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")
			}
			for _, p := range check(t, s, blmilter) {
				t.Error(p)
			}
		})
	}
}

// check returns what is wrong with a snippet.
func check(t *testing.T, s snippet, blmilter string) []string {
	switch s.kind {
	case kindMainCF:
		return checkMainCF(t, s)
	case kindMasterCF:
		return checkMasterCF(t, s)
	case kindMC:
		return checkSendmailMC(t, s)
	case kindTOML:
		return checkTOML(t, blmilter, s)
	}
	return []string{"unknown kind " + s.kind}
}

// collectSnippets finds the snippets, and the fenced blocks that look like
// configuration but are not marked as such (so would not be checked).
func collectSnippets(t *testing.T) (snippets []snippet, unmarked []string) {
	t.Helper()
	var markdown []string
	markdown = append(markdown, "README.md")
	for _, dir := range []string{"docs", "contrib", "examples"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			rel = filepath.ToSlash(rel)
			switch {
			case d.IsDir():
				return nil
			case strings.HasSuffix(p, ".md"):
				markdown = append(markdown, rel)
			case dir != "docs":
				if k := kindOfFile(d.Name()); k != "" {
					b, err := os.ReadFile(p)
					if err != nil {
						return err
					}
					snippets = append(snippets, snippet{where: rel, kind: k, text: string(b), file: p})
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range markdown {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, blk := range fencedBlocks(string(b)) {
			where := name + ":" + strconv.Itoa(blk.line)
			if slices.Contains([]string{kindMainCF, kindMasterCF, kindMC, kindTOML}, blk.info) {
				snippets = append(snippets, snippet{where: where, kind: blk.info, text: blk.text})
			} else if k := looksLike(blk.text); k != "" {
				unmarked = append(unmarked, fmt.Sprintf("%s: a block of %s configuration marked %q: mark it ```%s so that it is checked", where, k, blk.info, k))
			}
		}
	}
	return snippets, unmarked
}

func kindOfFile(name string) string {
	switch {
	case strings.HasPrefix(name, "main.cf"):
		return kindMainCF
	case strings.HasPrefix(name, "master.cf"):
		return kindMasterCF
	case strings.HasSuffix(name, ".mc"):
		return kindMC
	case strings.HasSuffix(name, ".toml"):
		return kindTOML
	}
	return ""
}

var (
	looksMainCF   = regexp.MustCompile(`(?m)^\s*(smtpd_milters|non_smtpd_milters|milter_[a-z_]+|smtpd_[a-z_]+_restrictions|smtpd_policy_service_[a-z_]+)\s*=`)
	looksMasterCF = regexp.MustCompile(`(?m)^\S+\s+(inet|unix|unix-dgram|fifo|pass)\s+[-ny]\s+[-ny]\s+`)
	looksMC       = regexp.MustCompile("MAIL_FILTER\\(|define\\(`conf")
	looksTOML     = regexp.MustCompile(`(?m)^\[\[?(milter|policyd|web|web\.smtp|metrics|store|log|dns|cache|health|policy|list|list\.codes)\]\]?\s*(#.*)?$`)
)

// looksLike names the kind of configuration text seems to be, or "".
func looksLike(text string) string {
	switch {
	case looksMC.MatchString(text):
		return kindMC
	case looksMainCF.MatchString(text):
		return kindMainCF
	case looksMasterCF.MatchString(text):
		return kindMasterCF
	case looksTOML.MatchString(text):
		return kindTOML
	}
	return ""
}

type fenced struct {
	line int    // of the opening fence
	info string // its first word
	text string
}

var fenceRE = regexp.MustCompile("^( *)(```+|~~~+)\\s*([^\\s`]*)")

// fencedBlocks returns a Markdown text's fenced code blocks, indented ones
// (in list items) included, with the fence's indentation taken off.
func fencedBlocks(md string) []fenced {
	var out []fenced
	lines := strings.Split(md, "\n")
	for i := 0; i < len(lines); i++ {
		m := fenceRE.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		indent, fence := len(m[1]), m[2]
		blk := fenced{line: i + 1, info: m[3]}
		var body []string
		for i++; i < len(lines); i++ {
			l := lines[i]
			if t := strings.TrimSpace(l); strings.HasPrefix(t, fence) && strings.Trim(t, fence[:1]) == "" {
				break
			}
			for n := 0; n < indent && strings.HasPrefix(l, " "); n++ {
				l = l[1:]
			}
			body = append(body, l)
		}
		blk.text = strings.Join(body, "\n") + "\n"
		out = append(out, blk)
	}
	return out
}

// need returns the path of a tool the checks use. Without it the test is
// skipped, except in CI, where e2e/deps.sh installs it and its absence is a
// failure.
func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p := tool
	var err error
	if !strings.HasPrefix(tool, "/") {
		p, err = exec.LookPath(tool)
	} else {
		_, err = os.Stat(tool)
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is needed (Debian package %s; e2e/deps.sh installs it): %v", tool, pkg, err)
		}
		t.Skipf("%s not installed (Debian package %s): snippet not checked", tool, pkg)
	}
	return p
}

// run runs a command and returns its stdout and stderr.
func run(t *testing.T, dir, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// --- Postfix ---

// checkMainCF loads the snippet as main.cf with postconf. postconf warns
// about unknown parameter names, but takes any value, and Postfix reads
// everything after "=" as the value, a "# comment" included: that passes
// postconf and then every SMTP client gets "451 4.3.5 Server
// configuration problem". So each value is checked too.
func checkMainCF(t *testing.T, s snippet) (problems []string) {
	postconf := need(t, "postconf", "postfix")
	masterDist := need(t, "/usr/share/postfix/master.cf.dist", "postfix")
	dir := t.TempDir()
	write(t, filepath.Join(dir, "main.cf"), s.text)
	copyFile(t, masterDist, filepath.Join(dir, "master.cf"))
	out, errs, err := run(t, dir, postconf, "-c", dir, "-n")
	if err != nil || errs != "" {
		return []string{fmt.Sprintf("postconf -n: %v\n%s", err, errs)}
	}
	params := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if name, value, ok := strings.Cut(l, " = "); ok {
			params[name] = value
		} else if name, ok := strings.CutSuffix(l, " ="); ok {
			params[name] = ""
		}
	}
	delete(params, "config_directory")
	if len(params) == 0 {
		return []string{"postconf found no parameter in the snippet"}
	}
	classes := postfixList(params["smtpd_restriction_classes"])
	for name, value := range params {
		for _, p := range checkPostfixParam(name, value, classes) {
			problems = append(problems, fmt.Sprintf("%s = %s: %s", name, value, p))
		}
	}
	slices.Sort(problems)
	return problems
}

// checkMasterCF loads the snippet added to Debian's master.cf.
func checkMasterCF(t *testing.T, s snippet) (problems []string) {
	postconf := need(t, "postconf", "postfix")
	masterDist := need(t, "/usr/share/postfix/master.cf.dist", "postfix")
	dir := t.TempDir()
	write(t, filepath.Join(dir, "main.cf"), "")
	dist, err := os.ReadFile(masterDist)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "master.cf"), string(dist)+"\n"+s.text)
	for _, flag := range []string{"-M", "-P", "-n"} {
		out, errs, err := run(t, dir, postconf, "-c", dir, flag)
		if err != nil || errs != "" {
			return append(problems, fmt.Sprintf("postconf %s: %v\n%s", flag, err, errs))
		}
		if flag == "-M" {
			// A service line, its continuation lines joined: a "#" in it
			// is an argument of the command, not a comment.
			for _, l := range strings.Split(out, "\n") {
				if commentInValue.MatchString(l) {
					problems = append(problems, fmt.Sprintf("%s: Postfix reads a # comment inside a service entry as part of it; put comments on their own line", l))
				}
			}
		}
		if flag == "-P" {
			// service/type/name = value
			for _, l := range strings.Split(out, "\n") {
				if key, value, ok := strings.Cut(l, " = "); ok {
					name := key[strings.LastIndex(key, "/")+1:]
					for _, p := range checkPostfixParam(name, value, nil) {
						problems = append(problems, fmt.Sprintf("%s = %s: %s", key, value, p))
					}
				}
			}
		}
	}
	return problems
}

var (
	commentInValue  = regexp.MustCompile(`(^|\s)#`)
	postfixTime     = regexp.MustCompile(`^\d+[smhdw]?$`)
	postfixMacro    = regexp.MustCompile(`^(\{[A-Za-z_]+\}|[A-Za-z_])$`)
	postfixInetHost = `(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)`
	postfixService  = regexp.MustCompile(`^(inet:` + postfixInetHost + `:\d{1,5}|unix:[^\s,{}]+)$`)
	milterService   = regexp.MustCompile(`^(inet:` + postfixInetHost + `:\d{1,5}|unix:[^\s,{}]+|local:[^\s,{}]+)$`)
)

// checkPostfixParam returns what is wrong with one main.cf value.
func checkPostfixParam(name, value string, classes []string) []string {
	if commentInValue.MatchString(value) {
		return []string{"Postfix reads a # comment after a value as part of the value; put comments on their own line"}
	}
	var problems []string
	switch {
	case strings.HasSuffix(name, "_milters"):
		for _, m := range postfixList(value) {
			if p := checkMilterSpec(m); p != "" {
				problems = append(problems, p)
			}
		}
	case name == "milter_default_action":
		if !slices.Contains([]string{"accept", "reject", "tempfail", "quarantine"}, value) {
			problems = append(problems, "not accept, reject, tempfail or quarantine")
		}
	case name == "milter_protocol":
		if n, err := strconv.Atoi(value); err != nil || n < 2 || n > 6 {
			problems = append(problems, "not a milter protocol version (2 to 6)")
		}
	case strings.HasPrefix(name, "milter_") && strings.HasSuffix(name, "_macros"):
		for _, m := range postfixList(value) {
			if !postfixMacro.MatchString(m) {
				problems = append(problems, fmt.Sprintf("%q is not a macro name", m))
			}
		}
	case strings.HasSuffix(name, "_timeout") || strings.HasSuffix(name, "_max_idle") || strings.HasSuffix(name, "_max_ttl"):
		if !postfixTime.MatchString(value) {
			problems = append(problems, "not a time (a number with s, m, h, d or w)")
		}
	case strings.HasSuffix(name, "_restrictions"):
		problems = append(problems, checkRestrictions(value, classes)...)
	}
	return problems
}

// postfixList splits a Postfix list on commas and white space, keeping
// "{ ... }" groups whole.
func postfixList(value string) []string {
	var out []string
	var cur strings.Builder
	depth := 0
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, s)
		}
		cur.Reset()
	}
	for _, r := range value {
		switch {
		case r == '{':
			if depth == 0 {
				flush()
			}
			depth++
			cur.WriteRune(r)
		case r == '}':
			depth--
			cur.WriteRune(r)
			if depth == 0 {
				flush()
			}
		case depth == 0 && (r == ',' || r == ' ' || r == '\t' || r == '\n'):
			flush()
		default:
			cur.WriteRune(r)
		}
	}
	flush()
	return out
}

// group splits "{ spec, name=value, ... }" into the spec and its
// attributes; ok is false for a plain item.
func group(item string) (spec string, attrs map[string]string, ok bool) {
	inner, isGroup := strings.CutPrefix(item, "{")
	if !isGroup {
		return item, nil, false
	}
	inner = strings.TrimSuffix(inner, "}")
	parts := strings.Split(inner, ",")
	attrs = map[string]string{}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		attrs[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return strings.TrimSpace(parts[0]), attrs, true
}

func checkMilterSpec(item string) string {
	spec, attrs, _ := group(item)
	if !milterService.MatchString(spec) {
		return fmt.Sprintf("%q is not a milter address (inet:host:port, unix:path)", spec)
	}
	for k, v := range attrs {
		switch k {
		case "connect_timeout", "command_timeout", "content_timeout":
			if !postfixTime.MatchString(v) {
				return fmt.Sprintf("%s=%s is not a time", k, v)
			}
		case "default_action":
			if !slices.Contains([]string{"accept", "reject", "tempfail", "quarantine"}, v) {
				return fmt.Sprintf("default_action=%s is not accept, reject, tempfail or quarantine", v)
			}
		case "protocol":
		default:
			return fmt.Sprintf("%q is not a milter setting", k)
		}
	}
	return ""
}

// restrictionArgs is the SMTP access restrictions Postfix 3.x knows, and
// whether each takes an argument (a table, a DNS list, a service). An
// unknown name is what Postfix answers "451 4.3.5 Server configuration
// problem" for, to every client.
var restrictionArgs = map[string]bool{
	"permit": false, "reject": false, "defer": false, "defer_if_permit": false, "defer_if_reject": false, "dunno": false,
	"warn_if_reject": false, "permit_mynetworks": false, "permit_sasl_authenticated": false,
	"permit_tls_clientcerts": false, "permit_tls_all_clientcerts": false, "permit_inet_interfaces": false,
	"permit_auth_destination": false, "permit_mx_backup": false, "permit_naked_ip_address": false,
	"reject_unauth_destination": false, "defer_unauth_destination": false, "reject_unauth_pipelining": false,
	"reject_unknown_client_hostname": false, "reject_unknown_reverse_client_hostname": false,
	"reject_unknown_helo_hostname": false, "reject_invalid_helo_hostname": false, "reject_non_fqdn_helo_hostname": false,
	"reject_non_fqdn_sender": false, "reject_non_fqdn_recipient": false, "reject_unknown_sender_domain": false,
	"reject_unknown_recipient_domain": false, "reject_unlisted_recipient": false, "reject_unlisted_sender": false,
	"reject_unverified_recipient": false, "reject_unverified_sender": false, "reject_multi_recipient_bounce": false,
	"reject_plaintext_session": false, "reject_sender_login_mismatch": false, "reject_known_sender_login_mismatch": false,
	"reject_authenticated_sender_login_mismatch": false, "reject_unauthenticated_sender_login_mismatch": false,
	"reject_rbl_client": true, "reject_rhsbl_client": true, "reject_rhsbl_reverse_client": true,
	"reject_rhsbl_helo": true, "reject_rhsbl_sender": true, "reject_rhsbl_recipient": true,
	"permit_dnswl_client": true, "permit_rhswl_client": true, "check_policy_service": true,
	"check_client_access": true, "check_reverse_client_hostname_access": true, "check_client_a_access": true,
	"check_client_mx_access": true, "check_client_ns_access": true, "check_reverse_client_a_access": true,
	"check_reverse_client_mx_access": true, "check_reverse_client_ns_access": true,
	"check_helo_access": true, "check_helo_a_access": true, "check_helo_mx_access": true, "check_helo_ns_access": true,
	"check_sender_access": true, "check_sender_a_access": true, "check_sender_mx_access": true, "check_sender_ns_access": true,
	"check_recipient_access": true, "check_recipient_a_access": true, "check_recipient_mx_access": true,
	"check_recipient_ns_access": true, "check_ccert_access": true, "check_sasl_access": true, "check_etrn_access": true,
}

var policyServiceAttrs = []string{"timeout", "default_action", "max_idle", "max_ttl", "try_limit", "policy_context"}

func checkRestrictions(value string, classes []string) []string {
	var problems []string
	items := postfixList(value)
	for i := 0; i < len(items); i++ {
		name := items[i]
		takesArg, known := restrictionArgs[name]
		if !known && !slices.Contains(classes, name) {
			problems = append(problems, fmt.Sprintf("Postfix knows no restriction %q", name))
			continue
		}
		if !takesArg {
			continue
		}
		if i+1 == len(items) {
			problems = append(problems, name+" needs an argument")
			break
		}
		i++
		arg := items[i]
		if name != "check_policy_service" {
			continue
		}
		spec, attrs, _ := group(arg)
		if !postfixService.MatchString(spec) {
			problems = append(problems, fmt.Sprintf("check_policy_service %q: not inet:host:port or unix:path", spec))
		}
		for k, v := range attrs {
			if !slices.Contains(policyServiceAttrs, k) {
				problems = append(problems, fmt.Sprintf("check_policy_service: %q is not a policy service setting", k))
			} else if (k == "timeout" || k == "max_idle" || k == "max_ttl") && !postfixTime.MatchString(v) {
				problems = append(problems, fmt.Sprintf("check_policy_service: %s=%s is not a time", k, v))
			}
		}
	}
	return problems
}

// --- Sendmail ---

var (
	mailFilterCall = regexp.MustCompile(`\b(INPUT_)?MAIL_FILTER\(`)
	mailFilterArgs = regexp.MustCompile("\\b(INPUT_)?MAIL_FILTER\\(`([^`']+)',\\s*`([^`']*)'\\)")
	macrosDefine   = regexp.MustCompile("define\\(`confMILTER_MACROS_([A-Z]+)',\\s*`([^`']*)'\\)")
	milterSocket   = regexp.MustCompile(`^(inet6?:\d{1,5}@\S+|(local|unix):/\S+)$`)
	milterTimeouts = regexp.MustCompile(`^[CSRE]:\d+[smh]?(;[CSRE]:\d+[smh]?)*$`)
)

// checkSendmailMC builds sendmail.cf from the snippet with m4 and Debian's
// sendmail-cf: a snippet that is not a whole sendmail.mc goes where its
// comment says, after OSTYPE and before the MAILER() lines. m4 takes a
// mis-quoted INPUT_MAIL_FILTER without a word and drops what follows the
// socket, so the milter definitions are compared with what reached
// sendmail.cf.
func checkSendmailMC(t *testing.T, s snippet) (problems []string) {
	m4 := need(t, "m4", "m4")
	cfm4 := need(t, "/usr/share/sendmail/cf/m4/cf.m4", "sendmail-cf")
	mc := s.text
	if !strings.Contains(mc, "cf.m4") {
		mc = "divert(0)dnl\ninclude(`" + cfm4 + "')dnl\nVERSIONID(`blmilter snippet check')dnl\nOSTYPE(`linux')dnl\n" +
			mc + "\nMAILER(`local')dnl\nMAILER(`smtp')dnl\n"
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "sendmail.mc"), mc)
	cf, errs, err := run(t, dir, m4, "sendmail.mc")
	if err != nil || errs != "" {
		return []string{fmt.Sprintf("m4 sendmail.mc: %v\n%s", err, errs)}
	}
	code := stripDnl(s.text)
	calls := mailFilterCall.FindAllString(code, -1)
	defs := mailFilterArgs.FindAllStringSubmatch(code, -1)
	if len(calls) != len(defs) {
		problems = append(problems, fmt.Sprintf("%d MAIL_FILTER calls, %d with both arguments quoted as `name', `equates'", len(calls), len(defs)))
	}
	cfLines := strings.Split(cf, "\n")
	for _, d := range defs {
		input, name, equates := d[1] != "", d[2], d[3]
		want := "X" + name + ", " + equates
		if !slices.Contains(cfLines, want) {
			problems = append(problems, fmt.Sprintf("sendmail.cf lacks %q: m4 read the definition differently", want))
		}
		for _, p := range checkEquates(equates) {
			problems = append(problems, fmt.Sprintf("%s: %s", name, p))
		}
		if input && !slices.ContainsFunc(cfLines, func(l string) bool {
			v, ok := strings.CutPrefix(l, "O InputMailFilters=")
			return ok && slices.Contains(strings.Split(v, ","), name)
		}) {
			problems = append(problems, fmt.Sprintf("sendmail.cf does not name %s in InputMailFilters", name))
		}
	}
	for _, d := range macrosDefine.FindAllStringSubmatch(code, -1) {
		stage := map[string]string{"CONNECT": "connect", "HELO": "helo", "ENVFROM": "envfrom", "ENVRCPT": "envrcpt", "EOM": "eom", "EOH": "eoh", "DATA": "data"}[d[1]]
		if want := "O Milter.macros." + stage + "=" + d[2]; !slices.Contains(cfLines, want) {
			problems = append(problems, fmt.Sprintf("sendmail.cf lacks %q", want))
		}
	}
	return problems
}

// stripDnl removes m4 comments: "dnl" to the end of the line.
func stripDnl(mc string) string {
	var b strings.Builder
	for _, l := range strings.Split(mc, "\n") {
		if i := strings.Index(l, "dnl"); i >= 0 {
			l = l[:i]
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

// checkEquates checks a milter definition's "S=..., F=..., T=...".
func checkEquates(equates string) []string {
	var problems []string
	seen := map[string]bool{}
	for _, e := range strings.Split(equates, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(e), "=")
		if !ok {
			problems = append(problems, fmt.Sprintf("%q is not KEY=VALUE", e))
			continue
		}
		seen[k] = true
		switch k {
		case "S":
			if !milterSocket.MatchString(v) {
				problems = append(problems, fmt.Sprintf("S=%s is not inet:PORT@HOST or local:/path", v))
			}
		case "F":
			if !slices.Contains([]string{"", "R", "T", "4"}, v) {
				problems = append(problems, fmt.Sprintf("F=%s is not empty, R, T or 4", v))
			}
		case "T":
			if !milterTimeouts.MatchString(v) {
				problems = append(problems, fmt.Sprintf("T=%s is not C:, S:, R:, E: timeouts separated by ;", v))
			}
		default:
			problems = append(problems, fmt.Sprintf("%s= is not a milter equate", k))
		}
	}
	if !seen["S"] {
		problems = append(problems, "no S= socket")
	}
	return problems
}

// --- blmilter's TOML ---

// checkTOML runs "blmilter config check". A file is checked where it is,
// so the list files it names must be there. A block in a manual may show a
// part of a config: it is checked on top of the embedded default config (a
// "[list.codes]" table alone inside a DNS list); a list file it names must
// be mentioned in a comment line of the block, and is then made empty for
// the check.
func checkTOML(t *testing.T, blmilter string, s snippet) (problems []string) {
	path := s.file
	if path == "" {
		path = filepath.Join(t.TempDir(), "blmilter.toml")
		var whole string
		whole, problems = completeConfig(t, s.text, filepath.Dir(path))
		if whole == "" {
			return problems
		}
		write(t, path, whole)
	}
	out, errs, err := run(t, "", blmilter, "config", "check", path)
	if err != nil {
		merged, _ := os.ReadFile(path)
		problems = append(problems, fmt.Sprintf("blmilter config check: %v\n%s%s\nas checked:\n%s", err, out, errs, merged))
	}
	return problems
}

// completeConfig is a block made a whole config: its tables on top of the
// embedded default's, its lists instead of the default's.
func completeConfig(t *testing.T, block, scratch string) (whole string, problems []string) {
	t.Helper()
	var part, base map[string]any
	if _, err := toml.Decode(block, &part); err != nil {
		return "", []string{fmt.Sprintf("not TOML: %v", err)}
	}
	if _, err := toml.Decode(string(config.DefaultTOML()), &base); err != nil {
		t.Fatal(err)
	}
	for k, v := range part {
		switch pv := v.(type) {
		case map[string]any:
			if k == "list" {
				// "[list.codes]" without its "[[list]]": one DNS list.
				l := map[string]any{"name": "Example", "zone": "bl.example.org"}
				for lk, lv := range pv {
					l[lk] = lv
				}
				base["list"] = []map[string]any{l}
				continue
			}
			bv, _ := base[k].(map[string]any)
			if bv == nil {
				bv = map[string]any{}
			}
			for sk, sv := range pv {
				bv[sk] = sv
			}
			base[k] = bv
		default:
			base[k] = v
		}
	}
	lists, _ := base["list"].([]map[string]any)
	for _, l := range lists {
		file, ok := l["file"].(string)
		if !ok {
			continue
		}
		if !mentionedInComment(block, file) {
			problems = append(problems, fmt.Sprintf("the block names the list file %s: ship it, or say in a comment line of the block that it is needed", file))
		}
		scratchFile := filepath.Join(scratch, "lists", path.Base(file))
		if err := os.MkdirAll(filepath.Dir(scratchFile), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, scratchFile, "")
		l["file"] = scratchFile
	}
	// Key files ([fleet], [zone.tsig]) likewise: said to be needed, and a
	// scratch key for the check.
	scratchKey := func(file string) string {
		if !mentionedInComment(block, file) {
			problems = append(problems, fmt.Sprintf("the block names the key file %s: ship it, or say in a comment line of the block that it is needed", file))
		}
		p := filepath.Join(scratch, "keys", path.Base(file))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, p, "c2NyYXRjaCBrZXkgZm9yIHRoZSBzbmlwcGV0IGNoZWNr\n")
		return p
	}
	if f, _ := base["fleet"].(map[string]any); f != nil {
		if kf, ok := f["key_file"].(string); ok && kf != "" {
			f["key_file"] = scratchKey(kf)
		}
		if prev, ok := f["previous_key_files"].([]any); ok {
			for i, pf := range prev {
				if s, ok := pf.(string); ok {
					prev[i] = scratchKey(s)
				}
			}
		}
	}
	if z, _ := base["zone"].(map[string]any); z != nil {
		if ts, _ := z["tsig"].(map[string]any); ts != nil {
			if sf, ok := ts["secret_file"].(string); ok && sf != "" {
				ts["secret_file"] = scratchKey(sf)
			}
		}
	}
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(base); err != nil {
		t.Fatal(err)
	}
	return b.String(), problems
}

func mentionedInComment(block, file string) bool {
	for _, l := range strings.Split(block, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "#") && (strings.Contains(l, file) || strings.Contains(l, path.Base(file))) {
			return true
		}
	}
	return false
}

func write(t *testing.T, p, text string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	write(t, to, string(b))
}

// The checker finds the mistakes that have cost mail: each of these
// snippets is wrong, and the check says so.
func TestSnippetCheckerCatches(t *testing.T) {
	var blmilter string
	for _, tc := range []struct {
		name, kind, text, want string
	}{
		{"comment after a milter", kindMainCF, "smtpd_milters = inet:127.0.0.1:8895          # blmilter's [milter] listen\n", "comment"},
		{"comment after an empty value", kindMainCF, "non_smtpd_milters =                          # local submissions\n", "comment"},
		{"comment after a restriction", kindMainCF, "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination # relay\n", "comment"},
		{"misspelt parameter", kindMainCF, "smtpd_milter = inet:127.0.0.1:8895\n", "unused parameter"},
		{"milter address in another form", kindMainCF, "smtpd_milters = tcp:127.0.0.1:8895\n", "not a milter address"},
		{"milter address in Sendmail's form", kindMainCF, "smtpd_milters = inet:8895@127.0.0.1\n", "not a milter address"},
		{"unknown milter setting", kindMainCF, "smtpd_milters = { inet:127.0.0.1:8895, default=accept }\n", "not a milter setting"},
		{"default action", kindMainCF, "milter_default_action = continue\n", "not accept"},
		{"time with a word", kindMainCF, "milter_command_timeout = 30 seconds\n", "not a time"},
		{"misspelt restriction", kindMainCF, "smtpd_recipient_restrictions = permit_mynetwork, reject_unauth_destination\n", `no restriction "permit_mynetwork"`},
		{"policy service address", kindMainCF, "smtpd_recipient_restrictions = check_policy_service 127.0.0.1:10045\n", "not inet:host:port"},
		{"policy service setting", kindMainCF, "smtpd_recipient_restrictions = check_policy_service { inet:127.0.0.1:10045, defaultaction=DUNNO }\n", "not a policy service setting"},
		{"macro list", kindMainCF, "milter_connect_macros = j _ client_addr}\n", "not a macro name"},
		{"master.cf service", kindMasterCF, "blm unix - n n - - spawn\n  user=nobody argv=/bin/true # comment\n", "comment"},
		{"mis-quoted milter", kindMC, "INPUT_MAIL_FILTER(`blmilter', S=inet:8895@127.0.0.1, F=T)dnl\n", "MAIL_FILTER calls"},
		{"Postfix's address form in Sendmail", kindMC, "INPUT_MAIL_FILTER(`blmilter', `S=inet:127.0.0.1:8895, F=T')dnl\n", "S=inet:127.0.0.1:8895"},
		{"unclosed call", kindMC, "INPUT_MAIL_FILTER(`blmilter', `S=inet:8895@127.0.0.1'dnl\n", "m4"},
		{"flag", kindMC, "INPUT_MAIL_FILTER(`blmilter', `S=inet:8895@127.0.0.1, F=A')dnl\n", "F=A"},
		{"misspelt key", kindTOML, "[policy]\nacton = \"reject\"\n", "unknown key"},
		{"list file neither shipped nor mentioned", kindTOML, "[[list]]\nname = \"local\"\nfile = \"/etc/blmilter/local.txt\"\n", "ship it"},
		{"not TOML", kindTOML, "[policy\n", "not TOML"},
		{"key file neither shipped nor mentioned", kindTOML, "[fleet]\nkey_file = \"/etc/blmilter/fleet.key\"\n", "key file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.kind == kindTOML && blmilter == "" {
				blmilter = testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")
			}
			problems := check(t, snippet{where: tc.name, kind: tc.kind, text: tc.text}, blmilter)
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.want) }) {
				t.Errorf("problems %q, want one with %q", problems, tc.want)
			}
		})
	}
	// And the same snippets done right pass.
	for _, tc := range []struct{ name, kind, text string }{
		{"comments on their own lines", kindMainCF, "# blmilter's [milter] listen\nsmtpd_milters = inet:127.0.0.1:8895\n"},
		{"policy service group", kindMainCF, "smtpd_recipient_restrictions =\n    permit_mynetworks,\n    reject_unauth_destination,\n    check_policy_service { inet:127.0.0.1:10045, timeout=10s, default_action=DUNNO }\n"},
		{"restriction class", kindMainCF, "smtpd_restriction_classes = blm\nblm = check_policy_service unix:private/blmilter\nsmtpd_recipient_restrictions = reject_unauth_destination, blm\n"},
		{"master.cf service", kindMasterCF, "# a comment on its own line\nblm unix - n n - - spawn\n  user=nobody argv=/bin/true\n"},
		{"milter", kindMC, "INPUT_MAIL_FILTER(`blmilter', `S=local:/run/blmilter/milter.sock, F=, T=C:10s;E:1m')dnl\n"},
		{"list file said to be needed", kindTOML, "# Needs /etc/blmilter/local.txt: one IP or CIDR a line.\n[[list]]\nname = \"local\"\nfile = \"/etc/blmilter/local.txt\"\n"},
		{"key files said to be needed", kindTOML, "# Needs /etc/blmilter/fleet.key and /etc/blmilter/xfr.key.\n[fleet]\nkey_file = \"/etc/blmilter/fleet.key\"\n[zone]\nname = \"bl.example.org\"\nns = [\"ns1.example.org.\"]\ntsig = { name = \"xfr.example.org.\", secret_file = \"/etc/blmilter/xfr.key\" }\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.kind == kindTOML && blmilter == "" {
				blmilter = testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")
			}
			if problems := check(t, snippet{where: tc.name, kind: tc.kind, text: tc.text}, blmilter); len(problems) > 0 {
				t.Errorf("problems %q, want none", problems)
			}
		})
	}
}
