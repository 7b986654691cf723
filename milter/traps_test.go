package milter

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/internal/testkit/miltertest"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
	"github.com/blmilter/blmilter/traps"
)

const trapReply = "550 5.1.1 " + traps.TrapText

func trapEnv(t *testing.T) (*env, *store.Store) {
	t.Helper()
	st := trapStore(t)
	var tr *traps.Traps
	e := newEnvOpts(t, "tcp", "[[list]]\nname = \"site\"\nstore = true\nweight = 5\n", Options{Traps: func() *traps.Traps { return tr }},
		policy.Deps{StoreList: st, Recorder: st})
	tr = traps.New(trapOptions(st, e.srv.logger))
	return e, st
}

// trapStore is a store whose self-service takes spam-source listings.
func trapStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "m.db"), store.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.SetSelfService(trapSelfService)
	return st
}

var trapSelfService = store.SelfService{Categories: []string{"spam-source"}, Quota: 2, Window: 90 * 24 * time.Hour}

// trapOptions are two trap addresses and delist addresses at example.org.
func trapOptions(st *store.Store, logger *slog.Logger) traps.Options {
	return traps.Options{
		Addresses:    []string{"spamtrap@example.org", "@trap.example.net"},
		Rules:        store.TrapRules{Hits: 1, Window: 24 * time.Hour, Expires: 7 * 24 * time.Hour, MaxExpires: 90 * 24 * time.Hour, Category: "spam-source", IPv6Prefix: 64},
		DelistDomain: "example.org", SelfService: trapSelfService, Store: st, Logger: logger,
	}
}

// The HELO stage costs a round trip per SMTP session, so the milter asks
// for it, and for the TLS macros sent with it, only while spam traps or
// delist addresses are configured; SMFIF_DELRCPT only with delist
// addresses. Without either it negotiates what it did before traps existed
// (and e2e/noopmilter copies). Each connection negotiates with the traps
// of that moment and keeps them: a connection that did not negotiate
// SMFIF_DELRCPT treats delist addresses as ordinary recipients.
func TestNegotiationFollowsTraps(t *testing.T) {
	st := trapStore(t)
	var current atomic.Pointer[traps.Traps]
	e := newEnvOpts(t, "tcp", "", Options{Traps: current.Load}, policy.Deps{StoreList: st, Recorder: st})
	trapsOnly := trapOptions(st, e.srv.logger)
	trapsOnly.DelistDomain = ""
	delistOnly := trapOptions(st, e.srv.logger)
	delistOnly.Addresses = nil

	base := miltertest.Negotiation{
		Version:  2,
		Actions:  gomilter.OptAddHeader | gomilter.OptSetSymList,
		Protocol: gomilter.OptNoHelo | gomilter.OptNoHeaders | gomilter.OptNoEOH | gomilter.OptNoBody | gomilter.OptNoUnknown | gomilter.OptNoData,
		Macros: map[gomilter.Stage]string{
			gomilter.StageConnect: "{client_addr} _", gomilter.StageMailFrom: "i {auth_authen}",
			gomilter.StageRcptTo: "i", gomilter.StageEOM: "i",
		},
	}
	withHelo := base
	withHelo.Protocol &^= gomilter.OptNoHelo
	withHelo.Macros = maps.Clone(base.Macros)
	withHelo.Macros[gomilter.StageHelo] = "{tls_version} {cipher}"
	withDelist := withHelo
	withDelist.Actions |= gomilter.OptRemoveRcpt

	for _, tc := range []struct {
		name  string
		traps *traps.Traps
		want  miltertest.Negotiation
	}{
		{"none", nil, base},
		{"spam traps", traps.New(trapsOnly), withHelo},
		{"delist addresses", traps.New(delistOnly), withDelist},
		{"both", traps.New(trapOptions(st, e.srv.logger)), withDelist},
		{"none after a reload took them away", nil, base},
	} {
		t.Run(tc.name, func(t *testing.T) {
			current.Store(tc.traps)
			got, err := miltertest.Negotiate(e.network, e.addr)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("negotiated %+v\nwant       %+v", got, tc.want)
			}
		})
	}

	t.Run("no traps option", func(t *testing.T) {
		plain := serverEnv(t, "tcp", time.Minute)
		got, err := miltertest.Negotiate(plain.network, plain.addr)
		if err != nil || !reflect.DeepEqual(got, base) {
			t.Errorf("negotiated %+v, %v\nwant       %+v", got, err, base)
		}
	})

	t.Run("delist addresses configured mid-connection", func(t *testing.T) {
		current.Store(traps.New(trapsOnly))
		cs := e.mtaSession(t, "198.18.4.9", "clean.example")
		current.Store(traps.New(trapOptions(st, e.srv.logger)))
		act, err := cs.Mail("a@clean.example", nil)
		expect(t, "mail", act, err, "continue")
		act, err = cs.Rcpt("delist+aaaaaaaaaaaaaaaa@example.org", nil)
		expect(t, "a delist address on a connection without SMFIF_DELRCPT", act, err, "continue")
		act, err = cs.Rcpt("spamtrap@example.org", nil)
		expect(t, "a trap on the same connection", act, err, trapReply)
		// A new connection has the delist addresses: a wrong token from
		// a client that is not listed is a dead address.
		cs = e.mtaSession(t, "198.18.4.9", "clean.example")
		cs.Mail("a@clean.example", nil)
		act, err = cs.Rcpt("delist+aaaaaaaaaaaaaaaa@example.org", nil)
		expect(t, "a wrong token on a new connection", act, err, "550 5.1.1 "+traps.DelistText)
	})
}

