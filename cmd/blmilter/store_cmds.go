package main

// The operator's commands for the site's own list and the removal requests:
//
//	blmilter list add IP-or-CIDR... [-category C] [-reason R] [-expires 720h] [-create]
//	blmilter list remove IP-or-CIDR...
//	blmilter list show [IP-or-CIDR...]
//	blmilter requests list [-status open|all|pending|confirmed|waiting|approved|denied|removed|expired]
//	blmilter requests approve|deny ID...
//
// They work on the daemon's store: -db PATH, else the [store] path of
// -config FILE, else of /etc/blmilter/blmilter.toml when it exists; none of
// them creates a database unless asked (-create), and the read-only ones
// open it read-only. A running daemon sees a change within a few seconds
// and drops its cached verdicts for the prefix.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

// storeAccess is what a command does with the store.
type storeAccess int

const (
	storeNone   storeAccess = iota
	storeRead               // opened read-only
	storeWrite              // opened to write; never created
	storeCreate             // opened to write; created with -create
)

// systemConfig is where the daemon's config lives when installed; the
// store commands use its [store] path when given neither -db nor -config.
var systemConfig = "/etc/blmilter/blmilter.toml"

// storeCommands manage the site's own list and its removal requests.
var storeCommands = []*command{
	{
		name:     "list add",
		args:     "IP-or-CIDR...",
		synopsis: "list addresses or networks on the site's own list",
		help: `Lists each IP or CIDR on the site's own list. -expires takes Go durations
(36h, 90m) or days (30d); without it a listing stays until removed.

The site's own list refuses mail only where a [[list]] has store = true; the
command warns when the config has none.`,
		store: storeCreate,
		setup: func(fs *flag.FlagSet) func(c *cmdCtx, args []string) error {
			category := fs.String("category", "local", "`CATEGORY` of new listings: zombie, open-proxy, spam-source, dynamic, local")
			reason := fs.String("reason", "", "`TEXT` shown on the lookup page")
			expires := fs.String("expires", "", "lifetime of new listings, such as 720h or 30d (default: until removed)")
			return func(c *cmdCtx, args []string) error { return listAdd(c, args, *category, *reason, *expires) }
		},
	},
	{
		name:     "list remove",
		args:     "IP-or-CIDR...",
		synopsis: "remove listings from the site's own list",
		help:     `Removes the listing of each prefix, as listed (see list show).`,
		store:    storeWrite,
		setup:    func(*flag.FlagSet) func(c *cmdCtx, args []string) error { return listRemove },
	},
	{
		name:     "list show",
		args:     "[IP-or-CIDR...]",
		synopsis: "show the site's own list",
		help: `Without arguments, shows every live listing. With an IP it shows the
listing that applies to it (which may be a network around it) and the
address's history: first and last seen, every listing and removal of it and
who made it, trap hits and refusals per day, and the trap hits still kept in
detail (time, HELO, sender, trap, queue id, reverse DNS). The store is opened
read-only.`,
		store: storeRead,
		setup: func(*flag.FlagSet) func(c *cmdCtx, args []string) error { return listShow },
	},
	{
		name:     "requests list",
		synopsis: "show removal requests",
		help: `Shows removal requests. Statuses: pending (mail not confirmed), confirmed,
waiting (for an operator), approved, denied, removed (self-service), expired
(the confirmation link was never followed). The store is opened read-only.`,
		store: storeRead,
		setup: func(fs *flag.FlagSet) func(c *cmdCtx, args []string) error {
			status := fs.String("status", "open", "which requests to list: open (pending, confirmed, waiting), all, or one `STATUS`")
			return func(c *cmdCtx, args []string) error { return requestsList(c, args, *status) }
		},
	},
	{
		name:     "requests approve",
		args:     "ID...",
		synopsis: "approve removal requests",
		help:     `Approves each request: every listing that contains the request's IP is removed.`,
		store:    storeWrite,
		setup:    func(*flag.FlagSet) func(c *cmdCtx, args []string) error { return requestsDecide(true) },
	},
	{
		name:     "requests deny",
		args:     "ID...",
		synopsis: "deny removal requests",
		help:     `Denies each request: the listing stays.`,
		store:    storeWrite,
		setup:    func(*flag.FlagSet) func(c *cmdCtx, args []string) error { return requestsDecide(false) },
	},
}

