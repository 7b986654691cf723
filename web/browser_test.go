//go:build e2e

package web

import (
	"context"
	"html"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/store"
)

const chromium = "/usr/bin/chromium"

func chromiumArgs(dir string, extra ...string) []string {
	return append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
		"--user-data-dir=" + dir}, extra...)
}

// TestBrowser loads status pages in headless Chromium from a server on
// loopback and checks what the browser rendered. Set
// BLMILTER_SCREENSHOT=path to also write a screenshot of a listed IP's page
// (docs/status-page.png is made that way).
func TestBrowser(t *testing.T) {
	needChromium(t)
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	// A listed IP that is also on the site's own list, for the screenshot.
	exp := time.Now().Add(30 * 24 * time.Hour)
	if _, err := e.st.AddListing(ctx, store.Listing{Prefix: netip.PrefixFrom(ipListed, 32), Category: "zombie",
		Reason: "Spam trap hits from a botnet, 2026-11-27", Source: "test", ExpiresAt: &exp}); err != nil {
		t.Fatal(err)
	}

	base := serveLoopback(t, e.srv)
	run := func(args ...string) string { t.Helper(); return runChromium(t, args...) }

	dom := run("--dump-dom", base+"/ip/127.0.0.2")
	for _, want := range []string{
		`<span class="ip">127.0.0.2</span>`,
		"On this site's own list",
		"Listed for the browser test",
		`<form class="removal" method="post" action="/ip/127.0.0.2/removal">`,
		`name="email"`, `name="reason"`, "Request removal",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered DOM lacks %q", want)
		}
	}

	// The filter never checks loopback, but the page asks the lists: the
	// RFC 5782 test point shows each list answering.
	if r := row(t, dom, "Test ZEN"); !strings.Contains(r, `class="result">listed<`) || !strings.Contains(r, "127.0.0.2") {
		t.Errorf("test point row in the browser:\n%s", r)
	}

	dom = run("--dump-dom", base+"/ip/192.0.2.1")
	if r := row(t, dom, "Test ZEN"); !strings.Contains(r, `class="result">listed<`) || !strings.Contains(r, "127.0.0.4") {
		t.Errorf("listed row in the browser:\n%s", r)
	}

	shot := os.Getenv("BLMILTER_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "status.png")
	}
	run("--screenshot="+shot, "--window-size=900,1200", "--hide-scrollbars", base+"/ip/192.0.2.1")
	png, err := os.ReadFile(shot)
	if err != nil || len(png) < 1000 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot %s: %d bytes, %v", shot, len(png), err)
	}
}

func needChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromium); err != nil {
		t.Fatal("headless browser test: " + chromium + " not found (Debian package chromium; e2e/deps.sh installs it)")
	}
}

// runChromium runs headless Chromium with args and returns what it wrote.
func runChromium(t *testing.T, args ...string) string {
	t.Helper()
	cctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, chromium, chromiumArgs(t.TempDir(), args...)...)
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr)
	}
	return string(out)
}

// TestBrowserHistoryAndRequest renders, in headless Chromium, the status
// page of an address with a history (trap hits, a listing and its removal,
// deferred refusals) and a requester's status page.
func TestBrowserHistoryAndRequest(t *testing.T) {
	needChromium(t)
	e := newEnv(t, envOpts{deferFirst: 4 * time.Hour, delist: "mx.lookup.test"})
	ctx := context.Background()
	ip := netip.MustParseAddr("198.18.12.1")
	rules := store.TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64}
	at := time.Now().Add(-26 * time.Hour)
	for i, helo := range []string{"bot1.example.net", "bot2.example.net"} {
		if _, err := e.st.RecordTrapHit(ctx, store.TrapHit{Time: at.Add(time.Duration(i) * time.Hour), IP: ip, HELO: helo, Trap: "hidden@trap.test"}, rules); err != nil {
			t.Fatal(err)
		}
	}
	e.st.NoteDeferral(ip, time.Now().Add(-time.Hour))
	e.st.Flush()
	base := serveLoopback(t, e.srv)

	dom := html.UnescapeString(runChromium(t, "--dump-dom", base+"/ip/198.18.12.1"))
	day := at.UTC().Format(time.DateOnly)
	for _, want := range []string{
		"History at this site",
		day + ": hit a spam trap of this site 2 times from HELO bot1.example.net, bot2.example.net",
		"by this site's spam traps",
		"Remove it from the listed address itself",
		"delist+",
		"1 attempt deferred since",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered status page lacks %q", want)
		}
	}
	if strings.Contains(dom, "hidden@trap.test") {
		t.Error("the rendered page names the trap")
	}

	r, err := e.st.CreateRequest(ctx, store.NewRequest{IP: ip.String(), Email: "owner@example.org", Reason: "fixed", ToOperator: true})
	if err != nil {
		t.Fatal(err)
	}
	dom = runChromium(t, "--dump-dom", base+"/request/"+e.st.StatusToken(r.ID))
	for _, want := range []string{"Removal request for", "198.18.12.1", "Waiting for the operator", "request received"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered request page lacks %q", want)
		}
	}
	if strings.Contains(dom, "owner@example.org") {
		t.Error("the request page shows the requester's address")
	}
	if err := e.st.DenyRequest(ctx, r.ID, "cli:op"); err != nil {
		t.Fatal(err)
	}
	dom = runChromium(t, "--dump-dom", base+"/request/"+e.st.StatusToken(r.ID))
	if !strings.Contains(dom, "Denied") || !strings.Contains(dom, "denied by the operator") {
		t.Errorf("rendered request page after the decision:\n%s", dom)
	}
}
