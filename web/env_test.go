package web

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/signedref"
	"github.com/blmilter/blmilter/store"
)

// Addresses the tests use. The lists are served by dnstest; names are set
// per address in newEnv.
var (
	ipListed   = netip.MustParseAddr("192.0.2.1")  // ZEN: 127.0.0.4 zombie with TXT
	ipClean    = netip.MustParseAddr("192.0.2.99") // nothing anywhere
	ipBroken   = netip.MustParseAddr("192.0.2.3")  // the broken list answers 127.255.255.254
	ipSite     = netip.MustParseAddr("192.0.2.50") // on the site's own list only
	ipV6Listed = netip.MustParseAddr("2001:db8::25")
	ipLoop     = netip.MustParseAddr("127.0.0.2")
)

type env struct {
	t    testing.TB
	dns  *dnstest.Server
	ptr  *ptrServer
	cfg  *Settings
	eng  *policy.Engine
	st   *store.Store
	srv  *Server
	ts   *httptest.Server
	logs *testkit.Buffer
}

type envOpts struct {
	smtp        string // [web.smtp] server
	adminToken  string
	lookupRate  float64
	lookupBurst int
	noStore     bool
	noStoreList bool // a store, but no [[list]] with store = true
	stats       func() any
	delist      string // [web] delist_domain
	operator    string // [web] operator_email
	deferFirst  time.Duration
	refKey      *signedref.Key // the fleet's key: the engine signs refs, the pages open them
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	e := &env{t: t, dns: dnstest.Start(t)}
	zen := func(ip netip.Addr) string { return dnsbl.QueryName(ip, "zen.test") }
	e.dns.Set(zen(ipListed), dnstest.Answer{A: []string{"127.0.0.4"}, TXT: []string{"Compromised host, see https://lists.example/why"}, TTL: 600})
	e.dns.Set(zen(ipV6Listed), dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{"Spam source v6"}, TTL: 600})
	e.dns.Set(zen(ipLoop), dnstest.Answer{A: []string{"127.0.0.2"}, TXT: []string{"RFC 5782 test point"}, TTL: 600})
	e.dns.Set(dnsbl.QueryName(ipBroken, "broken.test"), dnstest.Answer{A: []string{"127.255.255.254"}})
	e.ptr = startPTR(t, e.dns.Addr)
	e.ptr.set(ipListed, "dsl-192-0-2-1.dyn.example.net", ipListed)
	e.ptr.set(ipClean, "mail.example.org", ipClean)

	if o.lookupRate == 0 {
		o.lookupRate, o.lookupBurst = 1000, 1000
	}
	def := config.Defaults().Web
	e.cfg = &Settings{
		PublicURL:             "http://lookup.test",
		AdminToken:            o.adminToken,
		RemovalQuota:          def.RemovalQuota,
		RemovalWindow:         def.RemovalWindow.Duration,
		LookupRate:            o.lookupRate,
		LookupBurst:           o.lookupBurst,
		SelfServiceCategories: def.SelfServiceCategories,
		DNSServers:            []string{e.ptr.addr},
		DNSTimeout:            time.Second,
		DelistDomain:          o.delist,
		DelistTTL:             24 * time.Hour,
		OperatorEmail:         o.operator,
		DeferFirst:            o.deferFirst,
	}
	if o.smtp != "" {
		e.cfg.SMTP = SMTP{Server: o.smtp, From: "lookup@lookup.test"}
	}
	conf := `
[web]
public_url = "http://lookup.test"

[dns]
timeout = "1s"

[policy]
threshold = 3

[[list]]
name = "Test ZEN"
zone = "zen.test"
weight = 3
health = false
codes = { "127.0.0.2" = "spam-source", "127.0.0.4-127.0.0.7" = "zombie", "127.0.0.10" = "dynamic" }

[[list]]
name = "Broken List"
zone = "broken.test"
weight = 3
health = false
category = "spam-source"

[[list]]
name = "Site list"
store = true
weight = 5
category = "local"
`
	if o.noStoreList {
		conf = conf[:strings.Index(conf, "[[list]]\nname = \"Site list\"")]
	}
	e.logs = &testkit.Buffer{}
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	deps := policy.Deps{Logger: log}
	if !o.noStore {
		st, err := store.Open(filepath.Join(t.TempDir(), "blmilter.db"), store.Options{Logger: log})
		if err != nil {
			t.Fatalf("store: %v", err)
		}
		t.Cleanup(func() { st.Close() })
		e.st = st
		deps.StoreList, deps.Recorder = st, st
	}
	// The lists and the reverse DNS are asked through the PTR server,
	// which passes list queries on to the list server.
	cfg := testengine.Config(t, nil, conf)
	cfg.DNS.Servers = []string{e.ptr.addr}
	var eng *policy.Engine
	if o.refKey == nil {
		eng = testengine.From(t, cfg, deps)
	} else {
		eopts := cfg.EngineOptions()
		eopts.Deps, eopts.RefKey, eopts.Node = deps, o.refKey, "lookup"
		var err error
		if eng, err = policy.NewEngine(eopts); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { eng.Close() })
	}
	e.eng = eng
	wopts := Options{Engine: func() *policy.Engine { return eng }, Settings: func() *Settings { return e.cfg }, Logger: log, Stats: o.stats}
	if e.st != nil {
		// A change to the site's list must reach the engine's cache at once.
		e.st.OnChange(func(p netip.Prefix) {
			if p.IsSingleIP() {
				eng.Invalidate(p.Addr())
			} else {
				eng.Invalidate(netip.Addr{})
			}
		})
		wopts.Store = e.st
		if _, err := e.st.AddListing(context.Background(), store.Listing{
			Prefix: netip.PrefixFrom(ipSite, 32), Category: "spam-source", Reason: "Spam to our users on 2026-11-20", Source: "test",
		}); err != nil {
			t.Fatalf("add listing: %v", err)
		}
		if _, err := e.st.AddListing(context.Background(), store.Listing{
			Prefix: netip.PrefixFrom(ipLoop, 32), Category: "local", Reason: "Listed for the browser test", Source: "test",
		}); err != nil {
			t.Fatalf("add listing: %v", err)
		}
	}
	srv, err := New(wopts)
	if err != nil {
		t.Fatalf("web.New: %v", err)
	}
	e.srv = srv
	e.ts = httptest.NewServer(srv.Handler())
	t.Cleanup(e.ts.Close)
	return e
}

