package policy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
)

var (
	newEngine = testengine.New
	qname     = testkit.QName
)

const zenConfig = `
[web]
public_url = "https://lookup.example.org"

[[list]]
name = "Spamhaus ZEN"
zone = "zen.test"
weight = 3
codes = { "127.0.0.2" = "spam-source", "127.0.0.4-127.0.0.7" = "zombie", "127.0.0.10-127.0.0.11" = "dynamic" }
`

func TestCheckListedCleanError(t *testing.T) {
	s := dnstest.Start(t)
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, TXT: []string{"exploited host"}})
	s.Set(qname("192.0.2.8", "zen.test"), dnstest.Answer{A: []string{"127.255.255.254"}})
	s.Set(qname("192.0.2.9", "zen.test"), dnstest.Answer{A: []string{"192.0.2.99"}})
	s.Set(qname("192.0.2.10", "zen.test"), dnstest.Answer{Rcode: dns.RcodeServerFailure})
	e := newEngine(t, s, zenConfig, policy.Deps{})
	ctx := context.Background()

	v := e.Check(ctx, netip.MustParseAddr("192.0.2.7"))
	if v.Action != policy.ActionReject || v.Score != 3 || v.Threshold != 3 || len(v.Hits) != 1 || v.Cached {
		t.Fatalf("listed: %+v", v)
	}
	// The verdict needs the A record only; the TXT text is for people and
	// is not fetched on the mail path.
	if h := v.Hits[0]; h.List != "Spamhaus ZEN" || h.Category != "zombie" || h.Code != netip.MustParseAddr("127.0.0.4") || h.Reason != "" || h.Weight != 3 {
		t.Errorf("hit: %+v", h)
	}
	if n := s.QueriesFor(qname("192.0.2.7", "zen.test"), dns.TypeTXT); n != 0 {
		t.Errorf("check sent %d TXT queries", n)
	}

	v = e.Check(ctx, netip.MustParseAddr("192.0.2.1"))
	if v.Action != policy.ActionAccept || v.Score != 0 || len(v.Hits) != 0 || len(v.Errors) != 0 {
		t.Errorf("clean: %+v", v)
	}

	// List errors are never listings, and with on_error = "ignore" they let the client in.
	for _, ip := range []string{"192.0.2.8", "192.0.2.9", "192.0.2.10"} {
		v = e.Check(ctx, netip.MustParseAddr(ip))
		if v.Action != policy.ActionAccept || len(v.Hits) != 0 || len(v.Errors) != 1 || v.Errors[0].List != "Spamhaus ZEN" || v.Errors[0].OnError != "ignore" {
			t.Errorf("%s: %+v", ip, v)
		}
	}
}

func TestOnError(t *testing.T) {
	s := dnstest.Start(t)
	s.SetZone("fail.test", dnstest.Answer{Rcode: dns.RcodeServerFailure})
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	for _, tc := range []struct {
		onError string
		ip      string
		want    policy.Action
	}{
		{"ignore", "192.0.2.1", policy.ActionAccept},
		{"tempfail", "192.0.2.1", policy.ActionTempfail},
		{"tempfail", "192.0.2.7", policy.ActionReject}, // the score decides first
	} {
		t.Run(tc.onError+"/"+tc.ip, func(t *testing.T) {
			e := newEngine(t, s, zenConfig+fmt.Sprintf(`
[[list]]
name = "Failing"
zone = "fail.test"
on_error = %q
`, tc.onError), policy.Deps{})
			v := e.Check(context.Background(), netip.MustParseAddr(tc.ip))
			if v.Action != tc.want {
				t.Errorf("action %s, want %s (%+v)", v.Action, tc.want, v)
			}
			if len(v.Errors) != 1 || v.Errors[0].OnError != tc.onError {
				t.Errorf("errors: %+v", v.Errors)
			}
			if v.Action == policy.ActionTempfail {
				r := e.Reply(&v)
				if r.Code != 451 || r.Enhanced != "4.7.1" || r.Text != "Temporary problem checking client [192.0.2.1]; try again later" {
					t.Errorf("reply: %+v", r)
				}
			}
		})
	}
}

