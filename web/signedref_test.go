package web

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/blmilter/blmilter/dnsbl"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/signedref"
)

func webKey(t testing.TB, seed byte) *signedref.Key {
	t.Helper()
	k, err := signedref.NewKey(bytes.Repeat([]byte{seed}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// mxNode is another node of the fleet: a milter with no store, its own
// lists, the fleet's key (or another), asking its own DNS server.
func mxNode(t *testing.T, key *signedref.Key, node string) *policy.Engine {
	t.Helper()
	s := dnstest.Start(t)
	s.Set(dnsbl.QueryName(ipListed, "bl.example.test"), dnstest.Answer{A: []string{"127.0.0.9"}})
	opts := testengine.Config(t, s, `
[web]
public_url = "http://lookup.test"

[[list]]
name = "Example BL"
zone = "bl.example.test"
weight = 4
health = false
codes = { "127.0.0.9" = "open-proxy" }
`).EngineOptions()
	opts.RefKey, opts.Node = key, node
	e, err := policy.NewEngine(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// refused returns the ref of a reject by e for ip.
func refused(t *testing.T, e *policy.Engine, ip netip.Addr) policy.Reply {
	t.Helper()
	v := e.Check(context.Background(), ip)
	if v.Action != policy.ActionReject {
		t.Fatalf("%s not refused: %+v", ip, v)
	}
	return e.Reply(&v)
}

func decisionJSON(t *testing.T, e *env, path string) *DecisionInfo {
	t.Helper()
	_, body := e.get("/api/v1" + path)
	var r Report
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, body)
	}
	return r.Decision
}

// The lookup node shows the decision another node's bounce links to, from
// the signed ref alone; an altered or foreign ref is refused with a note
// and the page shows the address's current status; a ref is never shown
// for another address.
func TestSignedRefFromAnotherNode(t *testing.T) {
	key := webKey(t, 3)
	e := newEnv(t, envOpts{refKey: key})
	mx := refused(t, mxNode(t, key, "mx2.example.org"), ipListed)
	link, err := url.Parse(strings.Fields(mx.Text)[len(strings.Fields(mx.Text))-1])
	if err != nil || link.Path != "/ip/"+ipListed.String() || link.Query().Get("ref") != mx.Ref {
		t.Fatalf("the bounce's link %q does not carry the ref %q", link, mx.Ref)
	}
	path := link.RequestURI()

	_, page := e.get(path)
	for _, want := range []string{"Your bounce", "mx2.example.org", "<strong>reject</strong>", "Example BL", "Open proxy", "127.0.0.9", "score 4", "signed by this site", "Block lists"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	d := decisionJSON(t, e, path)
	if d == nil || !d.Found || !d.Signed || d.Ref != mx.Ref || d.Node != "mx2.example.org" || d.Action != "reject" || d.Score == nil || *d.Score != 4 ||
		len(d.Hits) != 1 || d.Hits[0].List != "Example BL" || d.Hits[0].Code != "127.0.0.9" || d.Hits[0].Category != "open-proxy" || d.Hits[0].NotCounted {
		t.Errorf("decision %+v", d)
	}

	// Altered in one character, or signed with another key.
	altered := []byte(mx.Ref)
	altered[len(altered)/2] ^= 'A' ^ 'B'
	if altered[len(altered)/2] == mx.Ref[len(altered)/2] {
		t.Fatal("not altered")
	}
	foreign := refused(t, mxNode(t, webKey(t, 4), "mx9"), ipListed)
	for name, ref := range map[string]string{"altered": string(altered), "foreign": foreign.Ref} {
		t.Run(name, func(t *testing.T) {
			p := "/ip/" + ipListed.String() + "?ref=" + url.QueryEscape(ref)
			_, page := e.get(p)
			if !strings.Contains(page, "could not be verified") || strings.Contains(page, "mx2.example.org") || strings.Contains(page, "mx9") || !strings.Contains(page, "Test ZEN") {
				t.Errorf("page for a refused ref:\n%s", page)
			}
			if d := decisionJSON(t, e, p); d == nil || d.Found || d.Note != RefNotVerified || d.Ref != "" || len(d.Hits) != 0 {
				t.Errorf("decision %+v", d)
			}
		})
	}

	// Another address's page with this ref.
	other := "/ip/" + ipClean.String() + "?ref=" + mx.Ref
	if d := decisionJSON(t, e, other); d == nil || d.Found || d.Note != RefNotFound || d.Ref != "" {
		t.Errorf("ref on another address's page: %+v", d)
	}

	// A lookup node without the key cannot read it.
	plain := newEnv(t, envOpts{})
	if d := decisionJSON(t, plain, path); d == nil || d.Found || d.Note != RefNotVerified {
		t.Errorf("a node without the key: %+v", d)
	}
}

// On the lookup node its own signed refs show with the reply and the
// lists' texts from its store, and the short refs recorded before the
// fleet's key was set still work.
func TestSignedRefOnItsOwnNode(t *testing.T) {
	key := webKey(t, 3)
	e := newEnv(t, envOpts{refKey: key})
	own := refused(t, e.eng, ipListed)
	e.eng.FlushDecisions()
	e.st.Flush()
	d := decisionJSON(t, e, "/ip/"+ipListed.String()+"?ref="+own.Ref)
	if d == nil || !d.Signed || d.Node != "lookup" || d.Reply == nil || d.Reply.Text != own.Text ||
		len(d.Hits) != 1 || d.Hits[0].Reason != "Compromised host, see https://lists.example/why" {
		t.Errorf("own decision %+v", d)
	}

	// A short ref of the same store, from before the key.
	oldEngine := testengine.From(t, testengine.Config(t, nil, "[dns]\nservers = [\""+e.ptr.addr+"\"]\n[[list]]\nname = \"Test ZEN\"\nzone = \"zen.test\"\nweight = 3\nhealth = false\n"),
		policy.Deps{Recorder: e.st})
	short := refused(t, oldEngine, ipListed)
	oldEngine.FlushDecisions()
	e.st.Flush()
	if d := decisionJSON(t, e, "/ip/"+ipListed.String()+"?ref="+short.Ref); d == nil || !d.Found || d.Signed || d.Ref != short.Ref {
		t.Errorf("short ref: %+v", d)
	}
}

// ?ref= text that is neither kind of ref is not looked up nor echoed.
func TestRefValidated(t *testing.T) {
	e := newEnv(t, envOpts{refKey: webKey(t, 3)})
	for _, ref := range []string{"a b", "ref\r\nX-Injected: 1", strings.Repeat("é", 40), "<b>bold</b>", strings.Repeat("x.", 33)} {
		p := "/ip/" + ipListed.String() + "?ref=" + url.QueryEscape(ref)
		d := decisionJSON(t, e, p)
		if d == nil || d.Found || d.Note != RefInvalid || d.Ref != "" {
			t.Errorf("ref %q: %+v", ref, d)
		}
		if _, page := e.get(p); !strings.Contains(page, "not one this service gives out") || strings.Contains(page, "<b>bold") {
			t.Errorf("ref %q: page does not say it is no reference", ref)
		}
	}
}

// Whatever ?ref= holds, the decision lookup neither panics nor echoes
// what it could not read.
func FuzzDecisionRef(f *testing.F) {
	key := webKey(f, 3)
	e := newEnv(f, envOpts{refKey: key})
	v := e.eng.Check(context.Background(), ipListed)
	good := e.eng.Reply(&v).Ref
	for _, s := range []string{good, good[:len(good)-1], "ABCDEFGHJK", "", "<script>", strings.Repeat("A", signedref.MinLen)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		d := e.srv.decision(context.Background(), ref, ipListed)
		if !d.Found && (d.Ref != "" || len(d.Hits) > 0 || d.Note == "") {
			t.Fatalf("ref %q not found, yet %+v", ref, d)
		}
		if d.Found && d.Ref != ref {
			t.Fatalf("ref %q found as %q", ref, d.Ref)
		}
	})
}
