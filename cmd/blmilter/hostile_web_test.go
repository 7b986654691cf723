package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/internal/testkit/smtpsink"
)

// The web side of the daemon against hostile input, on the real binary:
// removal requests racing one mailbox's daily limit from many clients,
// expiry times beyond the years Unix nanoseconds hold, and a client
// guessing the admin token.
func TestHostileWebInput(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it as a daemon")
	}
	dir := t.TempDir()
	bin := testkit.Binary(t, "github.com/blmilter/blmilter/cmd/blmilter")
	sink := smtpsink.Start(t, false)
	db := filepath.Join(dir, "blmilter.db")
	addr := testkit.FreeAddr(t)
	base := "http://" + addr
	const token = "an-admin-token-of-forty-characters-long!"
	cfgPath := filepath.Join(dir, "blmilter.toml")
	writeFile(t, cfgPath, siteWebConfig(addr, base, db, fmt.Sprintf(`admin_token = %q

[web.smtp]
server = %q
from = "lookup@lookup.test"
starttls = false
`, token, sink.Addr)))
	if out, err := exec.Command(bin, "list", "add", "198.18.0.1", "-db", db, "-create", "-category", "spam-source").CombinedOutput(); err != nil {
		t.Fatalf("blmilter list add: %v\n%s", err, out)
	}
	d := startDaemon(t, bin, cfgPath, base)
	plain := &http.Client{Timeout: 10 * time.Second}

	t.Run("mail quota under a race", func(t *testing.T) {
		tok := removalToken(t, plain, base, "198.18.0.1", d)
		const racers = 30
		codes := make([]int, racers)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range racers {
			// Each racer is its own client (127.0.0.2...), so the limit per
			// client stays out of the way and only the mailbox's counts.
			local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				DialContext: (&net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}).DialContext}}
			wg.Go(func() {
				<-start
				email := []string{"victim@example.org", "VICTIM@example.org", "Victim@Example.Org"}[i%3]
				code, _, err := postForm(c, base+"/ip/198.18.0.1/removal", url.Values{"csrf": {tok}, "email": {email}, "reason": {"x"}})
				if err != nil {
					t.Error(err)
				}
				codes[i] = code
			})
		}
		close(start)
		wg.Wait()
		ok, limited := 0, 0
		for _, c := range codes {
			switch c {
			case http.StatusOK:
				ok++
			case http.StatusTooManyRequests:
				limited++
			}
		}
		if ok != 3 || limited != racers-3 {
			t.Errorf("%d requests accepted and %d limited (%v); want 3 and %d", ok, limited, codes, racers-3)
		}
		if n := len(sink.Messages()); n != 3 {
			t.Errorf("%d confirmation mails sent to one mailbox, want 3", n)
		}
	})

	admin := func(method, path, body, tok string) (int, string) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := plain.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	t.Run("far expiry", func(t *testing.T) {
		code, body := admin("POST", "/admin/api/listings", `{"prefix":"198.18.0.2","expires_at":"9999-12-31T00:00:00Z"}`, token)
		if code != http.StatusCreated {
			t.Fatalf("add: %d %s", code, body)
		}
		var rep struct {
			Status      string `json:"status"`
			SiteListing struct {
				ExpiresAt time.Time `json:"expires_at"`
			} `json:"site_listing"`
		}
		page := httpGet(t, base+"/api/v1/ip/198.18.0.2")
		if err := json.Unmarshal([]byte(page), &rep); err != nil || rep.Status != "listed" || rep.SiteListing.ExpiresAt.Year() != 9999 {
			t.Errorf("a listing until 9999: %s (%v)", page, err)
		}
		if code, body := admin("POST", "/admin/api/listings", `{"prefix":"198.18.0.3","expires_at":"1600-01-01T00:00:00Z"}`, token); code != http.StatusBadRequest || !strings.Contains(body, "2000 to 9999") {
			t.Errorf("a listing until 1600: %d %s", code, body)
		}
		if code, body := admin("POST", "/admin/api/listings", `{"prefix":"198.18.0.3","category":"x\r\n<b>"}`, token); code != http.StatusBadRequest {
			t.Errorf("a category with CR/LF and markup: %d %s", code, body)
		}
	})

	t.Run("token guessing", func(t *testing.T) {
		var codes []int
		for i := range 8 {
			code, _ := admin("GET", "/admin/api/listings", "", fmt.Sprintf("guess-%d", i))
			codes = append(codes, code)
		}
		if codes[0] != http.StatusUnauthorized || codes[len(codes)-1] != http.StatusTooManyRequests {
			t.Errorf("answers to 8 wrong tokens: %v; want 401 first, 429 at the end", codes)
		}
		if code, _ := admin("GET", "/admin/api/listings", "", token); code != http.StatusTooManyRequests {
			t.Errorf("the right token from the limited client: %d, want 429", code)
		}
		testkit.WaitFor(t, "the failures in the log", 5*time.Second, func() error {
			return testkit.Unless(strings.Contains(d.log.String(), "admin API authentication failed") &&
				strings.Contains(d.log.String(), "client=127.0.0.1"), "not logged")
		})
		if n := strings.Count(d.log.String(), "admin API authentication failed"); n > 3 {
			t.Errorf("%d log lines for 9 failures of one client", n)
		}
	})
}