func TestScoring(t *testing.T) {
	s := dnstest.Start(t)
	ip := "192.0.2.7"
	s.Set(qname(ip, "a.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	s.Set(qname(ip, "b.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	s.Set(qname(ip, "wl.test"), dnstest.Answer{A: []string{"127.0.5.2"}})
	list := func(name, zone string, weight float64, extra string) string {
		return fmt.Sprintf("[[list]]\nname = %q\nzone = %q\nweight = %v\n%s\n", name, zone, weight, extra)
	}
	tests := []struct {
		name   string
		config string
		action policy.Action
		score  float64
		hits   int
	}{
		{"one list below threshold", list("A", "a.test", 2, ""), policy.ActionAccept, 2, 1},
		{"two lists add up", list("A", "a.test", 2, "") + list("B", "b.test", 2, ""), policy.ActionReject, 4, 2},
		{"allow list takes off", list("A", "a.test", 3, "") + list("DNSWL", "wl.test", -2, `category = "allow"`), policy.ActionAccept, 1, 2},
		{"dry-run list logged, not scored", list("A", "a.test", 2, "") + list("B", "b.test", 2, "dry_run = true"), policy.ActionAccept, 2, 2},
		{"policy tempfail", "[policy]\naction = \"tempfail\"\n" + list("A", "a.test", 3, ""), policy.ActionTempfail, 3, 1},
		{"policy tag", "[policy]\naction = \"tag\"\n" + list("A", "a.test", 3, ""), policy.ActionTag, 3, 1},
		{"policy log (dry run)", "[policy]\naction = \"log\"\n" + list("A", "a.test", 3, ""), policy.ActionLog, 3, 1},
		{"per-code weight", list("A", "a.test", 1, `codes = { "127.0.0.2" = { category = "zombie", weight = 5 } }`), policy.ActionReject, 5, 1},
		{"fractional threshold", "[policy]\nthreshold = 1.5\n" + list("A", "a.test", 1, "") + list("B", "b.test", 0.5, ""), policy.ActionReject, 1.5, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, s, tc.config, policy.Deps{})
			v := e.Check(context.Background(), netip.MustParseAddr(ip))
			if v.Action != tc.action || v.Score != tc.score || len(v.Hits) != tc.hits {
				t.Errorf("got %s score %v hits %d, want %s %v %d: %+v", v.Action, v.Score, len(v.Hits), tc.action, tc.score, tc.hits, v.Hits)
			}
			for _, h := range v.Hits {
				if h.DryRun && h.Weight != 0 {
					t.Errorf("dry-run hit scored: %+v", h)
				}
			}
		})
	}
}

func TestExempt(t *testing.T) {
	s := dnstest.Start(t)
	s.SetZone("zen.test", dnstest.Answer{A: []string{"127.0.0.2"}})
	e := newEngine(t, s, "[policy]\nallow = [\"10.0.0.0/8\", \"2001:db8:1::/48\", \"192.0.2.55\"]\n"+zenConfig, policy.Deps{})
	for _, tc := range []struct {
		ip   string
		want policy.Skip
	}{
		{"127.0.0.1", policy.SkipLoopback},
		{"::1", policy.SkipLoopback},
		{"::ffff:127.0.0.1", policy.SkipLoopback},
		{"0.0.0.0", policy.SkipLoopback},
		{"10.1.2.3", policy.SkipAllow},
		{"::ffff:10.1.2.3", policy.SkipAllow},
		{"2001:db8:1::25", policy.SkipAllow},
		{"192.0.2.55", policy.SkipAllow},
		{"", policy.SkipInvalid},
	} {
		var ip netip.Addr
		if tc.ip != "" {
			ip = netip.MustParseAddr(tc.ip)
		}
		v := e.Check(context.Background(), ip)
		if v.Skipped != tc.want || v.Action != policy.ActionAccept || len(v.Hits) != 0 {
			t.Errorf("%q: %+v, want skipped %q", tc.ip, v, tc.want)
		}
	}
	if n := s.Queries(); n != 0 {
		t.Errorf("exempt clients caused %d DNS queries", n)
	}
	if v := e.Check(context.Background(), netip.MustParseAddr("192.0.2.56")); v.Skipped != policy.SkipNone || v.Action != policy.ActionReject {
		t.Errorf("a listed client next to an allowed one: %+v", v)
	}
}