// session connects a client at ip as Postfix does: CONNECT, HELO with the
// TLS macros, MAIL.
func (e *env) mtaSession(t *testing.T, ip, helo string, macros ...string) *gomilter.ClientSession {
	t.Helper()
	c := gomilter.NewClientWithOptions(e.network, e.addr, gomilter.ClientOptions{
		ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		ActionMask: gomilter.OptAddHeader | gomilter.OptRemoveRcpt,
	})
	cs, err := c.Session()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	act, err := cs.Conn("["+ip+"]", gomilter.FamilyInet, 40000, ip)
	expect(t, "connect", act, err, "continue")
	if len(macros) > 0 {
		if err := cs.Macros(gomilter.CodeHelo, macros...); err != nil {
			t.Fatal(err)
		}
	}
	act, err = cs.Helo(helo)
	expect(t, "helo", act, err, "continue")
	return cs
}

func listedIn(st *store.Store, ip string) bool {
	_, _, listed := st.Lookup(netip.MustParseAddr(ip))
	return listed
}

// A trap recipient is refused as a dead address and lists its client from
// the next session on; the session's other recipients are judged as
// before. An authenticated client is refused the trap but not listed.
func TestTrapHitThroughMilter(t *testing.T) {
	e, st := trapEnv(t)
	cs := e.mtaSession(t, "198.18.4.1", "bot.example")
	act, err := cs.Mail("spam@forged.example", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs.Rcpt("SpamTrap@example.org", nil)
	expect(t, "trap", act, err, trapReply)
	act, err = cs.Rcpt("user@example.org", nil)
	expect(t, "the session's other recipient", act, err, "continue")
	if !listedIn(st, "198.18.4.1") {
		t.Fatal("not listed after the trap hit")
	}
	hs, _ := st.TrapHits(context.Background(), netip.MustParseAddr("198.18.4.1"), 5)
	if len(hs) != 1 || hs[0].HELO != "bot.example" || hs[0].MailFrom != "spam@forged.example" || hs[0].Trap != "spamtrap@example.org" {
		t.Errorf("evidence %+v", hs)
	}
	cs2 := e.mtaSession(t, "198.18.4.1", "bot.example")
	act, err = cs2.Mail("spam@forged.example", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs2.Rcpt("user@example.org", nil)
	if err != nil || act.Code != gomilter.ActReplyCode || act.SMTPCode != 550 || !strings.Contains(act.SMTPText, "https://lookup.example.org/ip/198.18.4.1") {
		t.Errorf("next session: %+v, %v", act, err)
	}

	cs3 := e.mtaSession(t, "198.18.4.2", "laptop")
	if err := cs3.Macros(gomilter.CodeMail, "{auth_authen}", "alice"); err != nil {
		t.Fatal(err)
	}
	act, err = cs3.Mail("alice@example.org", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs3.Rcpt("x@trap.example.net", nil)
	expect(t, "authenticated trap", act, err, trapReply)
	if listedIn(st, "198.18.4.2") {
		t.Error("an authenticated client was listed")
	}
	if strings.Contains(strings.ToLower(e.logs.String()), "spamtrap") || strings.Contains(e.logs.String(), "x@trap") {
		t.Errorf("the log names a trap:\n%s", e.logs.String())
	}
}

// Mail from the listed client to its delist address removes the listing
// and is discarded; with another recipient, the delist address is dropped
// from the message. A wrong token, or the token from another client, does
// nothing.
func TestDelistThroughMilter(t *testing.T) {
	e, st := trapEnv(t)
	ctx := context.Background()
	for _, ip := range []string{"198.18.4.5", "198.18.4.6"} {
		if _, err := st.AddListing(ctx, store.Listing{Prefix: netip.MustParsePrefix(ip + "/32"), Category: "spam-source"}); err != nil {
			t.Fatal(err)
		}
	}
	tok, _, err := st.DelistToken(ctx, netip.MustParseAddr("198.18.4.5"), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	delist := "delist+" + tok + "@example.org"

	// Another client with the token, and the client with a wrong one.
	cs := e.mtaSession(t, "198.18.4.6", "other.example")
	cs.Mail("a@other.example", nil)
	act, err := cs.Rcpt(delist, nil)
	if err != nil || act.Code != gomilter.ActReplyCode || act.SMTPCode != 550 || !strings.Contains(act.SMTPText, "listed by site") {
		t.Errorf("another listed client's use of the token: %+v, %v", act, err)
	}
	cs = e.mtaSession(t, "198.18.4.7", "clean.example")
	cs.Mail("a@clean.example", nil)
	act, err = cs.Rcpt(delist, nil)
	expect(t, "an unlisted client with another's token", act, err, "550 5.1.1 "+traps.DelistText)
	cs = e.mtaSession(t, "198.18.4.5", "mail.example.net")
	cs.Mail("a@example.net", nil)
	act, err = cs.Rcpt("delist+aaaaaaaaaaaaaaaa@example.org", nil)
	if err != nil || act.Code != gomilter.ActReplyCode || act.SMTPCode != 550 || !strings.Contains(act.SMTPText, "listed by site") {
		t.Errorf("a wrong token from the listed client: %+v, %v", act, err)
	}
	if !listedIn(st, "198.18.4.5") {
		t.Fatal("a failed proof removed the listing")
	}

	// The proof.
	cs = e.mtaSession(t, "198.18.4.5", "mail.example.net", "{tls_version}", "TLSv1.3", "{cipher}", "TLS_AES_256_GCM_SHA384")
	act, err = cs.Mail("admin@example.net", nil)
	expect(t, "mail", act, err, "continue")
	act, err = cs.Rcpt(strings.ToUpper(delist), nil)
	expect(t, "delist", act, err, "continue")
	mods, act, err := cs.End()
	if err != nil || act.Code != gomilter.ActDiscard || len(mods) != 0 {
		t.Fatalf("end of the delist message: %+v %+v %v, want discard", mods, act, err)
	}
	if listedIn(st, "198.18.4.5") {
		t.Fatal("still listed after the proof")
	}
	h, _ := st.History(ctx, netip.MustParseAddr("198.18.4.5"), time.Now())
	if len(h.Events) == 0 || h.Events[0].By != store.ByProof || !strings.Contains(h.Events[0].Detail, "HELO mail.example.net") || !strings.Contains(h.Events[0].Detail, "TLSv1.3 TLS_AES_256_GCM_SHA384") {
		t.Errorf("evidence of the proof: %+v", h.Events)
	}

	// With postmaster in the same message: the delist address is dropped.
	tok6, _, _ := st.DelistToken(ctx, netip.MustParseAddr("198.18.4.6"), 24*time.Hour)
	cs = e.mtaSession(t, "198.18.4.6", "other.example")
	cs.Mail("a@other.example", nil)
	act, err = cs.Rcpt("postmaster@example.org", nil)
	expect(t, "postmaster", act, err, "continue")
	act, err = cs.Rcpt("delist+"+tok6+"@example.org", nil)
	expect(t, "delist", act, err, "continue")
	mods, act, err = cs.End()
	if err != nil || act.Code != gomilter.ActContinue || len(mods) != 1 || mods[0].Code != gomilter.ActDelRcpt || mods[0].Rcpt != "<delist+"+tok6+"@example.org>" {
		t.Fatalf("end of a message with postmaster: %+v %+v %v", mods, act, err)
	}
}
