package main

// The operator's commands for the site's own list and the removal requests:
//
//	blmilter list add IP-or-CIDR... [-category C] [-reason R] [-expires 720h]
//	blmilter list remove IP-or-CIDR...
//	blmilter list show [IP-or-CIDR...]
//	blmilter requests list [-status open|all|pending|confirmed|waiting|approved|denied|removed]
//	blmilter requests approve|deny ID...
//
// Each takes -db PATH, or -config FILE to use its [store] path. A running
// daemon sees the change within a few seconds and drops its cached
// verdicts for the prefix.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

const storeListUsage = `usage: blmilter list add IP-or-CIDR... [-category C] [-reason R] [-expires 720h] [-db PATH | -config FILE]
       blmilter list remove IP-or-CIDR... [-db PATH | -config FILE]
       blmilter list show [IP-or-CIDR...] [-db PATH | -config FILE]

Manages the site's own list. "show" without arguments lists every live
listing; with an IP it shows the listing that applies to it (which may be a
network around it). -expires takes Go durations (36h, 90m) or days (30d);
without it a listing stays until removed.
`

const storeRequestsUsage = `usage: blmilter requests list [-status open|all|STATUS] [-db PATH | -config FILE]
       blmilter requests approve ID... [-db PATH | -config FILE]
       blmilter requests deny ID... [-db PATH | -config FILE]

Shows and decides removal requests. Approving removes every listing that
contains the request's IP; denying keeps the listing. Statuses: pending (mail
not confirmed), confirmed, waiting (for an operator), approved, denied,
removed (self-service).
`

// runList is "blmilter list ...".
func runList(args []string) int { return storeRunList(args, os.Stdout, os.Stderr) }

// runRequests is "blmilter requests ...".
func runRequests(args []string) int { return storeRunRequests(args, os.Stdout, os.Stderr) }

// storeFlags are the flags every store command takes.
type storeFlags struct {
	fs         *flag.FlagSet
	db, config string
}

func newStoreFlags(name, usage string, stderr io.Writer) *storeFlags {
	f := &storeFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fmt.Fprintln(stderr, "\nflags:")
		f.fs.PrintDefaults()
	}
	f.fs.StringVar(&f.db, "db", "", "store database `PATH` (default: [store] path of -config, else "+store.DefaultPath+")")
	f.fs.StringVar(&f.config, "config", "", "config `FILE` whose [store] path to use")
	return f
}