// storeTarget finds the daemon's store: -db, else the [store] path of
// -config, else of the system config when it exists. It returns the config
// it read too (nil with -db and no -config), and where the path came from.
func (c *cmdCtx) storeTarget() (cfg *config.Config, path, from string, err error) {
	cfgPath := c.configPath
	if cfgPath == "" && c.dbPath == "" {
		if _, err := os.Stat(systemConfig); err == nil {
			cfgPath = systemConfig
		}
	}
	if cfgPath != "" {
		if cfg, err = config.LoadFile(cfgPath); err != nil {
			return nil, "", "", err
		}
	}
	switch {
	case c.dbPath != "":
		return cfg, c.dbPath, "-db", nil
	case cfg != nil:
		return cfg, cfg.Store.Path, "the [store] path of " + cfgPath, nil
	}
	return nil, "", "", fmt.Errorf("which store? give -db PATH, or -config FILE to use its [store] path (there is no %s)", systemConfig)
}

// openStore opens the command's store as its storeAccess says.
func (c *cmdCtx) openStore() (*store.Store, *config.Config, error) {
	cfg, path, from, err := c.storeTarget()
	if err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && !(c.cmd.store == storeCreate && c.create) {
		where := path
		if !filepath.IsAbs(path) {
			abs, _ := filepath.Abs(path)
			where = fmt.Sprintf("%s (%s is relative to this command's working directory; the daemon's is its own)", abs, path)
		}
		msg := fmt.Sprintf("no database at %s, %s", where, from)
		if c.cmd.store == storeCreate {
			msg += "; give -create to make a new one"
		}
		return nil, nil, errors.New(msg)
	}
	// The command's own changes reach the daemon through the file; it
	// does not need to watch for anyone else's.
	st, err := store.Open(path, store.Options{PollInterval: -1, ReadOnly: c.cmd.store == storeRead})
	if err != nil {
		return nil, nil, err
	}
	return st, cfg, nil
}

// storeOperator names who made a change: the login behind sudo, if any.
func storeOperator() string {
	for _, v := range []string{"SUDO_USER", "USER", "LOGNAME"} {
		if u := os.Getenv(v); u != "" {
			return "cli:" + u
		}
	}
	return "cli"
}

// parsePrefixes reads the IP-or-CIDR arguments.
func parsePrefixes(args []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, a := range args {
		p, err := store.ParsePrefix(a)
		if err != nil {
			return nil, usageError(err.Error())
		}
		out = append(out, p)
	}
	return out, nil
}

func listAdd(c *cmdCtx, args []string, category, reason, expires string) error {
	if len(args) == 0 {
		return usageError("no IP or CIDR given")
	}
	prefixes, err := parsePrefixes(args)
	if err != nil {
		return err
	}
	if !policy.IsCategory(category) {
		return usageError(fmt.Sprintf("-category %q: a category is one word of a-z, 0-9 and '-' (at most %d characters), such as spam-source", category, policy.MaxCategoryLen))
	}
	var expiresAt *time.Time
	if expires != "" {
		t, err := storeParseExpiry(expires, time.Now())
		if err != nil {
			return usageError(fmt.Sprintf("-expires: %v", err))
		}
		expiresAt = &t
	}
	s, cfg, err := c.openStore()
	if err != nil {
		return err
	}
	defer s.Close()
	if cfg != nil && !cfg.StoreListed() {
		fmt.Fprintf(c.stderr, "blmilter list add: warning: %s (%s)\n", storeUnusedWarning, cfg.File)
	}
	failed := false
	for _, p := range prefixes {
		l := store.Listing{Prefix: p, Category: category, Reason: reason, Source: storeOperator(), ExpiresAt: expiresAt}
		added, err := s.AddListing(context.Background(), l)
		if err != nil {
			fmt.Fprintf(c.stderr, "blmilter list add: %v\n", err)
			failed = true
			continue
		}
		fmt.Fprintf(c.stdout, "listed %s (%s)%s\n", added.Prefix, added.Category, storeUntil(added.ExpiresAt))
	}
	if failed {
		return exitCode(1)
	}
	return nil
}

func listRemove(c *cmdCtx, args []string) error {
	if len(args) == 0 {
		return usageError("no IP or CIDR given")
	}
	prefixes, s, err := c.prefixesAndStore(args)
	if err != nil {
		return err
	}
	defer s.Close()
	failed := false
	for _, p := range prefixes {
		if err := s.RemoveListing(context.Background(), p, storeOperator()); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				err = fmt.Errorf("%s is not listed (give the listed prefix itself: see blmilter list show %s)", p, p.Addr())
			}
			fmt.Fprintf(c.stderr, "blmilter list remove: %v\n", err)
			failed = true
			continue
		}
		fmt.Fprintf(c.stdout, "removed %s\n", p)
	}
	if failed {
		return exitCode(1)
	}
	return nil
}