func TestDeadline(t *testing.T) {
	s := dnstest.Start(t)
	s.SetZone("silent.test", dnstest.Answer{Silent: true})
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
	e := newEngine(t, s, "[policy]\ndeadline = \"300ms\"\n"+zenConfig+`
[[list]]
name = "Silent"
zone = "silent.test"
timeout = "10s"
`, policy.Deps{})
	start := time.Now()
	v := e.Check(context.Background(), netip.MustParseAddr("192.0.2.7"))
	if el := time.Since(start); el > 300*time.Millisecond+time.Second {
		t.Errorf("check took %v with a 300ms deadline", el)
	}
	if v.Action != policy.ActionReject || len(v.Errors) != 1 || v.Errors[0].List != "Silent" {
		t.Errorf("verdict: %+v", v)
	}
}

func TestListsInParallel(t *testing.T) {
	s := dnstest.Start(t)
	const n, delay = 5, 300 * time.Millisecond
	var config strings.Builder
	config.WriteString("[policy]\ndeadline = \"5s\"\n")
	for i := range n {
		zone := fmt.Sprintf("slow%d.test", i)
		s.SetZone(zone, dnstest.Answer{Rcode: dns.RcodeNameError, Delay: delay})
		fmt.Fprintf(&config, "[[list]]\nname = \"slow%d\"\nzone = %q\ntimeout = \"4s\"\n", i, zone)
	}
	e := newEngine(t, s, config.String(), policy.Deps{})
	start := time.Now()
	v := e.Check(context.Background(), netip.MustParseAddr("192.0.2.7"))
	el := time.Since(start)
	if len(v.Errors) != 0 {
		t.Fatalf("errors: %+v", v.Errors)
	}
	// In series this would take n*delay = 1.5s.
	if el >= n*delay-delay {
		t.Errorf("%d lists of %v each took %v: not asked in parallel", n, delay, el)
	}
}

func TestCache(t *testing.T) {
	s := dnstest.Start(t)
	name := qname("192.0.2.7", "zen.test")
	s.Set(name, dnstest.Answer{A: []string{"127.0.0.4"}, TTL: 1})
	e := newEngine(t, s, zenConfig, policy.Deps{})
	ip := netip.MustParseAddr("192.0.2.7")
	ctx := context.Background()

	v := e.Check(ctx, ip)
	if v.Cached || s.QueriesFor(name, dns.TypeA) != 1 {
		t.Fatalf("first check: cached %v, queries %d", v.Cached, s.QueriesFor(name, dns.TypeA))
	}
	v2 := e.Check(ctx, ip)
	if !v2.Cached || v2.Action != policy.ActionReject || v2.Hits[0].Category != "zombie" || s.QueriesFor(name, dns.TypeA) != 1 {
		t.Errorf("second check: %+v, queries %d", v2, s.QueriesFor(name, dns.TypeA))
	}

	// The answer's TTL of 1s is raised to min_ttl (1m): still cached after it.
	time.Sleep(1100 * time.Millisecond)
	if v := e.Check(ctx, ip); !v.Cached {
		t.Errorf("TTL 1s not raised to min_ttl")
	}

	e.Invalidate(ip)
	if v := e.Check(ctx, ip); v.Cached || s.QueriesFor(name, dns.TypeA) != 2 {
		t.Errorf("after Invalidate: cached %v, queries %d", v.Cached, s.QueriesFor(name, dns.TypeA))
	}
	e.Invalidate(netip.Addr{})
	if v := e.Check(ctx, ip); v.Cached || s.QueriesFor(name, dns.TypeA) != 3 {
		t.Errorf("after purge: cached %v, queries %d", v.Cached, s.QueriesFor(name, dns.TypeA))
	}
}

