// Command blmload pushes many short SMTP sessions through a mail server and
// reports how many it completed per second: the load tool for measuring what
// blmilter costs a Postfix.
//
// Each session is: connect, EHLO, XCLIENT ADDR=<next client address>,
// EHLO, MAIL FROM, RCPT TO, QUIT. XCLIENT lets one loopback client speak
// for many client addresses, so the milter or policy server sees a spread
// of addresses (Postfix must list the load host in
// smtpd_authorized_xclient_hosts). With -xclient=false the sessions come
// from the TCP peer address.
//
// With -data, an accepted RCPT is followed by DATA and a short message, and
// the reply to its end counts (for filters that decide at the end of the
// message). With -milter, blmload speaks the milter protocol to the filter
// itself instead of SMTP to a mail server (see milter.go). -first N starts
// at the N-th client address, so that runs one after another can each use
// addresses the filter has not seen yet.
//
// The run is bounded both by -n sessions and by -duration; -c workers run
// sessions concurrently. The report gives sessions/s, latency percentiles
// of whole sessions and a count of the replies to RCPT (or of the first
// reply that was not a success, or "error" for network failures).
//
//	blmload -addr 127.0.0.1:2525 -n 20000 -c 32 -duration 60s -clients 203.0.113.0/24
//	blmload -milter -data -addr inet:127.0.0.1:8895 -n 5000 -first 20000 -clients 198.18.128.0/17,198.19.128.0/17
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// config is the parsed command line.
type config struct {
	Addr     string
	N        int
	C        int
	Duration time.Duration
	Timeout  time.Duration
	Clients  []netip.Prefix
	XClient  bool
	Helo     string
	From     string
	Rcpt     string
	JSON     bool
	Milter   bool // speak the milter protocol to Addr
	Data     bool // send a message after an accepted RCPT
	First    int  // index of the first client address
	// Stagger spreads the workers' first sessions evenly over this time,
	// so sessions that all take about as long do not arrive in lockstep.
	Stagger time.Duration
}

// Report is the outcome of a run; -json prints it as JSON.
type Report struct {
	Target     string         `json:"target"`
	Sessions   int            `json:"sessions"` // completed, with any reply
	Errors     int            `json:"errors"`   // network or protocol failures
	Elapsed    float64        `json:"elapsed_s"`
	Rate       float64        `json:"sessions_per_s"`
	P50        float64        `json:"p50_ms"`
	P90        float64        `json:"p90_ms"`
	P99        float64        `json:"p99_ms"`
	Max        float64        `json:"max_ms"`
	Codes      map[string]int `json:"codes"` // RCPT reply (or first failure) → count
	Workers    int            `json:"workers"`
	FirstError string         `json:"first_error,omitempty"`
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "blmload:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep := Run(ctx, cfg)
	if cfg.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		rep.print(os.Stdout)
	}
	if rep.Sessions == 0 {
		os.Exit(1)
	}
}

