package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/internal/sockets"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

var checkCommand = &command{
	name:     "check",
	args:     "IP...",
	synopsis: "ask every list about IP addresses and show the decision",
	help: `Asks every configured list about each IP, bypassing the cache, and prints
what each list answered (listed, not listed or a list error, with the DNS
answer code, category, TXT reason, TTL and the time the query took), then
the verdict and the SMTP reply a client at that address would get.

Nothing is recorded: the reply has no decision reference. Loopback and
allow-listed addresses are reported as not looked up, as the milter treats
them.

With --json the same is printed as a JSON array, one object per IP.`,
	setup: func(fs *flag.FlagSet) func(c *cmdCtx, args []string) error {
		asJSON := fs.Bool("json", false, "print JSON instead of a table")
		return func(c *cmdCtx, args []string) error { return runCheck(c, args, *asJSON) }
	},
}

func runCheck(c *cmdCtx, args []string, asJSON bool) error {
	if len(args) == 0 {
		return usageError("at least one IP address expected")
	}
	ips := make([]netip.Addr, len(args))
	for i, a := range args {
		ip, err := netip.ParseAddr(strings.Trim(a, "[]"))
		if err != nil || ip.Zone() != "" {
			return usageError(fmt.Sprintf("%q is not an IP address", a))
		}
		ips[i] = ip.Unmap()
	}
	cfg, err := loadConfig(c.configPath)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	deps := policy.Deps{Logger: logger}
	// The site's own list, read-only, when a list uses it and it exists:
	// check shows what the daemon would decide, and changes nothing.
	if cfg.StoreListed() {
		if _, err := os.Stat(cfg.Store.Path); err == nil {
			st, err := store.Open(cfg.Store.Path, store.Options{Logger: logger, ReadOnly: true, PollInterval: -1})
			if err != nil {
				logger.Warn("the site's own list is not asked: store unavailable", "path", cfg.Store.Path, "err", err)
			} else {
				defer st.Close()
				deps.StoreList = st
			}
		}
	}
	e, err := newEngine(cfg, deps)
	if err != nil {
		return fmt.Errorf("build policy engine: %w", err)
	}
	defer e.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	results := make([]checkResult, len(ips))
	for i, ip := range ips {
		// Inspect bounds each list by its own timeout; this only guards
		// against a wait without end.
		ictx, cancel := context.WithTimeout(ctx, time.Minute)
		results[i] = newCheckResult(e.Inspect(ictx, ip))
		cancel()
	}
	if asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	for i, r := range results {
		if i > 0 {
			fmt.Fprintln(c.stdout)
		}
		r.writeText(c.stdout)
	}
	return nil
}

// checkResult is the JSON form of one IP's inspection; the field names are
// a stable interface for scripts.
type checkResult struct {
	IP      string       `json:"ip"`
	Verdict checkVerdict `json:"verdict"`
	Reply   *checkReply  `json:"reply"` // null when the client would be accepted
	Lists   []checkList  `json:"lists"`
}

type checkVerdict struct {
	Action     string  `json:"action"`
	Score      float64 `json:"score"`
	Threshold  float64 `json:"threshold"`
	Skipped    string  `json:"skipped,omitempty"` // loopback | allow | unknown: not looked up
	DurationMS float64 `json:"duration_ms"`
}

type checkReply struct {
	Code     int    `json:"code"`
	Enhanced string `json:"enhanced"`
	Text     string `json:"text"`
	Header   string `json:"header,omitempty"`
}

type checkList struct {
	List       string   `json:"list"`
	Kind       string   `json:"kind"`
	Status     string   `json:"status"` // listed | clean | error | degraded | skipped
	Codes      []string `json:"codes,omitempty"`
	Category   string   `json:"category,omitempty"`
	Reason     string   `json:"reason,omitempty"`
	Weight     float64  `json:"weight"`
	TTLSeconds float64  `json:"ttl_seconds"`
	Error      string   `json:"error,omitempty"`
	TimeMS     float64  `json:"time_ms"`
	DryRun     bool     `json:"dry_run,omitempty"`
}