func TestCacheTTLs(t *testing.T) {
	s := dnstest.Start(t)
	listed := qname("192.0.2.7", "zen.test")
	clean := qname("192.0.2.8", "zen.test")
	failing := qname("192.0.2.9", "zen.test")
	s.Set(listed, dnstest.Answer{A: []string{"127.0.0.4"}, TTL: 3600})
	s.Set(failing, dnstest.Answer{Rcode: dns.RcodeServerFailure})
	e := newEngine(t, s, "[cache]\nmin_ttl = \"0s\"\nmax_ttl = \"200ms\"\nnegative_ttl = \"1h\"\nerror_ttl = \"0s\"\n"+zenConfig, policy.Deps{})
	ctx := context.Background()
	for _, ip := range []string{"192.0.2.7", "192.0.2.8", "192.0.2.9"} {
		e.Check(ctx, netip.MustParseAddr(ip))
	}
	time.Sleep(300 * time.Millisecond)
	for _, ip := range []string{"192.0.2.7", "192.0.2.8", "192.0.2.9"} {
		e.Check(ctx, netip.MustParseAddr(ip))
	}
	if n := s.QueriesFor(listed, dns.TypeA); n != 2 {
		t.Errorf("TTL 3600 not lowered to max_ttl 200ms: %d queries", n)
	}
	if n := s.QueriesFor(clean, dns.TypeA); n != 1 {
		t.Errorf("clean answer not kept for negative_ttl: %d queries", n)
	}
	// error_ttl = 0: an answer with a list error is not kept at all
	// (the resolver may retry the failing server, so count at least 2).
	before := s.QueriesFor(failing, dns.TypeA)
	e.Check(ctx, netip.MustParseAddr("192.0.2.9"))
	if s.QueriesFor(failing, dns.TypeA) == before {
		t.Errorf("error answer cached with error_ttl 0")
	}
}

func TestConcurrentChecksShareOneQuery(t *testing.T) {
	s := dnstest.Start(t)
	name := qname("192.0.2.7", "zen.test")
	s.Set(name, dnstest.Answer{A: []string{"127.0.0.4"}, Delay: 200 * time.Millisecond})
	e := newEngine(t, s, zenConfig, policy.Deps{})
	var wg sync.WaitGroup
	verdicts := make([]policy.Verdict, 20)
	for i := range verdicts {
		wg.Go(func() { verdicts[i] = e.Check(context.Background(), netip.MustParseAddr("192.0.2.7")) })
	}
	wg.Wait()
	if n := s.QueriesFor(name, dns.TypeA); n != 1 {
		t.Errorf("%d concurrent checks caused %d A queries", len(verdicts), n)
	}
	for _, v := range verdicts {
		if v.Action != policy.ActionReject {
			t.Errorf("verdict: %+v", v)
		}
	}
}

