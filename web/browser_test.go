//go:build e2e

package web

import (
	"context"
	"errors"
	"net"
	"net/http"
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
	if _, err := os.Stat(chromium); err != nil {
		t.Fatal("headless browser test: " + chromium + " not found (Debian package chromium; e2e/deps.sh installs it)")
	}
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	// A listed IP that is also on the site's own list, for the screenshot.
	exp := time.Now().Add(30 * 24 * time.Hour)
	if _, err := e.st.AddListing(ctx, store.Listing{Prefix: netip.PrefixFrom(ipListed, 32), Category: "zombie",
		Reason: "Spam trap hits from a botnet, 2026-11-27", Source: "test", ExpiresAt: &exp}); err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(ln) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	base := "http://" + ln.Addr().String()

	run := func(args ...string) string {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
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