func parseFlags(args []string, errOut io.Writer) (config, error) {
	fs := flag.NewFlagSet("blmload", flag.ContinueOnError)
	fs.SetOutput(errOut)
	var cfg config
	var clients string
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:25", "SMTP server host:port")
	fs.IntVar(&cfg.N, "n", 10000, "sessions at most")
	fs.IntVar(&cfg.C, "c", 16, "concurrent sessions")
	fs.DurationVar(&cfg.Duration, "duration", time.Minute, "run at most this long")
	fs.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "give up on a session after this long")
	fs.StringVar(&clients, "clients", "203.0.113.0/24", "comma-separated networks the XCLIENT addresses are taken from, in turn")
	fs.BoolVar(&cfg.XClient, "xclient", true, "send XCLIENT ADDR= for each session")
	fs.StringVar(&cfg.Helo, "helo", "load.example.org", "EHLO name")
	fs.StringVar(&cfg.From, "from", "load@example.org", "MAIL FROM address")
	fs.StringVar(&cfg.Rcpt, "rcpt", "user@e2e.test", "RCPT TO address")
	fs.BoolVar(&cfg.JSON, "json", false, "print the report as JSON")
	fs.BoolVar(&cfg.Milter, "milter", false, "speak the milter protocol to -addr (host:port, inet:host:port or unix:/path), as an MTA does")
	fs.BoolVar(&cfg.Data, "data", false, "after an accepted RCPT, send a short message; its end decides")
	fs.IntVar(&cfg.First, "first", 0, "start at this client address of -clients (0 is the first)")
	fs.DurationVar(&cfg.Stagger, "stagger", 0, "spread the workers' first sessions evenly over this time, as clients arrive apart rather than all at once")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	switch {
	case cfg.N < 1:
		return cfg, fmt.Errorf("-n must be at least 1")
	case cfg.C < 1:
		return cfg, fmt.Errorf("-c must be at least 1")
	case cfg.Duration <= 0:
		return cfg, fmt.Errorf("-duration must be positive")
	case cfg.Timeout <= 0:
		return cfg, fmt.Errorf("-timeout must be positive")
	case cfg.First < 0:
		return cfg, fmt.Errorf("-first must not be negative")
	case cfg.Stagger < 0:
		return cfg, fmt.Errorf("-stagger must not be negative")
	}
	for _, s := range strings.Split(clients, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return cfg, fmt.Errorf("-clients: %w", err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		cfg.Clients = append(cfg.Clients, p.Masked())
	}
	if (cfg.XClient || cfg.Milter) && len(cfg.Clients) == 0 {
		return cfg, fmt.Errorf("-clients: at least one network is needed with -xclient or -milter")
	}
	return cfg, nil
}

// clientAddr returns the i-th client address: the networks take turns, and
// within a network the addresses are used in order, wrapping around.
func clientAddr(nets []netip.Prefix, i int) netip.Addr {
	p := nets[i%len(nets)]
	k := i / len(nets)
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits < 62 {
		k %= 1 << hostBits
	}
	b := p.Addr().AsSlice()
	n := new(big.Int).SetBytes(b)
	n.Add(n, big.NewInt(int64(k)))
	out := n.FillBytes(make([]byte, len(b)))
	a, _ := netip.AddrFromSlice(out)
	return a
}

// result is one session's outcome.
type result struct {
	code    string // "250", "550", ... or "error"
	latency time.Duration
	err     error
}