func TestIPv6Lists(t *testing.T) {
	s := dnstest.Start(t)
	ip6 := "2001:db8::7"
	s.Set(qname(ip6, "v6.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	s.SetZone("v4only.test", dnstest.Answer{A: []string{"127.0.0.2"}})
	e := newEngine(t, s, `
[[list]]
name = "Both"
zone = "v6.test"
[[list]]
name = "V4 only"
zone = "v4only.test"
ipv6 = false
`, policy.Deps{})
	v := e.Check(context.Background(), netip.MustParseAddr(ip6))
	if v.Action != policy.ActionReject || len(v.Hits) != 1 || v.Hits[0].List != "Both" {
		t.Errorf("IPv6 client: %+v", v)
	}
	if n := s.QueriesFor(qname(ip6, "v4only.test"), dns.TypeA); n != 0 {
		t.Errorf("ipv6 = false list asked %d times about an IPv6 client", n)
	}
	in := e.Inspect(context.Background(), netip.MustParseAddr(ip6))
	if st := in.Lists[1].Status; st != "skipped" {
		t.Errorf("Inspect: v4-only list status %q", st)
	}
	// IPv4-mapped IPv6 is asked as IPv4.
	v = e.Check(context.Background(), netip.MustParseAddr("::ffff:192.0.2.9"))
	if v.IP != netip.MustParseAddr("192.0.2.9") || len(v.Hits) != 1 || v.Hits[0].List != "V4 only" {
		t.Errorf("IPv4-mapped client: %+v", v)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	// Make each version differ in mtime too, whatever the file system's resolution.
	next := time.Now().Add(time.Duration(len(content)) * time.Second)
	os.Chtimes(path, next, next)
}

func TestFileList(t *testing.T) {
	s := dnstest.Start(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "local.txt")
	writeFile(t, path, "192.0.2.0/24 spam-source # seen at our traps\n2001:db8::/32\n")
	e := newEngine(t, s, fmt.Sprintf("[[list]]\nname = \"local\"\nfile = %q\nweight = 5\n", path), policy.Deps{})
	ctx := context.Background()
	v := e.Check(ctx, netip.MustParseAddr("192.0.2.9"))
	if v.Action != policy.ActionReject || len(v.Hits) != 1 || v.Hits[0].Category != "spam-source" || v.Hits[0].Reason != "seen at our traps" || v.Hits[0].Code.IsValid() {
		t.Errorf("file listing: %+v", v)
	}
	if v := e.Check(ctx, netip.MustParseAddr("2001:db8::1")); len(v.Hits) != 1 || v.Hits[0].Category != "local" {
		t.Errorf("file listing without category: %+v", v)
	}

	// A broken file keeps the last good version.
	writeFile(t, path, "192.0.2.0/24 spam-source\nnot-an-ip\n")
	e.ReloadFiles()
	if v := e.Check(ctx, netip.MustParseAddr("192.0.2.9")); v.Action != policy.ActionReject {
		t.Errorf("broken file replaced the last good version: %+v", v)
	}
	// A good new version takes effect at once, without a cache purge.
	writeFile(t, path, "198.51.100.0/24 zombie\n")
	e.ReloadFiles()
	if v := e.Check(ctx, netip.MustParseAddr("192.0.2.9")); v.Action != policy.ActionAccept {
		t.Errorf("old entry still listed: %+v", v)
	}
	if v := e.Check(ctx, netip.MustParseAddr("198.51.100.1")); v.Action != policy.ActionReject || v.Hits[0].Category != "zombie" {
		t.Errorf("new entry not listed: %+v", v)
	}
}

// A list file that cannot be read stops the engine, naming the list (config
// check turns it into a problem with the key list[N].file).
func TestFileListMissingAtStart(t *testing.T) {
	cfg := testengine.Config(t, nil, "[[list]]\nname = \"local\"\nfile = \"/nonexistent/blmilter/local.txt\"\n")
	_, err := policy.NewEngine(cfg.EngineOptions())
	var fe *policy.FileError
	if !errors.As(err, &fe) || fe.Index != 0 || fe.List != "local" || !strings.Contains(err.Error(), "/nonexistent/blmilter/local.txt") {
		t.Errorf("missing list file: %v", err)
	}
}

type storeList map[netip.Addr][2]string

func (s storeList) Lookup(ip netip.Addr) (string, string, bool) {
	v, ok := s[ip]
	return v[0], v[1], ok
}

type recorder struct {
	mu sync.Mutex
	d  []policy.Decision
}

func (r *recorder) RecordDecision(d policy.Decision) {
	r.mu.Lock()
	r.d = append(r.d, d)
	r.mu.Unlock()
}

func (r *recorder) all() []policy.Decision {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]policy.Decision(nil), r.d...)
}

func TestReply(t *testing.T) {
	s := dnstest.Start(t)
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
	store := storeList{
		netip.MustParseAddr("192.0.2.66"): {"zombie\r\nRCPT TO:<victim@example.org>\x00%s", "because"},
		netip.MustParseAddr("192.0.2.67"): {strings.Repeat("x", 2000), ""},
	}
	rec := &recorder{}
	e := newEngine(t, s, zenConfig+"[[list]]\nname = \"Our list\"\nstore = true\n", policy.Deps{StoreList: store, Recorder: rec})

	v := e.Check(context.Background(), netip.MustParseAddr("192.0.2.7"))
	r := e.Reply(&v)
	want := "Service unavailable; client [192.0.2.7] listed by Spamhaus ZEN (zombie); see https://lookup.example.org/ip/192.0.2.7"
	if r.Code != 550 || r.Enhanced != "5.7.1" || r.Text != want {
		t.Errorf("reply %d %s %q\nwant 550 5.7.1 %q", r.Code, r.Enhanced, r.Text, want)
	}
	if len(r.Ref) != 10 || !strings.Contains(r.Header, "score=3 hits=Spamhaus ZEN(zombie) ref="+r.Ref) {
		t.Errorf("ref %q header %q", r.Ref, r.Header)
	}
	if r2 := e.Reply(&v); r2.Ref == r.Ref {
		t.Errorf("two replies share ref %q", r.Ref)
	}
	e.FlushDecisions()
	d := rec.all()
	if i := slices.IndexFunc(d, func(d policy.Decision) bool { return d.Ref == r.Ref }); len(d) != 2 || i < 0 || d[i].Verdict.IP != v.IP || d[i].Reply.Text != r.Text {
		t.Errorf("recorded: %+v", d)
	}

	v = e.Check(context.Background(), netip.MustParseAddr("192.0.2.66"))
	r = e.Reply(&v)
	if strings.ContainsAny(r.Text, "\r\n\x00") || strings.ContainsAny(r.Header, "\r\n\x00") {
		t.Errorf("control characters reach the reply: %q / %q", r.Text, r.Header)
	}
	if !strings.HasPrefix(r.Text, "Service unavailable; client [192.0.2.66] listed by Our list (zombie  RCPT TO:<victim@example.org> %s)") {
		t.Errorf("sanitised reply: %q", r.Text)
	}
	v = e.Check(context.Background(), netip.MustParseAddr("192.0.2.67"))
	if r = e.Reply(&v); len(r.Text) >= 450 {
		t.Errorf("reply text of %d characters", len(r.Text))
	}
}

func TestReplyTemplateAndTag(t *testing.T) {
	s := dnstest.Start(t)
	s.Set(qname("192.0.2.7", "zen.test"), dnstest.Answer{A: []string{"127.0.0.10"}})
	e := newEngine(t, s, `
[policy]
action = "tag"
reject_text = "{list} says {category}: {url} (ref {ref}) for {ip}"
`+zenConfig, policy.Deps{})
	v := e.Check(context.Background(), netip.MustParseAddr("192.0.2.7"))
	r := e.Reply(&v)
	if v.Action != policy.ActionTag || r.Code != 0 || r.Text != "" || r.Header != "score=3 hits=Spamhaus ZEN(dynamic) ref="+r.Ref {
		t.Errorf("tag: %+v %+v", v, r)
	}

	e = newEngine(t, s, "[policy]\nreject_text = \"{list} says {category}: {url} (ref {ref}) for {ip}\"\n"+zenConfig, policy.Deps{})
	v = e.Check(context.Background(), netip.MustParseAddr("192.0.2.7"))
	r = e.Reply(&v)
	if want := "Spamhaus ZEN says dynamic: https://lookup.example.org/ip/192.0.2.7 (ref " + r.Ref + ") for 192.0.2.7"; r.Text != want {
		t.Errorf("template: %q, want %q", r.Text, want)
	}
}

func TestListHealth(t *testing.T) {
	s := dnstest.Start(t)
	s.SetZone("zen.test", dnstest.Answer{A: []string{"127.0.0.4"}})
	e := newEngine(t, s, zenConfig, policy.Deps{})
	ctx := context.Background()
	ip := netip.MustParseAddr("192.0.2.7")
	if v := e.Check(ctx, ip); v.Action != policy.ActionReject {
		t.Fatalf("healthy: %+v", v)
	}
	e.SetListHealthy("Spamhaus ZEN", false)
	v := e.Check(ctx, ip)
	if v.Cached || v.Action != policy.ActionAccept || len(v.Hits) != 1 || !v.Hits[0].Degraded || v.Hits[0].Weight != 0 {
		t.Errorf("degraded: %+v", v)
	}
	if li := e.Lists(); len(li) != 1 || li[0].Healthy || !li[0].Health || li[0].Zone != "zen.test" || li[0].Kind != policy.KindDNS {
		t.Errorf("Lists: %+v", li)
	}
	in := e.Inspect(ctx, ip)
	if in.Lists[0].Status != "degraded" || in.Reply != nil {
		t.Errorf("Inspect of a degraded list: %+v", in)
	}
	e.SetListHealthy("Spamhaus ZEN", true)
	if v := e.Check(ctx, ip); v.Cached || v.Action != policy.ActionReject {
		t.Errorf("healthy again: %+v", v)
	}
}

func TestDegradedListDoesNotHoldCheck(t *testing.T) {
	s := dnstest.Start(t)
	s.SetZone("silent.test", dnstest.Answer{Silent: true})
	s.SetZone("zen.test", dnstest.Answer{Rcode: dns.RcodeNameError})
	e := newEngine(t, s, "[policy]\ndeadline = \"5s\"\n"+zenConfig+"[[list]]\nname = \"Silent\"\nzone = \"silent.test\"\ntimeout = \"5s\"\non_error = \"tempfail\"\n", policy.Deps{})
	e.SetListHealthy("Silent", false)
	start := time.Now()
	v := e.Check(context.Background(), netip.MustParseAddr("192.0.2.7"))
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("check waited %v for a degraded list", el)
	}
	if v.Action != policy.ActionAccept || len(v.Errors) != 1 || v.Errors[0].OnError != "ignore" {
		t.Errorf("verdict: %+v", v)
	}
}