func newCheckResult(in policy.Inspection) checkResult {
	v := in.Verdict
	r := checkResult{
		IP: v.IP.String(),
		Verdict: checkVerdict{
			Action:     string(v.Action),
			Score:      v.Score,
			Threshold:  v.Threshold,
			Skipped:    string(v.Skipped),
			DurationMS: ms(v.Duration),
		},
		Lists: make([]checkList, 0, len(in.Lists)),
	}
	if in.Reply != nil {
		r.Reply = &checkReply{Code: in.Reply.Code, Enhanced: in.Reply.Enhanced, Text: in.Reply.Text, Header: in.Reply.Header}
	}
	for _, l := range in.Lists {
		cl := checkList{
			List:       l.List,
			Kind:       l.Kind,
			Status:     l.Status,
			Category:   l.Category,
			Reason:     l.Reason,
			Weight:     l.Weight,
			TTLSeconds: l.TTL.Seconds(),
			Error:      l.Err,
			TimeMS:     ms(l.Duration),
			DryRun:     l.DryRun,
		}
		for _, code := range l.Codes {
			cl.Codes = append(cl.Codes, code.String())
		}
		r.Lists = append(r.Lists, cl)
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r checkResult) writeText(w io.Writer) {
	v := r.Verdict
	head := fmt.Sprintf("%s: %s", r.IP, v.Action)
	if v.Skipped != "" {
		head += " (not looked up: " + v.Skipped + ")"
	} else {
		head += fmt.Sprintf(" (score %s, threshold %s), %s", num(v.Score), num(v.Threshold), msText(v.DurationMS))
	}
	fmt.Fprintln(w, head)
	switch {
	case r.Reply != nil && r.Reply.Code != 0:
		fmt.Fprintf(w, "reply: %d %s %s\n", r.Reply.Code, r.Reply.Enhanced, r.Reply.Text)
	case r.Reply != nil && r.Reply.Header != "":
		fmt.Fprintf(w, "header: X-Blmilter: %s\n", r.Reply.Header)
	default:
		fmt.Fprintln(w, "reply: none, the client is accepted")
	}
	if len(r.Lists) == 0 || v.Skipped != "" {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LIST\tRESULT\tCODE\tCATEGORY\tREASON\tTTL\tTIME")
	for _, l := range r.Lists {
		result := map[string]string{"clean": "not listed", "degraded": "listed (degraded, not counted)"}[l.Status]
		if result == "" {
			result = l.Status
		}
		if l.DryRun {
			result += " (dry run)"
		}
		reason := l.Reason
		if l.Error != "" {
			reason = l.Error
		}
		ttl := "-"
		if l.TTLSeconds > 0 {
			ttl = (time.Duration(l.TTLSeconds) * time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.List, result, dash(strings.Join(l.Codes, ",")),
			dash(l.Category), dash(shorten(oneLine(reason), 60)), ttl, msText(l.TimeMS))
	}
	tw.Flush()
}

func num(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func msText(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) + "ms" }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

var configCheckCommand = &command{
	name:     "config check",
	args:     "[FILE]",
	synopsis: "validate a config file and list every problem",
	help: `Reads FILE (or the -config file) as blmilter would at start, opens the
local list files it names, and reports every problem at once, one a line:

  FILE:LINE: key: problem

It reads the fleet's key files and the zone's TSIG secret too. Exits 1 when there is any problem, 0 when the file is good.`,
	setup: func(*flag.FlagSet) func(c *cmdCtx, args []string) error { return runConfigCheck },
}

func runConfigCheck(c *cmdCtx, args []string) error {
	path := c.configPath
	switch {
	case len(args) == 1:
		path = args[0]
	case len(args) > 1:
		return usageError("one config file expected")
	case path == "":
		return usageError("a config file expected")
	}
	cfg, err := config.LoadFile(path)
	if err == nil {
		// Building the engine opens the list files and the fleet's key,
		// which parsing does not; the zone's TSIG secret is read too.
		var e *policy.Engine
		e, err = newEngine(cfg, policy.Deps{Logger: slog.New(slog.DiscardHandler)})
		if err == nil {
			e.Close()
			err = socketProblems(cfg)
			if err == nil {
				_, err = zoneTSIG(cfg)
			}
		}
		if err == nil {
			fmt.Fprintf(c.stdout, "%s: OK (%d lists)\n", path, len(cfg.Lists))
			if storeUnused(cfg, storeListings(cfg)) {
				fmt.Fprintf(c.stderr, "%s: warning: %s\n", path, storeUnusedWarning)
			}
			return nil
		}
	}
	var ce *config.Error
	if errors.As(err, &ce) {
		fmt.Fprintln(c.stderr, ce.Error())
		fmt.Fprintf(c.stderr, "%s: %d problem(s)\n", path, len(ce.Problems))
	} else {
		fmt.Fprintf(c.stderr, "%s: %v\n", path, err)
	}
	return exitCode(1)
}

// socketProblems checks, when run as root on the daemon's machine, that
// the MTA's group (socket_group) can reach each unix socket as serve will
// make it: the directories on its path searchable, the socket writable.
// Elsewhere the machine's users, groups and directories are not the
// daemon's, so nothing is checked.
func socketProblems(cfg *config.Config) error {
	if os.Geteuid() != 0 {
		return nil
	}
	var problems []config.Problem
	for _, s := range []struct {
		key, listen, group, mode string
		parse                    func(string) (string, string, error)
	}{
		{"milter", cfg.Milter.Listen, cfg.Milter.SocketGroup, cfg.Milter.SocketMode, sockets.ParseMilterSpec},
		{"policyd", cfg.Policyd.Listen, cfg.Policyd.SocketGroup, cfg.Policyd.SocketMode, sockets.ParsePolicySpec},
	} {
		if s.listen == "" || s.group == "" {
			continue
		}
		network, path, err := s.parse(s.listen)
		if err != nil || network != "unix" {
			continue
		}
		if err := sockets.Access(path, s.group, socketMode(s.mode)); err != nil {
			problems = append(problems, cfg.Errorf(s.key+".socket_group", "%v", err).Problems...)
		}
	}
	if len(problems) > 0 {
		return &config.Error{File: cfg.File, Problems: problems}
	}
	return nil
}

// storeListings counts the listings of the store when it exists (read
// only); 0 when it cannot be read.
func storeListings(cfg *config.Config) int {
	if _, err := os.Stat(cfg.Store.Path); err != nil {
		return 0
	}
	st, err := store.Open(cfg.Store.Path, store.Options{ReadOnly: true, PollInterval: -1})
	if err != nil {
		return 0
	}
	defer st.Close()
	return st.Len()
}