// prefixesAndStore parses args as prefixes, then opens the command's
// store.
func (c *cmdCtx) prefixesAndStore(args []string) ([]netip.Prefix, *store.Store, error) {
	prefixes, err := parsePrefixes(args)
	if err != nil {
		return nil, nil, err
	}
	s, _, err := c.openStore()
	return prefixes, s, err
}

func listShow(c *cmdCtx, args []string) error {
	prefixes, s, err := c.prefixesAndStore(args)
	if err != nil {
		return err
	}
	defer s.Close()
	ls, err := s.Listings(context.Background())
	if err != nil {
		return err
	}
	code := 0
	if len(prefixes) > 0 {
		ls, code = storeSelect(s, ls, prefixes, c.stderr)
	}
	storeWriteListings(c.stdout, ls)
	for _, p := range prefixes {
		if p.IsSingleIP() {
			if err := storeWriteHistory(c.stdout, s, p.Addr()); err != nil {
				return err
			}
		}
	}
	if code != 0 {
		return exitCode(code)
	}
	return nil
}

// storeSelect picks, for each asked prefix, the listing of exactly that
// prefix or, for a single address, the listing that applies to it.
func storeSelect(s *store.Store, all []store.Listing, asked []netip.Prefix, stderr io.Writer) ([]store.Listing, int) {
	var out []store.Listing
	code := 0
	for _, p := range asked {
		found := false
		for _, l := range all {
			if l.Prefix == p {
				out, found = append(out, l), true
				break
			}
		}
		if !found && p.IsSingleIP() {
			if l, ok := s.ListingFor(p.Addr()); ok {
				out, found = append(out, l), true
			}
		}
		if !found {
			fmt.Fprintf(stderr, "%s: not listed\n", p)
			code = 1
		}
	}
	return out, code
}

func storeWriteListings(w io.Writer, ls []store.Listing) {
	if len(ls) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tCATEGORY\tLISTED\tEXPIRES\tREMOVALS\tSOURCE\tREASON")
	for _, l := range ls {
		exp := "never"
		if l.ExpiresAt != nil {
			exp = storeTime(*l.ExpiresAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", l.Prefix, l.Category, storeTime(l.ListedAt), exp,
			l.Removals, storeDash(l.Source), storeDash(storeOneLine(l.Reason, 60)))
	}
	tw.Flush()
}

func requestsList(c *cmdCtx, args []string, status string) error {
	if len(args) > 0 {
		return usageError(fmt.Sprintf("unexpected arguments %q", args))
	}
	s, _, err := c.openStore()
	if err != nil {
		return err
	}
	defer s.Close()
	if status == "all" {
		status = ""
	}
	rs, err := s.Requests(context.Background(), status)
	if err != nil {
		if errors.Is(err, store.ErrInvalid) {
			return usageError(err.Error())
		}
		return err
	}
	// What waits for the operator first, then the rest, oldest first.
	slices.SortStableFunc(rs, func(a, b store.RemovalRequest) int {
		aw, bw := a.Status == store.StatusWaiting, b.Status == store.StatusWaiting
		switch {
		case aw && !bw:
			return -1
		case bw && !aw:
			return 1
		}
		return 0
	})
	storeWriteRequests(c.stdout, rs)
	return nil
}

// storeWriteHistory prints ip's history, for the operator: unlike the
// lookup page it names who changed a listing, how control was proved and
// the traps that were hit.
func storeWriteHistory(w io.Writer, s *store.Store, ip netip.Addr) error {
	ctx := context.Background()
	h, err := s.History(ctx, ip, time.Now())
	if err != nil {
		return err
	}
	hits, err := s.TrapHits(ctx, ip, 50)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\nHISTORY OF %s\n", ip)
	if h.FirstSeen == nil {
		fmt.Fprintln(w, "no record: no trap hit, listing or refusal kept")
		return nil
	}
	fmt.Fprintf(w, "first seen %s, last seen %s\n", storeTime(*h.FirstSeen), storeTime(*h.LastSeen))
	if d := h.Deferral; d != nil {
		removed := "listing stands"
		if d.Removed != nil {
			removed = "listing removed " + storeTime(*d.Removed)
		}
		fmt.Fprintf(w, "delist-and-deliver: %d attempts deferred since %s (%s)\n", d.Count, storeTime(d.Since), removed)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(h.Events) > 0 {
		fmt.Fprintln(tw, "\nTIME\tEVENT\tPREFIX\tBY\tCATEGORY\tEXPIRES\tDETAIL")
		for _, e := range h.Events {
			exp := "-"
			if e.Expires != nil {
				exp = storeTime(*e.Expires)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", storeTime(e.At), e.Kind, e.Prefix, storeDash(e.By),
				storeDash(e.Category), exp, storeDash(storeOneLine(e.Detail, 80)))
		}
	}
	if len(h.Days) > 0 {
		fmt.Fprintln(tw, "\nDAY\tTRAP HITS\tREFUSED\tDEFERRED\tHELO")
		for _, d := range h.Days {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", d.Day.Format(time.DateOnly), d.TrapHits, d.Refused, d.Deferred,
				storeDash(storeOneLine(strings.Join(d.HELOs, ", "), 80)))
		}
	}
	if len(hits) > 0 {
		fmt.Fprintln(tw, "\nTRAP HIT\tFROM\tHELO\tMAIL FROM\tTRAP\tQUEUE ID\tREVERSE DNS")
		for _, x := range hits {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", storeTime(x.Time), x.IP, storeDash(storeOneLine(x.HELO, 60)),
				storeDash(storeOneLine(x.MailFrom, 60)), storeOneLine(x.Trap, 60), storeDash(storeOneLine(x.QueueID, 20)),
				storeDash(storeOneLine(x.RDNS, 60)))
		}
	}
	return tw.Flush()
}