func TestInspect(t *testing.T) {
	s := dnstest.Start(t)
	ip := "192.0.2.7"
	s.Set(qname(ip, "zen.test"), dnstest.Answer{A: []string{"127.0.0.4", "127.0.0.10"}, TXT: []string{"see https://check.example"}, TTL: 600})
	s.SetZone("fail.test", dnstest.Answer{Rcode: dns.RcodeRefused})
	dir := t.TempDir()
	path := filepath.Join(dir, "local.txt")
	writeFile(t, path, "198.51.100.0/24\n")
	e := newEngine(t, s, zenConfig+fmt.Sprintf(`
[[list]]
name = "Clean"
zone = "clean.test"
[[list]]
name = "Failing"
zone = "fail.test"
[[list]]
name = "local"
file = %q
[[list]]
name = "Our list"
store = true
`, path), policy.Deps{})
	in := e.Inspect(context.Background(), netip.MustParseAddr(ip))
	want := []struct{ list, kind, status string }{
		{"Spamhaus ZEN", policy.KindDNS, "listed"}, {"Clean", policy.KindDNS, "clean"}, {"Failing", policy.KindDNS, "error"},
		{"local", policy.KindFile, "clean"}, {"Our list", policy.KindStore, "skipped"},
	}
	if len(in.Lists) != len(want) {
		t.Fatalf("lists: %+v", in.Lists)
	}
	for i, w := range want {
		lr := in.Lists[i]
		if lr.List != w.list || lr.Kind != w.kind || lr.Status != w.status {
			t.Errorf("list %d: %+v, want %+v", i, lr, w)
		}
	}
	zen := in.Lists[0]
	if len(zen.Codes) != 2 || zen.Category != "zombie" || zen.Reason != "see https://check.example" || zen.TTL != 600*time.Second || zen.Expires.IsZero() {
		t.Errorf("ZEN result: %+v", zen)
	}
	if in.Lists[2].Err == "" {
		t.Errorf("error result has no error text: %+v", in.Lists[2])
	}
	if in.Verdict.Action != policy.ActionReject || in.Reply == nil || in.Reply.Code != 550 || in.Reply.Ref != "" {
		t.Errorf("verdict %+v reply %+v", in.Verdict, in.Reply)
	}
	// Inspect refreshed the cache.
	if v := e.Check(context.Background(), netip.MustParseAddr(ip)); !v.Cached {
		t.Errorf("check after Inspect not cached")
	}
}

