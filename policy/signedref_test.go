package policy_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/signedref"
)

// signedEngine builds an engine from toml with the fleet's key set.
func signedEngine(t *testing.T, s *dnstest.Server, toml string, key *signedref.Key, deps policy.Deps) *policy.Engine {
	t.Helper()
	opts := testengine.Config(t, s, toml).EngineOptions()
	opts.Deps = deps
	opts.RefKey = key
	opts.Node = "mx2.example.org"
	e, err := policy.NewEngine(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func fleetKey(t *testing.T, seed byte) *signedref.Key {
	t.Helper()
	k, err := signedref.NewKey(bytes.Repeat([]byte{seed}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// threeLists is three DNS lists and the site's own list, named as given.
func threeLists(names [3]string, publicURL string) string {
	s := fmt.Sprintf("[web]\npublic_url = %q\n", publicURL)
	for i, n := range names {
		s += fmt.Sprintf("[[list]]\nname = %q\nzone = \"l%d.test\"\nweight = %d\ncodes = { \"127.0.0.2\" = \"spam-source\", \"127.0.0.4\" = \"zombie\" }\n", n, i, i+1)
	}
	return s
}

// A reject's ref is the decision, signed: the reply links to the lookup
// page with it, the line stays within SMTP's 512 octets with three hits,
// long list names and an IPv6 client, and what does not fit is left out
// and said so.
func TestSignedReply(t *testing.T) {
	key := fleetKey(t, 7)
	long := func(c string) string { return strings.Repeat(c, 64) }
	for _, tc := range []struct {
		name      string
		ip        string
		names     [3]string
		publicURL string
		template  string
		hits      int  // hits the ref must carry at least
		truncated bool // whether it may leave something out
	}{
		{"IPv4, short names", "192.0.2.7", [3]string{"Example BL", "Other BL", "Third BL"}, "https://lookup.example.org", "", 3, false},
		{"IPv6, short names", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", [3]string{"Example BL", "Other BL", "Third BL"}, "https://lookup.example.org", "", 3, false},
		{"IPv6, 64-character names", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", [3]string{long("a"), long("b"), long("c")}, "https://mail-lookup.blocklist-service.example.org", "", 1, true},
		{"{url} and {ref} both", "2001:db8::1", [3]string{long("a"), long("b"), long("c")}, "https://lookup.example.org",
			"Refused [{ip}] by {list} ({category}); see {url} (reference {ref})", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := dnstest.Start(t)
			ip := netip.MustParseAddr(tc.ip)
			for i := range 3 {
				s.Set(qname(tc.ip, fmt.Sprintf("l%d.test", i)), dnstest.Answer{A: []string{"127.0.0.4"}})
			}
			toml := threeLists(tc.names, tc.publicURL)
			if tc.template != "" {
				toml = fmt.Sprintf("[policy]\nreject_text = %q\n", tc.template) + toml
			}
			rec := &recorder{}
			e := signedEngine(t, s, toml, key, policy.Deps{Recorder: rec})
			v := e.Check(context.Background(), ip)
			if v.Action != policy.ActionReject || len(v.Hits) != 3 {
				t.Fatalf("verdict %+v", v)
			}
			r := e.Reply(&v)
			line := fmt.Sprintf("%d %s %s\r\n", r.Code, r.Enhanced, r.Text)
			t.Logf("%d octets: %s", len(line), line)
			if len(line) > 512 {
				t.Fatalf("reply line of %d octets", len(line))
			}
			if link := tc.publicURL + "/ip/" + ip.String() + "?ref=" + r.Ref; !strings.Contains(r.Text, link) {
				t.Fatalf("reply %q does not link to %s", r.Text, link)
			}
			d, err := key.Open(r.Ref)
			if err != nil {
				t.Fatalf("the reply's ref does not open: %v", err)
			}
			if d.IP != ip || d.Action != "reject" || d.Score != 6 || d.Threshold != 3 || len(d.Hits) < tc.hits {
				t.Errorf("ref carries %+v", d)
			}
			if d.Truncated != tc.truncated {
				t.Errorf("truncated = %v, want %v (%+v)", d.Truncated, tc.truncated, d)
			}
			if len(d.Hits) > 0 && (d.Hits[0].Weight != 3 || d.Hits[0].Code != netip.MustParseAddr("127.0.0.4") || d.Hits[0].Category != "zombie") {
				t.Errorf("first hit %+v, want the heaviest with its code and category", d.Hits[0])
			}
			if !tc.truncated && (d.Node != "mx2.example.org" || d.Hits[0].List != tc.names[2]) {
				t.Errorf("node %q, first list %q", d.Node, d.Hits[0].List)
			}
			e.FlushDecisions()
			if got := rec.all(); len(got) != 1 || got[0].Ref != r.Ref {
				t.Errorf("recorded %+v, want the decision under the signed ref", got)
			}
		})
	}
}

// Without room for even the shortest signed ref, the reply gets a short
// ref and the plain link: mail is refused all the same, and the text is
// never cut through a signature.
func TestSignedReplyNoRoom(t *testing.T) {
	s := dnstest.Start(t)
	s.Set(qname("2001:db8::1", "l0.test"), dnstest.Answer{A: []string{"127.0.0.4"}})
	tmpl := strings.Repeat("x", 250) + " {ip} {list} {category} {url}"
	toml := fmt.Sprintf("[policy]\nthreshold = 1\nreject_text = %q\n", tmpl) +
		threeLists([3]string{strings.Repeat("a", 64), "b", "c"}, "https://"+strings.Repeat("l", 60)+".example.org")
	e := signedEngine(t, s, toml, fleetKey(t, 7), policy.Deps{})
	v := e.Check(context.Background(), netip.MustParseAddr("2001:db8::1"))
	r := e.Reply(&v)
	if r.Code != 550 || len(r.Ref) != 10 || strings.Contains(r.Text, "?ref=") {
		t.Fatalf("reply %d %q ref %q, want 550 with a short ref and a plain link", r.Code, r.Text, r.Ref)
	}
}

// A tag carries the signed ref in its header; a check's reply for the
// lookup page has none.
func TestSignedTagAndInspect(t *testing.T) {
	s := dnstest.Start(t)
	s.Set(qname("192.0.2.7", "l0.test"), dnstest.Answer{A: []string{"127.0.0.2"}})
	key := fleetKey(t, 7)
	e := signedEngine(t, s, "[policy]\naction = \"tag\"\nthreshold = 1\n"+threeLists([3]string{"A", "B", "C"}, "https://lookup.example.org"), key, policy.Deps{})
	v := e.Check(context.Background(), netip.MustParseAddr("192.0.2.7"))
	r := e.Reply(&v)
	if !strings.HasSuffix(r.Header, " ref="+r.Ref) {
		t.Fatalf("header %q does not end with the ref %q", r.Header, r.Ref)
	}
	if d, err := key.Open(r.Ref); err != nil || d.Action != "tag" || len(d.Hits) != 1 || d.Hits[0].Category != "spam-source" {
		t.Fatalf("tag's ref: %+v %v", d, err)
	}

	e = signedEngine(t, s, "[policy]\nthreshold = 1\n"+threeLists([3]string{"A", "B", "C"}, "https://lookup.example.org"), key, policy.Deps{})
	in := e.Inspect(context.Background(), netip.MustParseAddr("192.0.2.7"))
	if in.Reply == nil || in.Reply.Ref != "" || strings.Contains(in.Reply.Text, "?ref=") {
		t.Fatalf("inspect's reply %+v", in.Reply)
	}
}

// A tag's header with many long list names still ends with the whole ref.
func TestSignedTagManyHits(t *testing.T) {
	s := dnstest.Start(t)
	toml := "[policy]\naction = \"tag\"\n[web]\npublic_url = \"https://lookup.example.org\"\n"
	for i := range 14 {
		zone := fmt.Sprintf("z%d.test", i)
		s.Set(qname("192.0.2.7", zone), dnstest.Answer{A: []string{"127.0.0.2"}})
		toml += fmt.Sprintf("[[list]]\nname = %q\nzone = %q\nweight = 1\n", fmt.Sprintf("%02d", i)+strings.Repeat("n", 62), zone)
	}
	key := fleetKey(t, 7)
	e := signedEngine(t, s, toml, key, policy.Deps{})
	v := e.Check(context.Background(), netip.MustParseAddr("192.0.2.7"))
	r := e.Reply(&v)
	if len(r.Header) > 900 || !strings.HasSuffix(r.Header, " ref="+r.Ref) {
		t.Fatalf("header of %d bytes does not end with the ref: %q", len(r.Header), r.Header)
	}
	if d, err := key.Open(r.Ref); err != nil || d.Action != "tag" || !d.Truncated {
		t.Fatalf("ref: %+v %v", d, err)
	}
}