// serveLoopback serves srv on loopback until the test ends and returns
// its base URL.
func serveLoopback(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// client never follows redirects, so tests see them.
var client = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func (e *env) get(path string) (*http.Response, string) {
	e.t.Helper()
	return e.do(http.MethodGet, path, "", nil)
}

func (e *env) do(method, path, body string, hdr map[string]string) (*http.Response, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.ts.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatalf("request %s: %v", path, err)
	}
	if method == http.MethodPost && hdr["Content-Type"] == "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// ptrServer answers PTR queries and the A/AAAA queries that confirm them,
// and passes every other query on to the list server, so one [dns] server
// serves both the lists and reverse DNS as in production.
type ptrServer struct {
	addr     string
	upstream string
	mu       sync.Mutex
	names    map[string]string       // reverse name -> PTR
	fwd      map[string][]netip.Addr // host name -> addresses
	srv      *dns.Server
}

func startPTR(t testing.TB, upstream string) *ptrServer {
	t.Helper()
	p := &ptrServer{upstream: upstream, names: map[string]string{}, fwd: map[string][]netip.Addr{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	p.addr = pc.LocalAddr().String()
	started := make(chan struct{})
	p.srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(p.serve), NotifyStartedFunc: func() { close(started) }}
	go p.srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { p.srv.Shutdown() })
	return p
}

func (p *ptrServer) set(ip netip.Addr, name string, forward ...netip.Addr) {
	rev, _ := dns.ReverseAddr(ip.String())
	p.mu.Lock()
	defer p.mu.Unlock()
	p.names[rev] = dns.Fqdn(name)
	p.fwd[dns.Fqdn(name)] = forward
}

func (p *ptrServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	p.mu.Lock()
	ptr, isPTR := p.names[name]
	addrs, isHost := p.fwd[name]
	p.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(req)
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: 300}
	}
	switch {
	case q.Qtype == dns.TypePTR && isPTR:
		m.Answer = append(m.Answer, &dns.PTR{Hdr: hdr(dns.TypePTR), Ptr: ptr})
	case q.Qtype == dns.TypePTR || isHost || strings.HasSuffix(name, ".example.net.") || strings.HasSuffix(name, ".example.org."):
		if !isHost && q.Qtype == dns.TypePTR {
			m.Rcode = dns.RcodeNameError
		}
		for _, a := range addrs {
			if a.Is4() && q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: a.AsSlice()})
			}
			if a.Is6() && q.Qtype == dns.TypeAAAA {
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: a.AsSlice()})
			}
		}
	default:
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(req, p.upstream)
		if err != nil {
			return
		}
		m = r
	}
	w.WriteMsg(m)
}

func dnsTestNX() dnstest.Answer { return dnstest.Answer{Rcode: dns.RcodeNameError} }

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }
