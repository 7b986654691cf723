package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blmilter/blmilter/health"
	"github.com/blmilter/blmilter/metrics"
	"github.com/blmilter/blmilter/zone"
)

var statsCommand = &command{
	name:     "stats",
	synopsis: "show what each list did and would have done, from the running daemon",
	help: `Asks the running blmilter (its admin API on [web] listen, with
[web] admin_token) what each list did since it started: answers by result,
how many clients each list would have refused on its own weight (dry-run and
degraded lists included), how many of those no other list caught, how many an
allow list let through, and each list's health. The answers of a degraded
list, and of one not yet checked by a probe (unproven), count apart: they
refuse nothing. With [zone] served, the zone's serial, queries, answers,
transfers and NOTIFYs follow.

Use it to decide whether a list in dry run is worth turning on.`,
	setup: func(fs *flag.FlagSet) func(c *cmdCtx, args []string) error {
		url := fs.String("url", "", "base URL of the daemon's web service (default: http:// + [web] listen)")
		token := fs.String("token", "", "admin token (default: [web] admin_token)")
		asJSON := fs.Bool("json", false, "print the daemon's JSON as it is")
		return func(c *cmdCtx, args []string) error { return runStats(c, args, *url, *token, *asJSON) }
	},
}

// statsReport is the JSON of /admin/api/stats.
type statsReport struct {
	metrics.Stats
	Health []health.Status `json:"health"`
	Zone   *zone.Stats     `json:"zone,omitempty"` // nil unless [zone] is served
}

func runStats(c *cmdCtx, args []string, url, token string, asJSON bool) error {
	if len(args) > 0 {
		return usageError("no arguments expected")
	}
	if url == "" || token == "" {
		cfg, err := loadConfig(c.configPath)
		if err != nil {
			return err
		}
		if url == "" {
			if cfg.Web.Listen == "" {
				return fmt.Errorf("[web] listen is empty in %s: the daemon has no admin API; give -url", configLabel(c.configPath))
			}
			url = "http://" + cfg.Web.Listen
		}
		if token == "" {
			token = cfg.Web.AdminToken
		}
	}
	if token == "" {
		return fmt.Errorf("no admin token: set [web] admin_token (the admin API is off without one) or give -token")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(url, "/")+"/admin/api/stats", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("ask the daemon: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("read the daemon's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if asJSON {
		_, err := c.stdout.Write(body)
		return err
	}
	var r statsReport
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("daemon's answer: %w", err)
	}
	printStats(c.stdout, r)
	return nil
}

func configLabel(path string) string {
	if path == "" {
		return "the embedded default config"
	}
	return path
}

func printStats(w io.Writer, r statsReport) {
	var actions []string
	for _, a := range []string{"accept", "reject", "tempfail", "tag", "log"} {
		actions = append(actions, fmt.Sprintf("%s %.0f", a, r.Checks[a]))
	}
	fmt.Fprintf(w, "checks: %s\n\n", strings.Join(actions, ", "))
	health := map[string]string{}
	for _, h := range r.Health {
		switch {
		case h.Healthy:
			health[h.List] = "healthy"
		case h.State == "unproven":
			health[h.List] = "NOT YET CHECKED: its hits do not count until it passes a probe"
		default:
			health[h.List] = "DEGRADED: " + h.Reason
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LIST\tLISTED\tCLEAN\tERRORS\tDEGRADED\tUNPROVEN\tWOULD REJECT\tONLY THIS LIST\tALLOW OVERRIDES\tHEALTH")
	for _, l := range r.Lists {
		h := health[l.List]
		if h == "" {
			h = "-"
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\n",
			l.List, l.Listed, l.Clean, l.Errors, l.Degraded, l.Unproven, l.WouldReject, l.Alone, l.Overridden, h)
	}
	tw.Flush()
	if z := r.Zone; z != nil {
		fmt.Fprintf(w, "\nzone: serial %d\n", z.Serial)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  queries\tudp %d, tcp %d\n", z.UDPQueries, z.TCPQueries)
		fmt.Fprintf(tw, "  answers\tlisted %d, nxdomain %d, nodata %d, refused %d, truncated %d, formerr %d, dropped %d\n",
			z.Listed, z.NXDomain, z.NoData, z.Refused, z.Truncated, z.FormErr, z.Dropped)
		fmt.Fprintf(tw, "  transfers\taxfr %d, ixfr %d (%d of them the whole zone), refused %d, failed %d\n",
			z.AXFR, z.IXFR, z.IXFRFull, z.XFRRefused, z.XFRFailed)
		fmt.Fprintf(tw, "  notify\tacked %d, given up %d\n", z.NotifyAcked, z.NotifyGivenUp)
		fmt.Fprintf(tw, "  refused\tbad tsig %d, tcp over the limits %d\n", z.TSIGRefused, z.TCPRefused)
		fmt.Fprintf(tw, "  panics\t%d\n", z.Panics)
		tw.Flush()
	}
}
