package iplist

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	const text = "\uFEFF# local block list\n" +
		"\n" +
		"192.0.2.7\n" +
		"198.51.100.0/24 zombie\n" +
		"203.0.113.0/25 open-proxy # seen relaying 2026-11-02\n" +
		"   2001:db8::/32   dynamic   #  residential pool  \n" +
		"::ffff:192.0.2.128/121 spam-source\n" +
		"2001:db8:dead::beef #no space before the comment\n" +
		"10.0.0.0/8\r\n" +
		"  # indented comment line\n" +
		"100.64.0.1#tight\n"
	l, err := Parse(strings.NewReader(text), "local.txt")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := []Entry{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8")},
		{Prefix: netip.MustParsePrefix("100.64.0.1/32"), Comment: "tight"},
		{Prefix: netip.MustParsePrefix("192.0.2.7/32")},
		{Prefix: netip.MustParsePrefix("192.0.2.128/25"), Category: "spam-source"},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Category: "zombie"},
		{Prefix: netip.MustParsePrefix("203.0.113.0/25"), Category: "open-proxy", Comment: "seen relaying 2026-11-02"},
		{Prefix: netip.MustParsePrefix("2001:db8::/32"), Category: "dynamic", Comment: "residential pool"},
		{Prefix: netip.MustParsePrefix("2001:db8:dead::beef/128"), Comment: "no space before the comment"},
	}
	got := l.Entries()
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestParseBadLines(t *testing.T) {
	tests := []struct {
		line    string
		wantMsg string // part of the message
	}{
		{"10.0.0.300", `bad address "10.0.0.300"`},
		{"example.org", `bad address "example.org"`},
		{"10.1.2.3/8", "write 10.0.0.0/8"},
		{"2001:db8::1/32", "write 2001:db8::/32"},
		{"192.0.2.0/33", `bad network "192.0.2.0/33"`},
		{"192.0.2.0/", `bad network`},
		{"fe80::1%eth0", "zone"},
		{"192.0.2.1 zombie extra words", `unexpected "extra words"`},
		{"192.0.2.1 spam;source", `bad category "spam;source"`},
		{"192.0.2.1 -dash", `bad category "-dash"`},
		{"192.0.2.1 " + strings.Repeat("x", 65), "bad category"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			// The bad line is line 3, between good ones.
			text := "# head\n192.0.2.200\n" + tt.line + "\n198.51.100.1\n"
			l, err := Parse(strings.NewReader(text), "/etc/blmilter/local.txt")
			if err == nil {
				t.Fatalf("no error; list has %d entries", l.Len())
			}
			if l != nil {
				t.Error("a list came back with the error")
			}
			var le *LineError
			if !errors.As(err, &le) || le.Line != 3 || le.Name != "/etc/blmilter/local.txt" {
				t.Fatalf("error %q does not name line 3 of the file", err)
			}
			if !strings.HasPrefix(err.Error(), "/etc/blmilter/local.txt:3: ") || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q, want it to start with the file:line and contain %q", err, tt.wantMsg)
			}
		})
	}
}

func TestParseReportsEveryBadLine(t *testing.T) {
	text := "192.0.2.1\nbad-one\n192.0.2.2\n\n10.1.1.1/8\n# fine\n2001:db8::zz\n"
	_, err := Parse(strings.NewReader(text), "list.txt")
	var perr *ParseError
	if !errors.As(err, &perr) {
		t.Fatalf("error %v is not a *ParseError", err)
	}
	var lines []int
	for _, le := range perr.Lines {
		lines = append(lines, le.Line)
	}
	if fmt.Sprint(lines) != "[2 5 7]" {
		t.Errorf("bad lines reported: %v, want [2 5 7]", lines)
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 3 {
		t.Errorf("message has %d lines, want one per bad line:\n%s", n, err)
	}
}

func TestParseBoundsReport(t *testing.T) {
	var b strings.Builder
	for range 200 {
		b.WriteString("not-an-ip\n")
	}
	_, err := Parse(strings.NewReader(b.String()), "x")
	var perr *ParseError
	if !errors.As(err, &perr) || len(perr.Lines) != maxReported || perr.More != 200-maxReported {
		t.Fatalf("got %d lines + %d more, want %d + %d", len(perr.Lines), perr.More, maxReported, 200-maxReported)
	}
	if !strings.HasSuffix(err.Error(), fmt.Sprintf("... and %d more bad lines", 200-maxReported)) {
		t.Errorf("message does not say how many more: %q", err.Error()[len(err.Error())-60:])
	}
}

func TestParseLongLine(t *testing.T) {
	text := "192.0.2.1\n192.0.2.2 # " + strings.Repeat("x", maxLine) + "\n"
	_, err := Parse(strings.NewReader(text), "x")
	var le *LineError
	if !errors.As(err, &le) || le.Line != 2 {
		t.Fatalf("error %v, want line 2 reported as too long", err)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, text := range []string{"", "\n\n", "# only comments\n#\n"} {
		l, err := Parse(strings.NewReader(text), "x")
		if err != nil || l.Len() != 0 {
			t.Errorf("Parse(%q) = Len %d, %v; want an empty list", text, l.Len(), err)
		}
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("input/output error") }

func TestParseReadError(t *testing.T) {
	_, err := Parse(failingReader{}, "local.txt")
	if err == nil || !strings.Contains(err.Error(), "local.txt") || !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("error %v, want the read error with the name", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("192.0.2.0/24 zombie # x\n2001:db8::1\n")
	f.Add("::ffff:1.2.3.4/128\n0.0.0.0/0\n::/0 a\n")
	f.Fuzz(func(t *testing.T, text string) {
		l, err := Parse(strings.NewReader(text), "fuzz")
		if err != nil {
			return
		}
		// Every entry must be found by its own first address.
		for _, e := range l.Entries() {
			got, ok := l.Lookup(e.Prefix.Addr())
			if !ok || got.Prefix.Bits() < e.Prefix.Bits() {
				t.Fatalf("entry %v not found by its own address (got %v %v)", e.Prefix, got.Prefix, ok)
			}
		}
	})
}
