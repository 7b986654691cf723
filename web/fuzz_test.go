package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/mailbox"
	"github.com/blmilter/blmilter/internal/testkit/smtpsink"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

// FuzzAdminAPI drives the admin API's listing endpoints with random JSON
// against a real store. Whatever the body, the answer is a JSON document
// and never a server error, and what the API answers 201 for is stored as
// answered: a category of one word, an expiry in the years 2000 to 9999.
func FuzzAdminAPI(f *testing.F) {
	for _, seed := range []string{
		`{"prefix":"192.0.2.7","category":"zombie","reason":"seen","expires_in":"720h"}`,
		`{"prefix":"198.51.100.0/24","expires_at":"9999-12-31T00:00:00Z"}`,
		`{"prefix":"2001:db8::/48","category":"open-proxy","expires_at":"2030-01-01T00:00:00+02:00"}`,
		`{"prefix":"192.0.2.8","expires_at":"1600-01-01T00:00:00Z"}`,
		`{"prefix":"192.0.2.9","category":"x\r\n<b>","reason":"\u0000"}`,
		`{"prefix":"::ffff:192.0.2.10","expires_in":"2562047h"}`,
		`{"prefix":1}`, `[]`, `{"prefix":"192.0.2.7","unknown":1}`, `{`, ``,
	} {
		f.Add(seed, "192.0.2.7")
	}
	e := newEnv(f, envOpts{adminToken: "fuzz-token"})
	h := e.srv.Handler()
	f.Fuzz(func(t *testing.T, body, remove string) {
		do := func(method, path, body string) *httptest.ResponseRecorder {
			req := httptest.NewRequest(method, "/", strings.NewReader(body))
			req.URL.Path = path // any bytes, as a client could send them escaped
			req.Header.Set("Authorization", "Bearer fuzz-token")
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("%s %q with %q: %d %s", method, path, body, rec.Code, rec.Body)
			}
			var v any
			if rec.Code >= 300 && rec.Code < 400 {
				return rec // the router cleaning a path such as "/a/./b"
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") || json.Unmarshal(rec.Body.Bytes(), &v) != nil {
				t.Fatalf("%s %q: %d answered %q: %q", method, path, rec.Code, ct, rec.Body)
			}
			return rec
		}
		rec := do("POST", "/admin/api/listings", body)
		if rec.Code == http.StatusCreated {
			var got listingJSON
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if !policy.IsCategory(got.Category) {
				t.Fatalf("stored category %q from %q", got.Category, body)
			}
			p, err := store.ParsePrefix(got.Prefix)
			if err != nil {
				t.Fatalf("answered prefix %q: %v", got.Prefix, err)
			}
			if got.ExpiresAt != nil {
				if got.ExpiresAt.Before(store.MinTime) || got.ExpiresAt.After(store.MaxTime) || !got.ExpiresAt.After(time.Now()) {
					t.Fatalf("answered expiry %v from %q", got.ExpiresAt, body)
				}
			}
			l, ok := e.st.ListingFor(p.Addr())
			if !ok || l.Prefix != p {
				t.Fatalf("answered 201 for %s, but it is not listed (%+v, %v)", p, l, ok)
			}
			if (l.ExpiresAt == nil) != (got.ExpiresAt == nil) || (l.ExpiresAt != nil && !l.ExpiresAt.Equal(got.ExpiresAt.Truncate(time.Millisecond))) {
				t.Fatalf("stored expiry %v, answered %v", l.ExpiresAt, got.ExpiresAt)
			}
		}
		do("DELETE", "/admin/api/listings/"+remove, "")
	})
}

var fuzzClients atomic.Uint32

// FuzzRemovalForm sends random removal forms through the real handler, a
// real store and a real SMTP relay. A request is either refused in words
// (400, 429) or stored with the address exactly as typed, and the one
// mail it causes has exactly the headers blmilter writes.
func FuzzRemovalForm(f *testing.F) {
	for _, seed := range [][2]string{
		{"admin@example.org", "fixed"},
		{"Jöran@bücher.example", "fixed"},
		{`"john smith"@example.org`, "cleaned"},
		{"a@[127.0.0.1]", "x"},
		{"a@-", "x"},
		{"a@example.org\r\nBcc: eve@example.org", "x"},
		{"a@example.org", "line\r\n.\r\nMAIL FROM:<x>"},
		{"", ""},
	} {
		f.Add(seed[0], seed[1])
	}
	sink := smtpsink.Start(f, true)
	e := newEnv(f, envOpts{smtp: sink.Addr})
	h := e.srv.Handler()
	tok := e.srv.csrf.token("removal", ipSite.String())
	ctx := context.Background()
	// Requests get ids 1, 2, 3, ... and are never deleted, so the next
	// one stored has id next: no scan of a table that grows all run.
	next := int64(1)
	f.Fuzz(func(t *testing.T, email, reason string) {
		form := url.Values{"csrf": {tok}, "email": {email}, "reason": {reason}}
		req := httptest.NewRequest("POST", "/ip/192.0.2.50/removal", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		n := fuzzClients.Add(1)
		req.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:1000", n>>16&255, n>>8&255, n&255)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusTooManyRequests:
		default:
			t.Fatalf("email %q reason %q: status %d", email, reason, rec.Code)
		}
		r, err := e.st.Request(ctx, next)
		if errors.Is(err, store.ErrNotFound) {
			if rec.Code == http.StatusOK && strings.Contains(rec.Body.String(), "Check your mailbox") {
				t.Fatalf("told to check the mailbox, but nothing stored for %q", email)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		next++
		if _, err := e.st.Request(ctx, next); err == nil || rec.Code != http.StatusOK {
			t.Fatalf("email %q: more than one request stored, or status %d", email, rec.Code)
		}
		if r.Email != strings.TrimSpace(email) {
			t.Fatalf("stored %q, typed %q", r.Email, email)
		}
		box, err := mailbox.Parse(r.Email)
		if err != nil {
			t.Fatalf("stored %q, which is no mailbox: %v", r.Email, err)
		}
		if r.Status != store.StatusPending {
			t.Fatalf("request for %q is %s with a working relay", email, r.Status)
		}
		msg := sink.Wait(t, mailWait)
		if len(msg.To) != 1 || msg.To[0] != serverForm(box) || msg.UTF8 != box.NeedsSMTPUTF8() {
			t.Fatalf("mail to %v (SMTPUTF8 %v) for %q", msg.To, msg.UTF8, email)
		}
		m, err := mail.ReadMessage(strings.NewReader(msg.Data))
		if err != nil {
			t.Fatalf("mail for %q does not parse: %v\n%s", email, err, msg.Data)
		}
		want := []string{"From", "To", "Subject", "Date", "Message-Id", "Auto-Submitted", "Mime-Version", "Content-Type", "Content-Transfer-Encoding"}
		if len(m.Header) != len(want) {
			t.Fatalf("mail for %q has headers %v", email, m.Header)
		}
		for _, k := range want {
			if len(m.Header[k]) != 1 {
				t.Fatalf("mail for %q: header %s %v", email, k, m.Header[k])
			}
		}
		if m.Header.Get("To") != box.Envelope() {
			t.Fatalf("To: %q, want %q", m.Header.Get("To"), box.Envelope())
		}
	})
}

// serverForm is the recipient as go-smtp's server hands it on: a quoted
// local part comes unquoted.
func serverForm(box mailbox.Mailbox) string {
	env := box.Envelope()
	if !strings.HasPrefix(box.Local, `"`) {
		return env
	}
	q := box.Local[1 : len(box.Local)-1]
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		if q[i] == '\\' && i+1 < len(q) {
			i++
		}
		b.WriteByte(q[i])
	}
	return b.String() + env[len(box.Local):]
}
