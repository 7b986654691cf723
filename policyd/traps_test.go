package policyd

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit/testengine"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
	"github.com/blmilter/blmilter/traps"
)

// Through the policy server: a trap recipient gets 550 5.1.1 and lists
// its client from the next message on, the message's other recipients are
// judged as before, an authenticated client is refused the trap but not
// listed, and the listed client's mail to its delist address removes the
// listing and is discarded, while a wrong token or another client's does
// not. No log line at info names the trap.
func TestTrapsAndDelist(t *testing.T) {
	d := newDNS(t)
	st, err := store.Open(filepath.Join(t.TempDir(), "s.db"), store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	self := store.SelfService{Categories: []string{"spam-source"}, Quota: 2, Window: 90 * 24 * time.Hour}
	st.SetSelfService(self)
	cfg := testengine.Config(t, d, `
[web]
public_url = "https://lookup.example.org"
[policy]
threshold = 3
[[list]]
name = "site"
store = true
weight = 5
`)
	e := testengine.From(t, cfg, policy.Deps{StoreList: st, Recorder: st})
	lb := &logBuffer{}
	logger := slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo}))
	tr := traps.New(traps.Options{
		Addresses:    []string{"spamtrap@example.org"},
		Rules:        store.TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64},
		DelistDomain: "example.org", SelfService: self, Store: st, Logger: logger,
	})
	ln, err := Listen("127.0.0.1:0", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(func() *policy.Engine { return e }, limits(Options{Logger: logger, Traps: func() *traps.Traps { return tr }}))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	c := (&testServer{network: "tcp", addr: ln.Addr().String()}).dial(t)

	const bot = "198.18.3.1"
	if got := c.ask(rcpt(bot, "SpamTrap@example.org", "instance=m1")); got != "550 5.1.1 "+traps.TrapReason {
		t.Errorf("trap recipient: %q", got)
	}
	// The same message's other recipient is judged as before: not listed yet.
	if got := c.ask(rcpt(bot, "user@example.org", "instance=m1")); got != "DUNNO" {
		t.Errorf("the message's other recipient: %q", got)
	}
	// The next message is refused with the link.
	if got := c.ask(rcpt(bot, "user@example.org", "instance=m2")); !strings.HasPrefix(got, "550 5.7.1") || !strings.Contains(got, "https://lookup.example.org/ip/"+bot) {
		t.Errorf("next message: %q", got)
	}
	// Authenticated: refused the trap, not listed.
	const user = "198.18.3.2"
	if got := c.ask(rcpt(user, "spamtrap@example.org", "instance=m3", "sasl_username=alice")); got != "550 5.1.1 "+traps.TrapReason {
		t.Errorf("authenticated trap recipient: %q", got)
	}
	if _, _, listed := st.Lookup(netip.MustParseAddr(user)); listed {
		t.Error("an authenticated client was listed")
	}

	tok, _, err := st.DelistToken(context.Background(), netip.MustParseAddr(bot), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	delist := "delist+" + tok + "@example.org"
	if got := c.ask(rcpt(bot, "delist+aaaaaaaaaaaaaaaa@example.org", "instance=m4")); !strings.HasPrefix(got, "550 5.7.1") {
		t.Errorf("a wrong token from the listed client: %q, want its listing's reply", got)
	}
	if got := c.ask(rcpt("198.18.3.9", delist, "instance=m5")); !strings.HasPrefix(got, "550 5.1.1") {
		t.Errorf("the token from another client: %q", got)
	}
	if _, _, listed := st.Lookup(netip.MustParseAddr(bot)); !listed {
		t.Fatal("a wrong proof removed the listing")
	}
	got := c.ask(rcpt(bot, strings.ToUpper(delist), "instance=m6", "encryption_protocol=TLSv1.3", "encryption_cipher=TLS_AES_128_GCM_SHA256"))
	if got != "DISCARD delisting mail" {
		t.Errorf("the proof: %q", got)
	}
	if _, _, listed := st.Lookup(netip.MustParseAddr(bot)); listed {
		t.Error("still listed after the proof")
	}
	h, _ := st.History(context.Background(), netip.MustParseAddr(bot), time.Now())
	if len(h.Events) == 0 || h.Events[0].By != store.ByProof || !strings.Contains(h.Events[0].Detail, "HELO bot.example") || !strings.Contains(h.Events[0].Detail, "TLSv1.3") {
		t.Errorf("proof evidence: %+v", h.Events)
	}
	if got := c.ask(rcpt(bot, "user@example.org", "instance=m7")); got != "DUNNO" {
		t.Errorf("after the proof: %q", got)
	}
	lb.waitFor(t, "trap hit")
	if strings.Contains(strings.ToLower(lb.String()), "spamtrap") {
		t.Errorf("the log names the trap:\n%s", lb.String())
	}
}