func requestsDecide(approve bool) func(c *cmdCtx, args []string) error {
	return func(c *cmdCtx, args []string) error {
		if len(args) == 0 {
			return usageError("no request ID given")
		}
		var ids []int64
		for _, a := range args {
			id, err := strconv.ParseInt(strings.TrimPrefix(a, "#"), 10, 64)
			if err != nil || id <= 0 {
				return usageError(fmt.Sprintf("%q is not a request ID", a))
			}
			ids = append(ids, id)
		}
		s, _, err := c.openStore()
		if err != nil {
			return err
		}
		defer s.Close()
		ctx := context.Background()
		failed := false
		for _, id := range ids {
			if approve {
				err = s.ApproveRequest(ctx, id, storeOperator())
			} else {
				err = s.DenyRequest(ctx, id, storeOperator())
			}
			var r store.RemovalRequest
			if err == nil {
				r, err = s.Request(ctx, id)
			}
			if err != nil {
				fmt.Fprintf(c.stderr, "blmilter %s: %v\n", c.cmd.name, err)
				failed = true
				continue
			}
			fmt.Fprintf(c.stdout, "request %d for %s: %s\n", r.ID, r.IP, r.Status)
		}
		if failed {
			return exitCode(1)
		}
		return nil
	}
}

func storeWriteRequests(w io.Writer, rs []store.RemovalRequest) {
	if len(rs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tIP\tEMAIL\tCREATED\tCONFIRMED\tDECIDED BY\tREASON")
	for _, r := range rs {
		confirmed := "-"
		if r.Verified != nil {
			confirmed = storeTime(*r.Verified)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Status, r.IP, storeOneLine(r.Email, 60),
			storeTime(r.Created), confirmed, storeDash(r.DecidedBy), storeDash(storeOneLine(r.Reason, 60)))
	}
	tw.Flush()
}

// storeParseExpiry reads -expires, a Go duration or a number of days
// ("30d"), as the time the listing expires counted from now. A lifetime
// that would end after the year 9999 is refused, never wrapped.
func storeParseExpiry(s string, now time.Time) (time.Time, error) {
	var t time.Time
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(d, 64)
		if err != nil || n <= 0 || math.IsInf(n, 0) || math.IsNaN(n) {
			return time.Time{}, fmt.Errorf("%q is not a positive number of days", s)
		}
		if n > 8000*366 {
			return time.Time{}, fmt.Errorf("%q is too long: a listing expires by the year 9999 at the latest", s)
		}
		whole := math.Floor(n)
		t = now.AddDate(0, 0, int(whole)).Add(time.Duration((n - whole) * float64(24*time.Hour)))
	} else {
		d, err := time.ParseDuration(s)
		if err != nil {
			return time.Time{}, fmt.Errorf("%q is not a duration such as 720h or a number of days such as 30d", s)
		}
		if d <= 0 {
			return time.Time{}, fmt.Errorf("%q is not a positive duration", s)
		}
		t = now.Add(d)
	}
	if err := store.CheckTime("the expiry", t); err != nil {
		return time.Time{}, fmt.Errorf("%q is too long: a listing expires by the year 9999 at the latest", s)
	}
	return t, nil
}

func storeUntil(t *time.Time) string {
	if t == nil {
		return ""
	}
	return " until " + storeTime(*t)
}

func storeTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") }

func storeDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// storeOneLine keeps requester-supplied text from breaking the table (or
// the terminal): control characters become spaces, long text is cut.
func storeOneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
	if r := []rune(s); len(r) > n {
		s = string(r[:n-1]) + "…"
	}
	return s
}