func TestLogAttrs(t *testing.T) {
	v := policy.Verdict{
		IP: netip.MustParseAddr("192.0.2.7"), Action: policy.ActionReject, Score: 3,
		Hits: []policy.Hit{
			{List: "Spamhaus ZEN", Category: "zombie", Code: netip.MustParseAddr("127.0.0.4"), Weight: 3},
			{List: "local", Category: "local", DryRun: true},
		},
		Errors:   []policy.ListError{{List: "Other", Err: "timeout", OnError: "ignore"}},
		Cached:   true,
		Duration: 1500 * time.Microsecond,
	}
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})).LogAttrs(context.Background(), slog.LevelInfo, "decision", policy.LogAttrs(v)...)
	want := `level=INFO msg=decision ip=192.0.2.7 action=reject score=3 hits="[Spamhaus ZEN:zombie:127.0.0.4 local:local::dry-run]" errors="[Other: timeout]" cached=true duration=1.5ms` + "\n"
	if b.String() != want {
		t.Errorf("log line:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestCloseStopsWatcher(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "local.txt")
	writeFile(t, path, "192.0.2.0/24\n")
	cfg := testengine.Config(t, nil, fmt.Sprintf("[[list]]\nname = \"local\"\nfile = %q\n", path))
	e, err := policy.NewEngine(cfg.EngineOptions())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { e.Close(); e.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
}

func TestCacheStats(t *testing.T) {
	s := dnstest.Start(t)
	e := newEngine(t, s, zenConfig, policy.Deps{})
	ip := netip.MustParseAddr("192.0.2.1")
	e.Check(context.Background(), ip)
	e.Check(context.Background(), ip)
	if st := e.CacheStats(); st.Hits != 1 || st.Misses != 1 || st.Entries != 1 {
		t.Errorf("stats after a miss and a hit: %+v", st)
	}
}

// The lookup page is about any address: an address the mail path exempts
// still gets every list's answer, but no verdict and no reply.
func TestInspectExempt(t *testing.T) {
	s := dnstest.Start(t)
	s.Set(qname("127.0.0.2", "zen.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	s.Set(qname("10.1.2.3", "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
	e := newEngine(t, s, zenConfig+"[policy]\nallow = [\"10.0.0.0/8\"]\n", policy.Deps{})
	for _, tt := range []struct {
		ip   string
		skip policy.Skip
		code string
	}{{"127.0.0.2", policy.SkipLoopback, "127.0.0.2"}, {"10.1.2.3", policy.SkipAllow, "127.0.0.4"}} {
		t.Run(tt.ip, func(t *testing.T) {
			in := e.Inspect(context.Background(), netip.MustParseAddr(tt.ip))
			if in.Verdict.Skipped != tt.skip || in.Verdict.Action != policy.ActionAccept || in.Reply != nil {
				t.Fatalf("verdict %+v reply %+v, want skipped %q, accept, no reply", in.Verdict, in.Reply, tt.skip)
			}
			if len(in.Lists) != 1 || in.Lists[0].Status != "listed" || len(in.Lists[0].Codes) != 1 || in.Lists[0].Codes[0].String() != tt.code {
				t.Fatalf("lists %+v, want the list's own answer %s", in.Lists, tt.code)
			}
			if v := e.Check(context.Background(), netip.MustParseAddr(tt.ip)); v.Skipped != tt.skip || v.Action != policy.ActionAccept {
				t.Fatalf("Check after Inspect: %+v", v)
			}
		})
	}
}

func TestCheckCached(t *testing.T) {
	s := dnstest.Start(t)
	name := qname("192.0.2.7", "zen.test")
	s.Set(name, dnstest.Answer{A: []string{"127.0.0.4"}})
	e := newEngine(t, s, zenConfig+"\n[policy]\nallow = [\"198.51.100.0/24\"]\n", policy.Deps{})
	ip := netip.MustParseAddr("192.0.2.7")

	// Not cached yet: no answer, no DNS query, no miss counted twice.
	if v, ok := e.CheckCached(ip); ok {
		t.Fatalf("CheckCached before any lookup = %+v, true", v)
	}
	if n := s.QueriesFor(name, dns.TypeA); n != 0 {
		t.Fatalf("CheckCached asked DNS (%d queries)", n)
	}
	e.Check(context.Background(), ip)
	v, ok := e.CheckCached(ip)
	if !ok || !v.Cached || v.Action != policy.ActionReject || len(v.Hits) != 1 || v.Hits[0].Category != "zombie" {
		t.Fatalf("CheckCached after a lookup = %+v, %v", v, ok)
	}
	if st := e.CacheStats(); st.Hits != 1 || st.Misses != 1 {
		t.Errorf("stats after CheckCached miss, Check, CheckCached hit: %+v, want 1 hit 1 miss", st)
	}
	// Clients that are never looked up are answered at once.
	for _, a := range []string{"127.0.0.1", "198.51.100.9"} {
		if v, ok := e.CheckCached(netip.MustParseAddr(a)); !ok || v.Skipped == policy.SkipNone || v.Action != policy.ActionAccept {
			t.Errorf("CheckCached(%s) = %+v, %v", a, v, ok)
		}
	}
}
