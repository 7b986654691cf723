package signedref

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func testKey(t testing.TB, seed byte, previous ...[]byte) *Key {
	t.Helper()
	k, err := NewKey(bytes.Repeat([]byte{seed}, 32), previous...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var when = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

func TestRoundTrip(t *testing.T) {
	k := testKey(t, 1)
	for _, tc := range []struct {
		name string
		d    Decision
	}{
		{"IPv4, one DNS hit", Decision{Time: when, IP: netip.MustParseAddr("192.0.2.7"), Action: "reject", Score: 3, Threshold: 3,
			Hits: []Hit{{List: "Spamhaus ZEN", Category: "zombie", Code: netip.MustParseAddr("127.0.0.4"), Weight: 3}}}},
		{"IPv6, node, mixed hits", Decision{Time: when, IP: netip.MustParseAddr("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"), Action: "tempfail", Score: 4.25, Threshold: 2.5, Node: "mx2.example.org",
			Hits: []Hit{
				{List: "Example BL", Category: "spam-source", Code: netip.MustParseAddr("127.1.2.3"), Weight: 2.75},
				{List: "local file", Category: "my-own-category", Weight: 1.5},
				{List: "Trial list", Category: "dynamic", Code: netip.MustParseAddr("127.0.0.10"), DryRun: true},
				{List: "Broken list", Category: "listed", Code: netip.MustParseAddr("127.0.0.2"), Degraded: true},
				{List: "New list", Category: "zombie", Code: netip.MustParseAddr("127.0.0.4"), Unproven: true},
				{List: "Allow list", Category: "allow", Weight: -5},
			}}},
		{"no hits, tag", Decision{Time: when, IP: netip.MustParseAddr("198.51.100.1"), Action: "tag", Score: 0, Threshold: 1}},
		{"non-ASCII names", Decision{Time: when, IP: netip.MustParseAddr("203.0.113.9"), Action: "log", Score: 7, Threshold: 3, Node: "mx-ünïcode",
			Hits: []Hit{{List: "Liste für Spam", Category: "local", Weight: 7}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref, err := k.Sign(tc.d, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if !Looks(ref) {
				t.Errorf("Looks(%q) = false", ref)
			}
			got, err := k.Open(ref)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			want := tc.d
			want.Hits = orderHits(tc.d.Hits)
			if len(want.Hits) == 0 {
				want.Hits = nil
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Open gave\n%+v\nwant\n%+v", got, want)
			}
			t.Logf("%d characters: %s", len(ref), ref)
		})
	}
}

// Counted hits come first, heaviest first; the others keep their order.
func TestHitOrder(t *testing.T) {
	k := testKey(t, 1)
	d := Decision{Time: when, IP: netip.MustParseAddr("192.0.2.1"), Action: "reject", Score: 5, Threshold: 3, Hits: []Hit{
		{List: "dry", Category: "local"},
		{List: "light", Category: "local", Weight: 1},
		{List: "heavy", Category: "local", Weight: 4},
		{List: "allow", Category: "allow", Weight: -1},
	}}
	ref, err := k.Sign(d, 1000)
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, h := range got.Hits {
		names = append(names, h.List)
	}
	if want := []string{"heavy", "light", "dry", "allow"}; !reflect.DeepEqual(names, want) {
		t.Errorf("hits in order %v, want %v", names, want)
	}
}

// Every single-bit change to a reference is refused, never read as another
// decision.
func TestTamperedRefused(t *testing.T) {
	k := testKey(t, 1)
	d := Decision{Time: when, IP: netip.MustParseAddr("192.0.2.7"), Action: "reject", Score: 3, Threshold: 3, Node: "mx1",
		Hits: []Hit{{List: "Example BL", Category: "zombie", Code: netip.MustParseAddr("127.0.0.4"), Weight: 3}}}
	ref, err := k.Sign(d, 1000)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(ref)
	for i := range raw {
		for bit := range 8 {
			b := bytes.Clone(raw)
			b[i] ^= 1 << bit
			if _, err := k.Open(base64.RawURLEncoding.EncodeToString(b)); err == nil {
				t.Fatalf("byte %d bit %d flipped: accepted", i, bit)
			} else if !errors.Is(err, ErrSignature) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("byte %d bit %d flipped: %v", i, bit, err)
			}
		}
	}
	// Cut short, or one character more.
	for _, bad := range []string{ref[:len(ref)-1], ref[:MinLen], ref + "A", strings.ToUpper(ref)} {
		if _, err := k.Open(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestForeignKeyRefused(t *testing.T) {
	d := Decision{Time: when, IP: netip.MustParseAddr("192.0.2.7"), Action: "reject", Score: 3, Threshold: 3}
	ref, err := testKey(t, 2).Sign(d, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testKey(t, 1).Open(ref); !errors.Is(err, ErrSignature) {
		t.Fatalf("a reference signed with another key: %v, want ErrSignature", err)
	}
	// A key change: the new key signs, the old one is still accepted.
	rotated := testKey(t, 1, bytes.Repeat([]byte{2}, 32))
	if _, err := rotated.Open(ref); err != nil {
		t.Fatalf("a reference signed with the previous key: %v", err)
	}
	fresh, err := rotated.Sign(d, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testKey(t, 2).Open(fresh); !errors.Is(err, ErrSignature) {
		t.Fatalf("the rotated key signed with the previous key: %v", err)
	}
}

// Sign fits what it can in the space given and says it left things out;
// the heaviest hit stays longest.
func TestSignTruncates(t *testing.T) {
	k := testKey(t, 1)
	long := strings.Repeat("L", MaxName)
	d := Decision{Time: when, IP: netip.MustParseAddr("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"), Action: "reject", Score: 9, Threshold: 3, Node: strings.Repeat("n", 40),
		Hits: []Hit{
			{List: long + "-a", Category: "zombie", Code: netip.MustParseAddr("127.0.0.4"), Weight: 2},
			{List: long + "-b", Category: strings.Repeat("c", MaxName), Code: netip.MustParseAddr("127.0.0.2"), Weight: 4},
			{List: long + "-c", Category: "spam-source", Code: netip.MustParseAddr("127.0.0.3"), Weight: 3},
		}}
	full, err := k.Sign(d, 10000)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := k.Open(full); !got.Truncated || len(got.Node) != MaxNode || len(got.Hits[0].List) != MaxName {
		t.Errorf("names over the limits: truncated=%v node %d bytes, list %d bytes", got.Truncated, len(got.Node), len(got.Hits[0].List))
	}
	prevHits := 4
	for maxLen := len(full); ; maxLen-- {
		ref, err := k.Sign(d, maxLen)
		if errors.Is(err, ErrTooLong) {
			if prevHits != 0 {
				t.Fatalf("maxLen %d: too long while the last fit kept %d hits", maxLen, prevHits)
			}
			break
		}
		if err != nil {
			t.Fatalf("maxLen %d: %v", maxLen, err)
		}
		if len(ref) > maxLen {
			t.Fatalf("maxLen %d: %d characters", maxLen, len(ref))
		}
		got, err := k.Open(ref)
		if err != nil {
			t.Fatalf("maxLen %d: %v", maxLen, err)
		}
		if !got.Truncated {
			t.Fatalf("maxLen %d: not marked truncated", maxLen)
		}
		if len(got.Hits) > prevHits {
			t.Fatalf("maxLen %d: %d hits, more than with more room", maxLen, len(got.Hits))
		}
		prevHits = len(got.Hits)
		if len(got.Hits) > 0 && (got.Hits[0].Weight != 4 || !strings.HasPrefix(long, got.Hits[0].List)) {
			t.Fatalf("maxLen %d: first hit %+v, want the heaviest", maxLen, got.Hits[0])
		}
		if got.IP != d.IP || got.Action != "reject" || got.Score != 9 {
			t.Fatalf("maxLen %d: the decision itself changed: %+v", maxLen, got)
		}
	}
	if _, err := k.Sign(d, MinLen-1); !errors.Is(err, ErrTooLong) {
		t.Errorf("below the minimum: %v, want ErrTooLong", err)
	}
}

func TestSignRejects(t *testing.T) {
	k := testKey(t, 1)
	if _, err := k.Sign(Decision{IP: netip.MustParseAddr("192.0.2.1"), Action: "maybe"}, 500); err == nil {
		t.Error("unknown action signed")
	}
	if _, err := k.Sign(Decision{Action: "reject"}, 500); err == nil {
		t.Error("decision without an address signed")
	}
	// A mapped address is the IPv4 address.
	ref, err := k.Sign(Decision{IP: netip.MustParseAddr("::ffff:192.0.2.1"), Action: "reject", Time: when}, 500)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := k.Open(ref); d.IP != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("mapped address came back as %v", d.IP)
	}
}

func TestNewKey(t *testing.T) {
	if _, err := NewKey(make([]byte, 15)); err == nil {
		t.Error("15-byte key taken")
	}
	if _, err := NewKey(make([]byte, 32), make([]byte, 8)); err == nil {
		t.Error("8-byte previous key taken")
	}
}

func TestParseKey(t *testing.T) {
	raw := bytes.Repeat([]byte{0xfb, 0xff, 0x3e}, 11)[:32]
	std := base64.StdEncoding.EncodeToString(raw)
	for _, tc := range []struct {
		name, file string
		err        string
	}{
		{"as head | base64 writes it", std + "\n", ""},
		{"without padding", strings.TrimRight(std, "=") + "\n", ""},
		{"URL alphabet", base64.RawURLEncoding.EncodeToString(raw), ""},
		{"comments and blank lines", "# the fleet's key\n\n  " + std + "  \n\n", ""},
		{"CRLF", std + "\r\n", ""},
		{"empty", "\n\n", "no key"},
		{"two keys", std + "\n" + std + "\n", "more than one line"},
		{"not base64", "this is not a key at all!", "not base64"},
		{"too short", base64.StdEncoding.EncodeToString(raw[:8]), "8 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKey([]byte(tc.file))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, raw) {
				t.Fatalf("key %x, want %x", got, raw)
			}
		})
	}
}

func TestLooks(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"ABCDEFGHJK", false}, // a store's short reference
		{strings.Repeat("A", MinLen), true},
		{strings.Repeat("A", MinLen-1), false},
		{strings.Repeat("A", MinLen) + "=", false},
		{strings.Repeat("A", MinLen) + "<", false},
		{strings.Repeat("A", 3000), false},
	} {
		if got := Looks(tc.s); got != tc.want {
			t.Errorf("Looks(%.20q…) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

// Open never panics, and whatever it accepts signs back to a reference
// that opens to the same decision.
func FuzzOpen(f *testing.F) {
	k := testKey(f, 1)
	for _, d := range []Decision{
		{Time: when, IP: netip.MustParseAddr("192.0.2.7"), Action: "reject", Score: 3, Threshold: 3,
			Hits: []Hit{{List: "Example BL", Category: "zombie", Code: netip.MustParseAddr("127.0.0.4"), Weight: 3}}},
		{Time: when, IP: netip.MustParseAddr("2001:db8::1"), Action: "tag", Node: "mx", Hits: []Hit{{List: "x", Category: "odd-one"}}},
	} {
		ref, err := k.Sign(d, 1000)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(ref)
	}
	f.Add("")
	f.Add(strings.Repeat("A", MinLen))
	f.Fuzz(func(t *testing.T, ref string) {
		d, err := k.Open(ref)
		if err != nil {
			return
		}
		again, err := k.Sign(d, 4096)
		if err != nil {
			t.Fatalf("an opened decision does not sign again: %v", err)
		}
		d2, err := k.Open(again)
		if err != nil || !reflect.DeepEqual(d, d2) {
			t.Fatalf("re-signed decision differs: %v\n%+v\n%+v", err, d, d2)
		}
	})
}

// The body alone, under a valid MAC: decode refuses what Sign never
// writes.
func FuzzDecode(f *testing.F) {
	k := testKey(f, 1)
	ref, _ := k.Sign(Decision{Time: when, IP: netip.MustParseAddr("192.0.2.7"), Action: "reject",
		Hits: []Hit{{List: "Example BL", Category: "custom", Code: netip.MustParseAddr("127.0.0.4"), Weight: 3}}}, 1000)
	raw, _ := base64.RawURLEncoding.DecodeString(ref)
	f.Add(raw[:len(raw)-macSize])
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) == 0 {
			return
		}
		body[0] = version
		signed := append(bytes.Clone(body), sum(k.keys[0], body)...)
		d, err := k.Open(base64.RawURLEncoding.EncodeToString(signed))
		if err != nil {
			return
		}
		for _, h := range d.Hits {
			if !printable(h.List) || !printable(h.Category) {
				t.Fatalf("unprintable text accepted: %+v", h)
			}
		}
		if !printable(d.Node) || !d.IP.IsValid() {
			t.Fatalf("bad decision accepted: %+v", d)
		}
	})
}
