package zone

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestOptionsNormalize(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr string // "" for none
		check   func(*testing.T, Options)
	}{
		{"defaults", func(*Options) {}, "", func(t *testing.T, o Options) {
			if o.Name != "bl.example.org." || o.SOA.MName != "ns1.example.org." || o.TTL != 300*time.Second ||
				o.SOA.Refresh != time.Hour || o.SOA.Expire != 7*24*time.Hour || o.UDPSize != 1232 || o.Workers < 1 {
				t.Errorf("normalized: %+v", o)
			}
		}},
		{"rname as a mail address", func(o *Options) { o.SOA.RName = "dns.admin@example.org" }, "", func(t *testing.T, o Options) {
			if o.SOA.RName != `dns\.admin.example.org.` {
				t.Errorf("rname %q", o.SOA.RName)
			}
		}},
		{"no NS", func(o *Options) { o.NS = nil }, "ns: at least one", nil},
		// What the zone publishes has no defaults of its own: [zone] gives it.
		{"no TTL", func(o *Options) { o.TTL = 0 }, "ttl: must be positive", nil},
		{"no SOA timers", func(o *Options) { o.SOA.Refresh, o.SOA.Minimum = 0, -time.Second }, "soa refresh: must be positive&soa minimum: must be positive", nil},
		{"no TXT template", func(o *Options) { o.TXT = " " }, "txt: a template is needed", nil},
		{"NS inside the zone", func(o *Options) { o.NS = []string{"ns.bl.example.org"} }, "inside the zone", nil},
		{"bad zone name", func(o *Options) { o.Name = "bl..example" }, "zone name", nil},
		{"code outside 127/8", func(o *Options) { o.Codes["zombie"] = netip.MustParseAddr("10.0.0.4") }, "codes zombie", nil},
		{"IPv6 code", func(o *Options) { o.Codes["zombie"] = netip.MustParseAddr("2001:db8::2") }, "codes zombie", nil},
		{"code 127.0.0.1", func(o *Options) { o.Codes["zombie"] = netip.MustParseAddr("127.0.0.1") }, "not a listing code", nil},
		{"code in 127.255.255.0/24", func(o *Options) { o.Codes["zombie"] = netip.MustParseAddr("127.255.255.254") }, "refusal", nil},
		{"bad notify", func(o *Options) { o.Notify = []string{"127.0.0.1"} }, "notify", nil},
		{"short TSIG secret", func(o *Options) { o.TSIG = &TSIG{Name: "k.", Secret: []byte("short")} }, "tsig: secret", nil},
		{"unknown TSIG algorithm", func(o *Options) { o.TSIG = &TSIG{Name: "k.", Algorithm: "hmac-md5", Secret: testKey.Secret} }, "tsig: algorithm", nil},
		{"several problems at once", func(o *Options) { o.NS = nil; o.Notify = []string{"x"} }, "ns: at least one&notify", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions()
			o.SOA.MName = ""
			tt.edit(&o)
			_, err := New(o)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("New succeeded, want an error with %q", tt.wantErr)
			}
			for _, w := range strings.Split(tt.wantErr, "&") {
				if w != "" && !strings.Contains(err.Error(), w) {
					t.Errorf("New: %v, want an error with %q", err, w)
				}
			}
			if tt.check != nil {
				if err := o.normalize(); err != nil {
					t.Fatal(err)
				}
				tt.check(t, o)
			}
		})
	}
}

func TestParseTSIGSecret(t *testing.T) {
	want := []byte("0123456789abcdef0123456789abcdef")
	for _, tt := range []struct {
		name, file string
	}{
		{"base64 text", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"},
		{"BIND key clause", "key \"xfr.example.org\" {\n\talgorithm hmac-sha256;\n\tsecret \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\";\n};\n"},
		{"Knot key", "key:\n  - id: xfr.example.org\n    algorithm: hmac-sha256\n    secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"},
	} {
		got, err := ParseTSIGSecret([]byte(tt.file))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %q, %v", tt.name, got, err)
		}
	}
	for _, bad := range []string{"", "not base64!", "secret \"\";"} {
		if _, err := ParseTSIGSecret([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
