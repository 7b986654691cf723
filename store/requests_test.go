package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blmilter/blmilter/config"
)

// The default config's self-service quota and window.
var (
	removalQuota  = config.Defaults().Web.RemovalQuota
	removalWindow = config.Defaults().Web.RemovalWindow.Duration
)

// confirmed creates and confirms a removal request for ip.
func confirmed(t testing.TB, s *Store, ip string) RemovalRequest {
	t.Helper()
	ctx := context.Background()
	r, err := s.CreateRequest(ctx, NewRequest{IP: ip, Email: "owner@example.org", Reason: "fixed it"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.ConfirmRequest(ctx, r.Token, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRequestTokenLifecycle(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{TokenTTL: time.Hour})
	r, err := s.CreateRequest(ctx, NewRequest{IP: "::ffff:192.0.2.7", Email: "Owner@Example.org", Reason: "  we cleaned the host  "})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID == 0 || r.Status != StatusPending || r.IP.String() != "192.0.2.7" || r.Reason != "we cleaned the host" {
		t.Errorf("created %+v", r)
	}
	if len(r.Token) != 43 || strings.ContainsAny(r.Token, "+/=") {
		t.Errorf("token %q is not 32 bytes of unpadded base64url", r.Token)
	}
	if d := r.TokenExpires.Sub(r.Created); d != time.Hour {
		t.Errorf("token lives %v, want the configured hour", d)
	}

	// Only the SHA-256 is kept, and nothing hands the token back.
	var stored []byte
	if err := s.db.QueryRow(`SELECT token_hash FROM removal_requests WHERE id = ?`, r.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256([]byte(r.Token)); !bytes.Equal(stored, sum[:]) {
		t.Errorf("stored %x, want the token's SHA-256", stored)
	}
	if got, _ := s.Request(ctx, r.ID); got.Token != "" {
		t.Error("Request returns the token")
	}
	if bytes.Contains(dbFiles(t, s), []byte(r.Token)) {
		t.Error("the token text is in the database files")
	}

	other, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.8", Email: "owner@example.org", Reason: ""})
	if err != nil {
		t.Fatal(err)
	}
	if other.Token == r.Token {
		t.Fatal("two requests got the same token")
	}

	for _, bad := range []string{"", "nonsense", r.Token + "x", strings.Repeat("a", 4000)} {
		if _, err := s.ConfirmRequest(ctx, bad, time.Now()); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("ConfirmRequest(%.10q) = %v, want ErrTokenInvalid", bad, err)
		}
	}
	c, err := s.ConfirmRequest(ctx, r.Token, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != r.ID || c.Status != StatusConfirmed || c.Verified == nil {
		t.Errorf("confirmed %+v", c)
	}
	if _, err := s.ConfirmRequest(ctx, r.Token, time.Now()); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("second use of a token: %v, want ErrTokenInvalid", err)
	}

	// Expired: the other request's link, followed after its hour.
	if _, err := s.ConfirmRequest(ctx, other.Token, other.Created.Add(time.Hour)); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("expired token: %v, want ErrTokenInvalid", err)
	}
	if got, _ := s.Request(ctx, other.ID); got.Status != StatusPending {
		t.Errorf("an expired confirmation changed the status to %s", got.Status)
	}
}

// dbFiles is the database and its WAL, as bytes.
func dbFiles(t *testing.T, s *Store) []byte {
	t.Helper()
	var all []byte
	for _, suffix := range []string{"", "-wal", "-journal"} {
		b, err := os.ReadFile(s.Path() + suffix)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

func TestCreateRequestValidates(t *testing.T) {
	s := openTest(t, Options{})
	tests := []struct{ name, ip, email, reason string }{
		{"bad ip", "192.0.2", "a@example.org", ""},
		{"host name", "mail.example.org", "a@example.org", ""},
		{"zone", "fe80::1%eth0", "a@example.org", ""},
		{"no email", "192.0.2.1", "", ""},
		{"no at", "192.0.2.1", "example.org", ""},
		{"display name", "192.0.2.1", "Bob <bob@example.org>", ""},
		{"header injection", "192.0.2.1", "bob@example.org\r\nBcc: eve@example.org", ""},
		{"two addresses", "192.0.2.1", "bob@example.org, eve@example.org", ""},
		{"long email", "192.0.2.1", strings.Repeat("a", 250) + "@example.org", ""},
		{"address literal", "192.0.2.1", "bob@[127.0.0.1]", ""},
		{"hyphen domain", "192.0.2.1", "a@-", ""},
		{"single label", "192.0.2.1", "root@localhost", ""},
		{"long reason", "192.0.2.1", "bob@example.org", strings.Repeat("x", MaxReasonLen+1)},
		{"bad utf-8", "192.0.2.1", "bob@example.org", "\xff\xfe"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if r, err := s.CreateRequest(context.Background(), NewRequest{IP: tc.ip, Email: tc.email, Reason: tc.reason}); !errors.Is(err, ErrInvalid) {
				t.Errorf("CreateRequest = %+v, %v; want ErrInvalid", r, err)
			}
		})
	}
}

func TestDecideConfirmed(t *testing.T) {
	self := []string{"zombie", "dynamic"}
	tests := []struct {
		name        string
		listings    map[string]string // prefix → category
		ip          string
		wantRemoved bool
		wantStatus  string
		wantListed  bool
	}{
		{"self-service category", map[string]string{"192.0.2.7": "zombie"}, "192.0.2.7", true, StatusRemoved, false},
		{"operator category", map[string]string{"192.0.2.7": "local"}, "192.0.2.7", false, StatusWaiting, true},
		{"network listing", map[string]string{"192.0.2.0/24": "dynamic"}, "192.0.2.7", false, StatusWaiting, true},
		{"host inside a listed network", map[string]string{"192.0.2.7": "zombie", "192.0.2.0/24": "dynamic"}, "192.0.2.7", false, StatusWaiting, true},
		{"IPv6", map[string]string{"2001:db8::25": "zombie"}, "2001:db8::25", true, StatusRemoved, false},
		{"not listed", nil, "192.0.2.7", true, StatusRemoved, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := openTest(t, Options{})
			for p, c := range tc.listings {
				add(t, s, p, c)
			}
			r := confirmed(t, s, tc.ip)
			removed, err := s.DecideConfirmed(ctx, r.ID, removalQuota, removalWindow, self)
			if err != nil {
				t.Fatal(err)
			}
			if removed != tc.wantRemoved {
				t.Errorf("removed = %v, want %v", removed, tc.wantRemoved)
			}
			got, _ := s.Request(ctx, r.ID)
			if got.Status != tc.wantStatus {
				t.Errorf("status %s, want %s", got.Status, tc.wantStatus)
			}
			if _, _, listed := s.Lookup(r.IP); listed != tc.wantListed {
				t.Errorf("listed = %v after the decision, want %v", listed, tc.wantListed)
			}
			if _, err := s.DecideConfirmed(ctx, r.ID, 2, time.Hour, self); err == nil {
				t.Error("a request was decided twice")
			}
		})
	}
}

func TestDecideNeedsConfirmation(t *testing.T) {
	s := openTest(t, Options{})
	add(t, s, "192.0.2.7", "zombie")
	r, err := s.CreateRequest(context.Background(), NewRequest{IP: "192.0.2.7", Email: "a@example.org", Reason: ""})
	if err != nil {
		t.Fatal(err)
	}
	if removed, err := s.DecideConfirmed(context.Background(), r.ID, 2, time.Hour, []string{"zombie"}); err == nil || removed {
		t.Errorf("an unconfirmed request: removed %v, err %v", removed, err)
	}
	if _, _, listed := s.Lookup(r.IP); !listed {
		t.Error("an unconfirmed request removed the listing")
	}
}

// The quota counts self-service removals of the IP in the window, including
// those of listings that came back.
func TestSelfServiceQuota(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	self := []string{"zombie"}
	ip := "192.0.2.7"
	for i, want := range []bool{true, true, false} {
		add(t, s, ip, "zombie") // listed again after each removal
		r := confirmed(t, s, ip)
		removed, err := s.DecideConfirmed(ctx, r.ID, removalQuota, removalWindow, self)
		if err != nil {
			t.Fatal(err)
		}
		if removed != want {
			t.Fatalf("request %d: removed %v, want %v", i+1, removed, want)
		}
	}
	l, _ := s.ListingFor(mustAddr(t, ip))
	if l.Removals != 2 {
		t.Errorf("listing removal count %d, want 2", l.Removals)
	}
	if n, _ := s.SelfServiceRemovals(ctx, mustAddr(t, ip), time.Now().Add(-removalWindow)); n != 2 {
		t.Errorf("SelfServiceRemovals = %d, want 2", n)
	}
	// Removals older than the window no longer count.
	if _, err := s.db.Exec(`UPDATE removals SET at = ?`, millis(time.Now().Add(-91*24*time.Hour))); err != nil {
		t.Fatal(err)
	}
	r := confirmed(t, s, ip)
	if removed, err := s.DecideConfirmed(ctx, r.ID, removalQuota, removalWindow, self); err != nil || !removed {
		t.Errorf("after the window: removed %v, err %v; want removed", removed, err)
	}
	// Another IP has its own quota.
	add(t, s, "192.0.2.8", "zombie")
	r = confirmed(t, s, "192.0.2.8")
	if removed, _ := s.DecideConfirmed(ctx, r.ID, 1, removalWindow, self); !removed {
		t.Error("another IP's removals counted against 192.0.2.8")
	}
}

func TestOperatorDecisions(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	add(t, s, "192.0.2.7", "local")
	add(t, s, "192.0.2.0/24", "dynamic")
	add(t, s, "198.51.100.1", "local")

	approve := confirmed(t, s, "192.0.2.7")
	if _, err := s.DecideConfirmed(ctx, approve.ID, 2, time.Hour, nil); err != nil {
		t.Fatal(err)
	}
	deny, err := s.CreateRequest(ctx, NewRequest{IP: "198.51.100.1", Email: "x@example.org", Reason: ""})
	if err != nil {
		t.Fatal(err)
	}
	waiting, err := s.Requests(ctx, StatusWaiting)
	if err != nil || len(waiting) != 1 || waiting[0].ID != approve.ID {
		t.Fatalf("Requests(waiting) = %+v, %v", waiting, err)
	}
	open, _ := s.Requests(ctx, "open")
	if len(open) != 2 {
		t.Errorf("Requests(open) has %d, want 2", len(open))
	}

	if err := s.ApproveRequest(ctx, approve.ID, "alice"); err != nil {
		t.Fatal(err)
	}
	// The request is for the IP: the covering /24 goes too.
	if _, _, listed := s.Lookup(mustAddr(t, "192.0.2.7")); listed {
		t.Error("still listed after approval")
	}
	got, _ := s.Request(ctx, approve.ID)
	if got.Status != StatusApproved || got.DecidedBy != "alice" || got.Decided == nil || got.SelfService {
		t.Errorf("approved request %+v", got)
	}
	if err := s.ApproveRequest(ctx, approve.ID, "alice"); !errors.Is(err, ErrDecided) {
		t.Errorf("approving twice: %v, want ErrDecided", err)
	}

	if err := s.DenyRequest(ctx, deny.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, _, listed := s.Lookup(mustAddr(t, "198.51.100.1")); !listed {
		t.Error("a denied request removed the listing")
	}
	if err := s.DenyRequest(ctx, deny.ID, "bob"); !errors.Is(err, ErrDecided) {
		t.Errorf("denying twice: %v, want ErrDecided", err)
	}
	if err := s.ApproveRequest(ctx, 999, "bob"); !errors.Is(err, ErrNotFound) {
		t.Errorf("approving an unknown id: %v, want ErrNotFound", err)
	}
	if _, err := s.Requests(ctx, "bogus"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Requests(bogus): %v, want ErrInvalid", err)
	}
	all, _ := s.Requests(ctx, "")
	if len(all) != 2 || all[0].ID > all[1].ID {
		t.Errorf("Requests(\"\") = %+v, want both, oldest first", all)
	}
}

func TestRequestsByEmailSince(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	start := time.Now()
	for _, e := range []string{"a@example.org", "A@Example.ORG", "b@example.org"} {
		if _, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.1", Email: e, Reason: ""}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.RequestsByEmailSince(ctx, "a@EXAMPLE.org", start); err != nil || n != 2 {
		t.Errorf("RequestsByEmailSince = %d, %v; want 2", n, err)
	}
	if n, _ := s.RequestsByEmailSince(ctx, "a@example.org", time.Now().Add(time.Minute)); n != 0 {
		t.Errorf("requests in the future: %d", n)
	}
}

// A request whose link expired unused is decided by the pruner as
// expired, never deleted: its requester can still see what became of it.
func TestUnconfirmedRequestsExpireAndStay(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{TokenTTL: time.Hour})
	stale, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.1", Email: "a@example.org"})
	if err != nil {
		t.Fatal(err)
	}
	waiting, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.2", Email: "a@example.org", ToOperator: true})
	if err != nil {
		t.Fatal(err)
	}
	add(t, s, "192.0.2.3", "local")
	decided := confirmed(t, s, "192.0.2.3")
	if err := s.DenyRequest(ctx, decided.ID, "op"); err != nil {
		t.Fatal(err)
	}
	// Before its link expires the pending request stays pending.
	if err := s.Prune(ctx, stale.TokenExpires.Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Request(ctx, stale.ID); got.Status != StatusPending {
		t.Errorf("before expiry: %s, want pending", got.Status)
	}
	// Long after: expired, kept, decided by the rule; the others untouched.
	now := stale.TokenExpires.Add(400 * 24 * time.Hour)
	if err := s.Prune(ctx, now); err != nil {
		t.Fatal(err)
	}
	got, err := s.Request(ctx, stale.ID)
	if err != nil {
		t.Fatalf("the unconfirmed request is gone: %v", err)
	}
	if got.Status != StatusExpired || got.DecidedBy != "unconfirmed" || got.Decided == nil || !got.Decided.Equal(stale.TokenExpires.Truncate(time.Millisecond)) {
		t.Errorf("unconfirmed request after expiry: %+v", got)
	}
	if _, err := s.ConfirmRequest(ctx, stale.Token, stale.Created); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("the link of an expired request: %v, want ErrTokenInvalid", err)
	}
	for id, want := range map[int64]string{waiting.ID: StatusWaiting, decided.ID: StatusDenied} {
		if got, err := s.Request(ctx, id); err != nil || got.Status != want {
			t.Errorf("request %d: %s, %v; want %s", id, got.Status, err, want)
		}
	}
}

// Without a relay a request goes to the operator at once: waiting, with no
// link, and the pruner never touches it.
func TestRequestToOperator(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{TokenTTL: time.Hour})
	r, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.7", Email: "a@example.org", Reason: "fixed", ToOperator: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != StatusWaiting || r.Token != "" {
		t.Errorf("created %+v, want waiting without a token", r)
	}
	if err := s.Prune(ctx, time.Now().Add(1000*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Request(ctx, r.ID); err != nil || got.Status != StatusWaiting {
		t.Errorf("after pruning: %+v, %v; want still waiting", got, err)
	}
	ws, err := s.Requests(ctx, StatusWaiting)
	if err != nil || len(ws) != 1 || ws[0].ID != r.ID {
		t.Errorf("waiting requests: %+v, %v", ws, err)
	}
}

// A request whose confirmation mail failed goes to the operator.
func TestHandToOperator(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	r, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.7", Email: "a@example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.HandToOperator(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Request(ctx, r.ID); got.Status != StatusWaiting {
		t.Errorf("status %s, want waiting", got.Status)
	}
	if _, err := s.ConfirmRequest(ctx, r.Token, time.Now()); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("the link still works after the hand-over: %v", err)
	}
	if err := s.HandToOperator(ctx, r.ID); !errors.Is(err, ErrDecided) {
		t.Errorf("second hand-over: %v, want ErrDecided", err)
	}
	if err := s.HandToOperator(ctx, 999); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown request: %v, want ErrNotFound", err)
	}
}

// The address is stored as typed; the limit per mailbox ignores case.
func TestRequestEmailKeptAsTyped(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	r, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.7", Email: " John.Smith@Example.ORG "})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Request(ctx, r.ID); got.Email != "John.Smith@Example.ORG" {
		t.Errorf("stored %q, want the address as typed", got.Email)
	}
	if n, _ := s.RequestsByEmailSince(ctx, "john.smith@example.org", time.Now().Add(-time.Hour)); n != 1 {
		t.Errorf("count without case: %d, want 1", n)
	}
}

// Parallel requests for one mailbox never pass its limit together: the
// count and the insert are one transaction.
func TestRequestQuotaUnderRace(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	const limit, attempts = 3, 40
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		made    int
		refused int
	)
	start := make(chan struct{})
	for i := range attempts {
		wg.Go(func() {
			<-start
			// Case variants share the mailbox's limit.
			email := "owner@example.org"
			if i%2 == 1 {
				email = "OWNER@Example.Org"
			}
			_, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.7", Email: email, MaxPerEmail: limit, Per: 24 * time.Hour})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				made++
			case errors.Is(err, ErrQuota):
				refused++
			default:
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	if made != limit || refused != attempts-limit {
		t.Errorf("%d made, %d refused; want %d and %d", made, refused, limit, attempts-limit)
	}
	if n, _ := s.RequestsByEmailSince(ctx, "owner@example.org", time.Now().Add(-time.Hour)); n != limit {
		t.Errorf("%d stored, want %d", n, limit)
	}
	// Another mailbox has its own limit.
	if _, err := s.CreateRequest(ctx, NewRequest{IP: "192.0.2.7", Email: "other@example.org", MaxPerEmail: limit, Per: 24 * time.Hour}); err != nil {
		t.Errorf("another mailbox: %v", err)
	}
}

func TestInvalidateFor(t *testing.T) {
	var got []netip.Addr
	fn := InvalidateFor(func(ip netip.Addr) { got = append(got, ip) })
	fn(netip.MustParsePrefix("192.0.2.7/32"))
	fn(netip.MustParsePrefix("2001:db8::1/128"))
	fn(netip.MustParsePrefix("198.51.100.0/24"))
	want := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::1"), {}}
	if !slices.Equal(got, want) {
		t.Errorf("invalidated %v, want %v", got, want)
	}
}
