//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/miekg/dns"
)

// loadReport is the part of blmload -json output the comparison uses.
type loadReport struct {
	Sessions int            `json:"sessions"`
	Errors   int            `json:"errors"`
	Elapsed  float64        `json:"elapsed_s"`
	Rate     float64        `json:"sessions_per_s"`
	P50      float64        `json:"p50_ms"`
	P99      float64        `json:"p99_ms"`
	Max      float64        `json:"max_ms"`
	Codes    map[string]int `json:"codes"`
	First    string         `json:"first_error"`
}

// envInt reads a positive integer knob of the load test.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// slowListDelay is how late the slow list of the latency row answers.
const slowListDelay = 250 * time.Millisecond

// TestLoad measures, in one run and with the same client spread for each,
// sessions per second through private Postfix instances:
//
//	(a) no milter, no policy service
//	(b) the no-op milter (e2e/noopmilter)
//	(c) blmilter as milter, warm cache
//	(d) blmilter as policy server (check_policy_service)
//	(e) no policy service, the same restrictions otherwise (the same Postfix as a)
//	(j) policyd-weight as policy server, its DNS list checks only, on the
//	    same lists with the same weights (see policydWeight)
//	(f) blmilter as milter, cold cache: every session a new client, with a message
//	(g) rspamd as milter, its RBL module only, the same clients and messages as f
//
// and at the milter protocol itself, blmload playing the MTA (no Postfix in
// between, so the filter's own cost shows), cold cache:
//
//	(h) blmilter milter, every session a new client, with a message
//	(i) rspamd milter (RBL module only), the same clients and messages as h
//	(l) blmilter milter, cold, one of the three lists answering after 250 ms
//	    (a delaying DNS server in this test in front of rbldnsd): the time
//	    of a session is the time of its check. The workers start spread
//	    over those 250 ms, as clients arrive apart: started together, all
//	    sixteen checks would end in the same instant on two CPUs, and the
//	    last would wait for the other fifteen
//
// Every filter asks the same rbldnsd about the same three lists (bl, wl,
// pbl), except policyd-weight, which can only ask port 53: it asks a second
// rbldnsd serving the same zone files there. Half the cold clients are
// listed. rspamd decides at the end of the
// message, so the cold rows send one (-data) for every filter alike;
// blmilter refuses at RCPT, which is where an MTA would stop.
//
// It reports c/b (target 0.95 or more: blmilter costs next to nothing on
// top of having a milter at all), d/e (0.90 or more), d/j (blmilter's
// policy server against policyd-weight), f/g, h/i (1.3 or
// more: the cold path ahead of rspamd), and for l the p50 and p99 of a
// check, which should be within a millisecond of 250 ms, each check's time
// beyond the slow list's answer to it, and the longest session, which must
// stay under the policy deadline. Each round runs every variant,
// in reverse order every other round, so drift and other load on the
// machine hit all alike; each variant's figure is its median round. Figures
// go to the log, not into assertions: the test fails only if sessions fail,
// a filter does not judge (policyd-weight must refuse as many of the warm
// sessions as blmilter's policy server), or a session outlasts the
// deadline.
//
// With -tags e2e it runs one short round, so its whole path is exercised;
// e2e/load.sh runs it at full size for figures. BLMILTER_LOAD_N (sessions
// per round, default 300), BLMILTER_LOAD_C (workers, default 16) and
// BLMILTER_LOAD_ROUNDS (default 1) size it.
func TestLoad(t *testing.T) {
	need(t, "postfix", "rbldnsd", "rspamd", "policyd-weight", "unshare")
	n := envInt("BLMILTER_LOAD_N", 300)
	c := envInt("BLMILTER_LOAD_C", 16)
	rounds := envInt("BLMILTER_LOAD_ROUNDS", 1)
	// At slowListDelay a session, the latency row gets fewer sessions.
	nSlow := min(n, 20*c)
	// Each cold round takes 2n new addresses (f and g share theirs, as do h
	// and i); the top of the pool is for warming up.
	const coldWarmup = 200
	if need := 2 * n * rounds; need > coldPoolSize-coldWarmup {
		t.Fatalf("the cold rows need %d new client addresses, the pool has %d: lower BLMILTER_LOAD_N or BLMILTER_LOAD_ROUNDS",
			need, coldPoolSize-coldWarmup)
	}
	load := testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmload")

	dns := startRbldnsd(t)
	// Decisions are logged at info to a file, as in production (a file or
	// the journal), not into this test process, which shares the CPUs.
	b := startBlmilter(t, blmilterOpts{DNS: dns, LogLevel: "info", LogFile: true, Extra: dynListTOML})
	slowDNS := startSlowList(t, dns, zoneBlock, slowListDelay)
	slow := startBlmilter(t, blmilterOpts{DNS: slowDNS.Addr, LogLevel: "info", LogFile: true, NoPolicyd: true, Extra: dynListTOML})
	noop := startNoopMilter(t)
	rs := startRspamd(t, dns)
	pw := startPolicydWeight(t, startRbldnsdPort53(t))

	// Postfix opens a milter connection for the TCP peer and another after
	// XCLIENT; real traffic has one per session. smtpd_milter_maps turns
	// the milters off for the peer, 127.0.0.1, so only the XCLIENT client
	// (the one a real session would have) reaches them.
	const oneMilterConn = "smtpd_milter_maps = inline:{ 127.0.0.1=DISABLE }\n"
	plain := startPostfix(t, postfixOpts{})
	pfBlmilter := startPostfix(t, postfixOpts{Milter: "inet:" + b.Milter, Extra: oneMilterConn})
	pfRspamd := startPostfix(t, postfixOpts{Milter: "inet:" + rs.Milter, Extra: oneMilterConn})

	runLoad := func(args ...string) loadReport {
		t.Helper()
		args = append([]string{"-c", strconv.Itoa(c), "-duration", "90s", "-timeout", "30s", "-json"}, args...)
		out, err := exec.Command(load, args...).Output()
		if err != nil {
			t.Fatalf("blmload %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		var r loadReport
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("blmload output: %v\n%s", err, out)
		}
		if r.Errors > 0 {
			t.Fatalf("blmload %s: %d failed sessions, first: %s", strings.Join(args, " "), r.Errors, r.First)
		}
		return r
	}
	// warm sends sessions from the warm pool (198.19.0.0/24: the first
	// quarter is listed) through an MTA; cold sends sessions from new
	// addresses of the cold pool, starting at first.
	warm := func(addr string) func(sessions, first int) loadReport {
		return func(sessions, _ int) loadReport {
			return runLoad("-addr", addr, "-n", strconv.Itoa(sessions), "-clients", clientLoadPool)
		}
	}
	cold := func(addr string, extra ...string) func(sessions, first int) loadReport {
		return func(sessions, first int) loadReport {
			return runLoad(append([]string{"-addr", addr, "-n", strconv.Itoa(sessions), "-clients", clientColdPool,
				"-first", strconv.Itoa(first)}, extra...)...)
		}
	}

	type variant struct {
		key, name string
		run       func(sessions, first int) loadReport
		sessions  int
		coldPair  string               // the variant using the same new addresses ("" if warm)
		cpuOf     func() time.Duration // the filter's CPU time so far, reported per session (nil: not reported)
		cpu       []float64
		rates     []float64
		p50, p99  []float64
		max       float64
		last      loadReport
		codes     map[string]int
		done      int // sessions completed in the rounds
	}
	vs := []*variant{
		{key: "a", name: "Postfix, no milter", run: warm(plain.Addr)},
		{key: "b", name: "Postfix + no-op milter", run: warm(startPostfix(t, postfixOpts{Milter: "inet:" + noop.addr, Extra: oneMilterConn}).Addr)},
		{key: "c", name: "Postfix + blmilter milter (warm cache)", run: warm(pfBlmilter.Addr)},
		{key: "d", name: "Postfix + blmilter policy server", run: warm(startPostfix(t, postfixOpts{Policy: "inet:" + b.Policy}).Addr),
			cpuOf: func() time.Duration { return groupCPU(t, b.p) }},
		{key: "e", name: "Postfix, no policy service", run: warm(plain.Addr)},
		{key: "j", name: "Postfix + policyd-weight (DNS lists only)", run: warm(startPostfix(t, postfixOpts{Policy: "inet:" + pw.Addr}).Addr),
			cpuOf: func() time.Duration { return pidNamespaceCPU(t, pw.p) }},
		{key: "f", name: "Postfix + blmilter milter, cold, message", run: cold(pfBlmilter.Addr, "-data"), coldPair: "g"},
		{key: "g", name: "Postfix + rspamd milter (RBL only), cold, message", run: cold(pfRspamd.Addr, "-data"), coldPair: "f"},
		{key: "h", name: "blmilter milter, cold, message", run: cold(b.Milter, "-milter", "-data"), coldPair: "i",
			cpuOf: func() time.Duration { return groupCPU(t, b.p) }},
		{key: "i", name: "rspamd milter (RBL only), cold, message", run: cold(rs.Milter, "-milter", "-data"), coldPair: "h",
			cpuOf: func() time.Duration { return groupCPU(t, rs.p) }},
		{key: "l", name: "blmilter milter, cold, one list at 250 ms", run: cold(slow.Milter, "-milter", "-stagger", slowListDelay.String()), sessions: nSlow},
	}
	byKey := map[string]*variant{}
	for _, v := range vs {
		byKey[v.key] = v
		if v.sessions == 0 {
			v.sessions = n
		}
		v.codes = map[string]int{}
	}

	// Warm up every instance, and blmilter's cache for the warm pool: each
	// address of the pool at least once through the milter and the policy
	// server. The cold variants warm up on the top of the cold pool, which
	// the rounds never reach.
	for _, v := range vs {
		switch {
		case v.coldPair == "" && v.key != "l":
			v.run(600, 0)
		case v.key == "l":
			v.run(c, coldPoolSize-coldWarmup)
		default:
			v.run(coldWarmup, coldPoolSize-coldWarmup)
		}
	}
	// The decision log is written in batches: wait for the warm-up's lines,
	// so none of them is counted as a check of the rounds.
	testkit.WaitFor(t, "the slow blmilter's warm-up decisions in its log", 5*time.Second, func() error {
		if n := len(slow.checks(t, 0)); n < c {
			return fmt.Errorf("%d of %d warm-up checks logged", n, c)
		}
		return nil
	})
	slowLogFrom := slow.logSize(t)
	slowAnswersFrom := len(slowDNS.answerTimes())
	nextCold := 0
	for round := range rounds {
		order := slices.Clone(vs)
		if round%2 == 1 {
			slices.Reverse(order) // so no variant always follows the same one
		}
		first := map[string]int{"f": nextCold, "g": nextCold, "h": nextCold + n, "i": nextCold + n, "l": round * nSlow}
		nextCold += 2 * n
		for _, v := range order {
			var cpu0 time.Duration
			if v.cpuOf != nil {
				cpu0 = v.cpuOf()
			}
			r := v.run(v.sessions, first[v.key])
			if v.cpuOf != nil {
				v.cpu = append(v.cpu, float64((v.cpuOf()-cpu0).Microseconds())/float64(r.Sessions))
			}
			v.rates = append(v.rates, r.Rate)
			v.p50 = append(v.p50, r.P50)
			v.p99 = append(v.p99, r.P99)
			v.max = max(v.max, r.Max)
			v.last = r
			v.done += r.Sessions
			for code, k := range r.Codes {
				v.codes[code] += k
			}
			t.Logf("round %d %s %-50s %7.1f sessions/s  p50 %6.2f ms  p99 %6.2f ms  max %7.2f ms  replies %v",
				round+1, v.key, v.name, r.Rate, r.P50, r.P99, r.Max, r.Codes)
		}
	}

	median := func(xs []float64) float64 {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[len(s)/2]
	}
	var report strings.Builder
	fmt.Fprintf(&report, "load: %d sessions per round (%d for l), %d workers, %d rounds, medians:\n", n, nSlow, c, rounds)
	for _, v := range vs {
		fmt.Fprintf(&report, "  (%s) %-50s %7.1f sessions/s  (p50 %.2f ms, p99 %.2f ms, max %.2f ms)\n",
			v.key, v.name, median(v.rates), median(v.p50), median(v.p99), v.max)
	}
	// Pairs run next to each other in every round: the median of their
	// per-round ratios is less exposed to other load on the machine than
	// the ratio of medians.
	pairRatio := func(x, y string) float64 {
		a, b := byKey[x], byKey[y]
		r := make([]float64, len(a.rates))
		for i := range r {
			r[i] = a.rates[i] / b.rates[i]
		}
		return median(r)
	}
	fmt.Fprintf(&report, "  median of per-round ratios: c/b = %.3f (target >= 0.95)   d/e = %.3f (target >= 0.90)   d/j = %.3f (blmilter policy server / policyd-weight)\n",
		pairRatio("c", "b"), pairRatio("d", "e"), pairRatio("d", "j"))
	fmt.Fprintf(&report, "  cold, against rspamd, median of per-round ratios: h/i = %.3f at the milter protocol (target >= 1.3)   f/g = %.3f through Postfix\n",
		pairRatio("h", "i"), pairRatio("f", "g"))
	// CPU time is steadier than a rate on a machine shared with other work.
	fmt.Fprintf(&report, "  cold, CPU time per session of the filter itself (h/i, all its processes): blmilter %.0f µs, rspamd %.0f µs (rspamd/blmilter = %.3f)\n",
		median(byKey["h"].cpu), median(byKey["i"].cpu), median(byKey["i"].cpu)/median(byKey["h"].cpu))
	fmt.Fprintf(&report, "  warm, CPU time per session of the policy server itself (d/j, all its processes): blmilter %.0f µs, policyd-weight %.0f µs (policyd-weight/blmilter = %.3f)\n",
		median(byKey["d"].cpu), median(byKey["j"].cpu), median(byKey["j"].cpu)/median(byKey["d"].cpu))
	// The check itself, as blmilter timed it (from connect to verdict),
	// without the milter round trips of a session.
	// The slow list's own answer times, as its server saw them, show how
	// much of a check's time is the list's and how much blmilter's.
	l := byKey["l"]
	var logged []check
	testkit.WaitFor(t, "the slow blmilter's decisions in its log", 5*time.Second, func() error {
		if logged = slow.checks(t, slowLogFrom); len(logged) < l.sessions*rounds {
			return fmt.Errorf("%d of %d checks logged", len(logged), l.sessions*rounds)
		}
		return nil
	})
	late := slowDNS.answers()[slowAnswersFrom:]
	answers := make([]time.Duration, len(late))
	answerOf := make(map[string]time.Duration, len(late))
	for i, a := range late {
		answers[i] = a.took
		if ip, ok := ipOfQName(a.name, zoneBlock); ok {
			answerOf[ip] = a.took
		}
	}
	// Each check against its own slow answer: what blmilter adds to the
	// slowest list's answer time, the sockets both ways included.
	checks := make([]time.Duration, len(logged))
	var beyond []time.Duration
	for i, c := range logged {
		checks[i] = c.took
		if a, ok := answerOf[c.ip]; ok {
			beyond = append(beyond, c.took-a)
		}
	}
	pct := func(ds []time.Duration, q float64) float64 {
		if len(ds) == 0 {
			return 0
		}
		ds = slices.Clone(ds)
		slices.Sort(ds)
		return float64(ds[min(len(ds)-1, int(q*float64(len(ds))))]) / float64(time.Millisecond)
	}
	fmt.Fprintf(&report, "  one list at %v (l): checks p50 %.2f ms, p99 %.2f ms, longest %.2f ms (target: within 1 ms of %v); the slow list's answers p50 %.2f ms, p99 %.2f ms; sessions p50 %.2f ms, p99 %.2f ms, longest %.2f ms (deadline %v)\n",
		slowListDelay, pct(checks, 0.50), pct(checks, 0.99), pct(checks, 1), slowListDelay, pct(answers, 0.50), pct(answers, 0.99),
		median(l.p50), median(l.p99), l.max, policyDeadline)
	fmt.Fprintf(&report, "  one list at %v (l), each check beyond its own slow answer (%d paired): p50 %.2f ms, p99 %.2f ms, longest %.2f ms (target: under 1 ms)\n",
		slowListDelay, len(beyond), pct(beyond, 0.50), pct(beyond, 0.99), pct(beyond, 1))
	fmt.Fprintf(&report, "  ratios of medians:          c/b = %.3f   d/e = %.3f   d/j = %.3f   b/a = %.3f (what any milter costs)\n",
		median(byKey["c"].rates)/median(byKey["b"].rates), median(byKey["d"].rates)/median(byKey["e"].rates),
		median(byKey["d"].rates)/median(byKey["j"].rates), median(byKey["b"].rates)/median(byKey["a"].rates))
	t.Log(report.String())
	if out := os.Getenv("BLMILTER_LOAD_REPORT"); out != "" {
		os.WriteFile(out, []byte(report.String()), 0o644)
	}

	// Every filter must have judged: the listed clients refused, the others
	// let through. A filter that accepts everything is fast for nothing.
	for _, k := range []string{"c", "d", "j", "f", "g", "h", "i", "l"} {
		v := byKey[k]
		if refusals(v.codes) == 0 || v.codes["250"] == 0 {
			t.Errorf("(%s) %s: replies %v, want both refusals and 250", v.key, v.name, v.codes)
		}
	}
	// The policy servers see the same clients in every round (blmload
	// takes the warm pool's addresses in order): policyd-weight must refuse
	// as many as blmilter, unless -duration cut a run short.
	if d, j := byKey["d"], byKey["j"]; d.done == j.done && refusals(d.codes) != refusals(j.codes) {
		t.Errorf("(j) %s refused %d sessions, (d) %s %d: replies %v and %v",
			j.name, refusals(j.codes), d.name, refusals(d.codes), j.codes, d.codes)
	}
	// Half the cold clients are listed: the cold rows must refuse half.
	for _, k := range []string{"f", "g", "h", "i", "l"} {
		v := byKey[k]
		if got, want := v.codes["250"], v.sessions*rounds/2; got < want-rounds || got > want+rounds {
			t.Errorf("(%s) %s: %d sessions accepted, want %d (half): replies %v", v.key, v.name, got, want, v.codes)
		}
	}
	if len(beyond) < len(checks)*9/10 {
		t.Errorf("(l) only %d of %d checks paired with the slow list's answer to them", len(beyond), len(checks))
	}
	if len(checks) != l.sessions*rounds {
		t.Errorf("(l) %d uncached checks in blmilter's log, want one per session (%d)", len(checks), l.sessions*rounds)
	}
	if l.max >= float64(policyDeadline.Milliseconds()) {
		t.Errorf("(l) a session took %.2f ms with one list at %v, longer than the policy deadline %v", l.max, slowListDelay, policyDeadline)
	}
}

// ipOfQName is the IPv4 address that name asks about in zone
// ("4.3.2.1.zone." asks about 1.2.3.4).
func ipOfQName(name, zone string) (string, bool) {
	rest, ok := strings.CutSuffix(strings.ToLower(name), "."+strings.ToLower(dns.Fqdn(zone)))
	if !ok {
		return "", false
	}
	labels := strings.Split(rest, ".")
	if len(labels) != 4 {
		return "", false
	}
	slices.Reverse(labels)
	ip, err := netip.ParseAddr(strings.Join(labels, "."))
	if err != nil || !ip.Is4() {
		return "", false
	}
	return ip.String(), true
}

// refusals counts the 5xx replies among codes.
func refusals(codes map[string]int) int {
	n := 0
	for code, k := range codes {
		if strings.HasPrefix(code, "5") {
			n += k
		}
	}
	return n
}

// policyDeadline is [policy] deadline in the test config: the default.
var policyDeadline = config.Defaults().Policy.Deadline.Duration

// groupCPU is the CPU time (user and system) used so far by the processes
// of p's process group: a daemon and the workers it forked.
func groupCPU(t testing.TB, p *proc) time.Duration {
	t.Helper()
	pgid := strconv.Itoa(p.cmd.Process.Pid)
	return procsCPU(t, func(_ string, f []string) bool { return f[2] == pgid }, false)
}

// pidNamespaceCPU is the CPU time (user and system) used so far by the
// processes in the PID namespace that p (unshare --pid --fork) made,
// together with that of their children that exited and were waited for:
// policyd-weight's master, its workers, which come and go, and its cache
// process, which leaves the process group.
func pidNamespaceCPU(t testing.TB, p *proc) time.Duration {
	t.Helper()
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.cmd.Process.Pid, p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(children)), " ")
	ns, err := os.Readlink("/proc/" + first + "/ns/pid")
	if err != nil {
		t.Fatalf("the PID namespace of %s's child: %v", p.name, err)
	}
	return procsCPU(t, func(pid string, _ []string) bool {
		l, err := os.Readlink("/proc/" + pid + "/ns/pid")
		return err == nil && l == ns
	}, true)
}

// procsCPU sums the CPU time (utime and stime, with reaped also cutime and
// cstime: that of exited children waited for) of every process for which
// keep says so, given its pid and its stat fields (see procStat).
func procsCPU(t testing.TB, keep func(pid string, f []string) bool, reaped bool) time.Duration {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	last := 13 // utime f[11], stime f[12]
	if reaped {
		last = 15 // and cutime f[13], cstime f[14]
	}
	var ticks int64
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		f, ok := procStat(e.Name())
		if !ok || len(f) < last || !keep(e.Name(), f) {
			continue // gone meanwhile, or not one of them
		}
		for _, k := range f[11:last] {
			n, _ := strconv.ParseInt(k, 10, 64)
			ticks += n
		}
	}
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(ticks) * time.Second / clockTicks
}