// Run runs the load and returns the report. It stops at cfg.N sessions,
// after cfg.Duration, or when ctx is done, whichever comes first.
func Run(ctx context.Context, cfg config) Report {
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	session := func(i int) (string, error) { return oneSession(ctx, cfg, i) }
	if cfg.Milter {
		client := newMilterClient(cfg)
		session = func(i int) (string, error) { return milterSession(ctx, cfg, client, i) }
	}
	var next atomic.Int64
	results := make([][]result, cfg.C)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range cfg.C {
		wg.Go(func() {
			if d := cfg.Stagger * time.Duration(w) / time.Duration(cfg.C); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
			}
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= cfg.N {
					return
				}
				t0 := time.Now()
				code, err := session(i)
				results[w] = append(results[w], result{code: code, latency: time.Since(t0), err: err})
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	rep := Report{Target: cfg.Addr, Codes: map[string]int{}, Workers: cfg.C, Elapsed: elapsed.Seconds()}
	var lat []time.Duration
	for _, rs := range results {
		for _, r := range rs {
			if errors.Is(r.err, context.DeadlineExceeded) || errors.Is(r.err, context.Canceled) {
				continue // cut off by the end of the run, not a failure
			}
			rep.Codes[r.code]++
			if r.code == "error" {
				rep.Errors++
				if rep.FirstError == "" {
					rep.FirstError = r.err.Error()
				}
				continue
			}
			rep.Sessions++
			lat = append(lat, r.latency)
		}
	}
	if elapsed > 0 {
		rep.Rate = float64(rep.Sessions) / elapsed.Seconds()
	}
	slices.Sort(lat)
	rep.P50 = ms(percentile(lat, 0.50))
	rep.P90 = ms(percentile(lat, 0.90))
	rep.P99 = ms(percentile(lat, 0.99))
	if len(lat) > 0 {
		rep.Max = ms(lat[len(lat)-1])
	}
	return rep
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted)) + 0.5)
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	if i > 0 {
		i-- // the q-th value, 1-based
	}
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// oneSession runs session i and returns the reply code to RCPT, or of the
// first reply that was not a success, or "error".
func oneSession(ctx context.Context, cfg config, i int) (string, error) {
	d := net.Dialer{Timeout: cfg.Timeout}
	conn, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		if ctx.Err() != nil {
			err = context.DeadlineExceeded // cut off by the end of the run
		}
		return "error", err
	}
	defer conn.Close()
	deadline := time.Now().Add(cfg.Timeout)
	cutByRun := false // the session's deadline is the end of the run
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline, cutByRun = dl, true
	}
	conn.SetDeadline(deadline)
	tp := textproto.NewConn(conn)

	step := func(expect int, format string, args ...any) (int, error) {
		if format != "" {
			if err := tp.PrintfLine(format, args...); err != nil {
				return 0, err
			}
		}
		code, _, err := tp.ReadResponse(expect)
		return code, err
	}
	fail := func(code int, err error) (string, error) {
		var te *textproto.Error
		if errors.As(err, &te) {
			return strconv.Itoa(te.Code), nil
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() && (cutByRun || ctx.Err() != nil) {
			err = context.DeadlineExceeded
		}
		return "error", err
	}

	if code, err := step(220, ""); err != nil {
		return fail(code, err)
	}
	if code, err := step(250, "EHLO %s", cfg.Helo); err != nil {
		return fail(code, err)
	}
	if cfg.XClient {
		ip := clientAddr(cfg.Clients, cfg.First+i)
		a := ip.String()
		if ip.Is6() {
			a = "IPV6:" + a
		}
		// NAME=[UNAVAILABLE]: the server need not look the address up.
		if code, err := step(220, "XCLIENT NAME=[UNAVAILABLE] ADDR=%s", a); err != nil {
			return fail(code, err)
		}
		if code, err := step(250, "EHLO %s", cfg.Helo); err != nil {
			return fail(code, err)
		}
	}
	if code, err := step(250, "MAIL FROM:<%s>", cfg.From); err != nil {
		return fail(code, err)
	}
	// A refused RCPT still ends with QUIT, so accepted and refused
	// sessions cost the server the same steps.
	rcpt, err := step(25, "RCPT TO:<%s>", cfg.Rcpt)
	result := strconv.Itoa(rcpt)
	if err != nil {
		result, err = fail(rcpt, err)
		if err != nil {
			return result, err
		}
	} else if cfg.Data {
		if code, err := step(354, "DATA"); err != nil {
			return fail(code, err)
		}
		var msg strings.Builder
		for _, f := range messageHeader(cfg, strconv.Itoa(i)) {
			msg.WriteString(f[0] + ": " + f[1] + "\r\n")
		}
		msg.WriteString("\r\n" + messageBody + ".")
		end, err := step(25, "%s", msg.String())
		result = strconv.Itoa(end)
		if err != nil {
			if result, err = fail(end, err); err != nil {
				return result, err
			}
		}
	}
	if _, err := step(221, "QUIT"); err != nil {
		return "error", fmt.Errorf("QUIT: %w", err)
	}
	return result, nil
}

func (r Report) print(w io.Writer) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	fmt.Fprintf(bw, "target          %s\n", r.Target)
	fmt.Fprintf(bw, "sessions        %d in %.2fs with %d workers\n", r.Sessions, r.Elapsed, r.Workers)
	fmt.Fprintf(bw, "sessions/s      %.1f\n", r.Rate)
	fmt.Fprintf(bw, "latency ms      p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n", r.P50, r.P90, r.P99, r.Max)
	codes := make([]string, 0, len(r.Codes))
	for c := range r.Codes {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	fmt.Fprintf(bw, "replies        ")
	for _, c := range codes {
		fmt.Fprintf(bw, " %s:%d", c, r.Codes[c])
	}
	fmt.Fprintln(bw)
	if r.FirstError != "" {
		fmt.Fprintf(bw, "errors          %d, first: %s\n", r.Errors, r.FirstError)
	}
}