// parse parses flags anywhere among the arguments ("add 192.0.2.1 -category
// zombie"); "--" ends the flags.
func (f *storeFlags) parse(args []string) ([]string, error) {
	var rest []string
	for {
		if len(args) > 0 && args[0] == "--" {
			return append(rest, args[1:]...), nil
		}
		if err := f.fs.Parse(args); err != nil {
			return nil, err
		}
		args = f.fs.Args()
		if len(args) == 0 {
			return rest, nil
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
}

// open opens the store named by -db, or the config's [store] path.
func (f *storeFlags) open() (*store.Store, error) {
	path := f.db
	if path == "" {
		cfg := policy.Default()
		if f.config != "" {
			var err error
			if cfg, err = policy.LoadFile(f.config); err != nil {
				return nil, err
			}
		}
		path = cfg.Store.Path
	}
	// The command's own changes reach the daemon through the file; it
	// does not need to watch for anyone else's.
	return store.Open(path, store.Options{PollInterval: -1})
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

func storeRunList(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, storeListUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	verb := args[0]
	f := newStoreFlags("list "+verb, storeListUsage, stderr)
	category := f.fs.String("category", "local", "`CATEGORY` of new listings: zombie, open-proxy, spam-source, dynamic, local")
	reason := f.fs.String("reason", "", "`TEXT` shown on the lookup page")
	expires := f.fs.String("expires", "", "lifetime of new listings, such as 720h or 30d (default: until removed)")
	rest, err := f.parse(args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	switch verb {
	case "add", "remove":
		if len(rest) == 0 {
			fmt.Fprintf(stderr, "blmilter list %s: no IP or CIDR given\n", verb)
			return 2
		}
	case "show":
	default:
		fmt.Fprintf(stderr, "blmilter list: unknown command %q\n\n%s", verb, storeListUsage)
		return 2
	}
	var prefixes []netip.Prefix
	for _, a := range rest {
		p, err := store.ParsePrefix(a)
		if err != nil {
			fmt.Fprintf(stderr, "blmilter list %s: %v\n", verb, err)
			return 2
		}
		prefixes = append(prefixes, p)
	}
	var lifetime time.Duration
	if *expires != "" {
		if lifetime, err = storeParseLifetime(*expires); err != nil {
			fmt.Fprintf(stderr, "blmilter list %s: -expires: %v\n", verb, err)
			return 2
		}
	}

	s, err := f.open()
	if err != nil {
		fmt.Fprintf(stderr, "blmilter list %s: %v\n", verb, err)
		return 1
	}
	defer s.Close()
	ctx := context.Background()
	code := 0
	switch verb {
	case "add":
		for _, p := range prefixes {
			l := store.Listing{Prefix: p, Category: *category, Reason: *reason, Source: storeOperator()}
			if lifetime > 0 {
				t := time.Now().Add(lifetime)
				l.ExpiresAt = &t
			}
			added, err := s.AddListing(ctx, l)
			if err != nil {
				fmt.Fprintf(stderr, "blmilter list add: %v\n", err)
				code = 1
				continue
			}
			fmt.Fprintf(stdout, "listed %s (%s)%s\n", added.Prefix, added.Category, storeUntil(added.ExpiresAt))
		}
	case "remove":
		for _, p := range prefixes {
			if err := s.RemoveListing(ctx, p, storeOperator()); err != nil {
				if errors.Is(err, store.ErrNotFound) {
					err = fmt.Errorf("%s is not listed (give the listed prefix itself: see blmilter list show %s)", p, p.Addr())
				}
				fmt.Fprintf(stderr, "blmilter list remove: %v\n", err)
				code = 1
				continue
			}
			fmt.Fprintf(stdout, "removed %s\n", p)
		}
	case "show":
		ls, err := s.Listings(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "blmilter list show: %v\n", err)
			return 1
		}
		if len(prefixes) > 0 {
			ls, code = storeSelect(s, ls, prefixes, stderr)
		}
		storeWriteListings(stdout, ls)
	}
	return code
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

func storeRunRequests(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, storeRequestsUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	verb := args[0]
	f := newStoreFlags("requests "+verb, storeRequestsUsage, stderr)
	status := f.fs.String("status", "open", "which requests to list: open (pending, confirmed, waiting), all, or one `STATUS`")
	rest, err := f.parse(args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	var ids []int64
	switch verb {
	case "list":
		if len(rest) > 0 {
			fmt.Fprintf(stderr, "blmilter requests list: unexpected arguments %q\n", rest)
			return 2
		}
	case "approve", "deny":
		if len(rest) == 0 {
			fmt.Fprintf(stderr, "blmilter requests %s: no request ID given\n", verb)
			return 2
		}
		for _, a := range rest {
			id, err := strconv.ParseInt(strings.TrimPrefix(a, "#"), 10, 64)
			if err != nil || id <= 0 {
				fmt.Fprintf(stderr, "blmilter requests %s: %q is not a request ID\n", verb, a)
				return 2
			}
			ids = append(ids, id)
		}
	default:
		fmt.Fprintf(stderr, "blmilter requests: unknown command %q\n\n%s", verb, storeRequestsUsage)
		return 2
	}

	s, err := f.open()
	if err != nil {
		fmt.Fprintf(stderr, "blmilter requests %s: %v\n", verb, err)
		return 1
	}
	defer s.Close()
	ctx := context.Background()
	if verb == "list" {
		st := *status
		if st == "all" {
			st = ""
		}
		rs, err := s.Requests(ctx, st)
		if err != nil {
			fmt.Fprintf(stderr, "blmilter requests list: %v\n", err)
			if errors.Is(err, store.ErrInvalid) {
				return 2
			}
			return 1
		}
		storeWriteRequests(stdout, rs)
		return 0
	}
	code := 0
	for _, id := range ids {
		if verb == "approve" {
			err = s.ApproveRequest(ctx, id, storeOperator())
		} else {
			err = s.DenyRequest(ctx, id, storeOperator())
		}
		if err != nil {
			fmt.Fprintf(stderr, "blmilter requests %s: %v\n", verb, err)
			code = 1
			continue
		}
		r, err := s.Request(ctx, id)
		if err != nil {
			fmt.Fprintf(stderr, "blmilter requests %s: %v\n", verb, err)
			code = 1
			continue
		}
		fmt.Fprintf(stdout, "request %d for %s: %s\n", r.ID, r.IP, r.Status)
	}
	return code
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

// storeParseLifetime reads a Go duration or a number of days ("30d").
func storeParseLifetime(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(d, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%q is not a number of days", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration", s)
	}
	return d, nil
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
