package iplist

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// maxReported bounds the line errors kept: a wrong file (a binary, a
// log) should give a readable error, not one line per byte of it.
const maxReported = 50

// maxLine is the longest line accepted.
const maxLine = 64 << 10

// LineError is one bad line.
type LineError struct {
	Name string // file name as given to Parse
	Line int    // 1-based
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %v", e.Name, e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// ParseError lists every bad line of a list, one per line of its text.
type ParseError struct {
	Lines []*LineError // the first maxReported bad lines
	More  int          // bad lines beyond those
}

func (e *ParseError) Error() string {
	var b strings.Builder
	for i, le := range e.Lines {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(le.Error())
	}
	if e.More > 0 {
		fmt.Fprintf(&b, "\n... and %d more bad lines", e.More)
	}
	return b.String()
}

// Unwrap gives errors.As and errors.Is each line's error.
func (e *ParseError) Unwrap() []error {
	errs := make([]error, len(e.Lines))
	for i, le := range e.Lines {
		errs[i] = le
	}
	return errs
}

// Parse reads a list: one entry a line,
//
//	IP-or-CIDR [category] [# comment]
//
// with blank lines and lines starting with # ignored. IPv4-mapped IPv6
// addresses and prefixes are stored as IPv4. A CIDR with bits set beyond
// its prefix length (10.1.2.3/8) is an error, not silently widened: it is
// most often a typo for a narrower network, and on a block list widening
// would reject mail from addresses nobody meant to list. Every bad line is
// reported, each as name:line, in one *ParseError; then no list is
// returned.
func Parse(r io.Reader, name string) (*List, error) {
	var (
		entries []Entry
		perr    ParseError
		// A list uses a handful of categories: one string each rather
		// than one per line.
		categories = make(map[string]string)
	)
	bad := func(line int, err error) {
		if len(perr.Lines) < maxReported {
			perr.Lines = append(perr.Lines, &LineError{Name: name, Line: line, Err: err})
		} else {
			perr.More++
		}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	n := 0
	for sc.Scan() {
		n++
		text := sc.Text()
		if n == 1 {
			text = strings.TrimPrefix(text, "\uFEFF") // a byte order mark left by some editors
		}
		e, ok, err := parseLine(text)
		if err != nil {
			bad(n, err)
			continue
		}
		if ok {
			if c, seen := categories[e.Category]; seen {
				e.Category = c
			} else {
				categories[e.Category] = e.Category
			}
			entries = append(entries, e)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			bad(n+1, fmt.Errorf("line longer than %d bytes", maxLine))
		} else {
			return nil, fmt.Errorf("iplist: reading %s: %w", name, err)
		}
	}
	if len(perr.Lines) > 0 {
		return nil, &perr
	}
	return Build(entries), nil
}

// parseLine returns ok false for blank and comment lines.
func parseLine(text string) (e Entry, ok bool, err error) {
	if i := strings.IndexByte(text, '#'); i >= 0 {
		e.Comment = strings.TrimSpace(text[i+1:])
		text = text[:i]
	}
	fields := strings.Fields(text)
	switch len(fields) {
	case 0:
		return Entry{}, false, nil
	case 1, 2:
	default:
		return Entry{}, false, fmt.Errorf("unexpected %q after the category (a comment starts with #)", strings.Join(fields[2:], " "))
	}
	if e.Prefix, err = parsePrefix(fields[0]); err != nil {
		return Entry{}, false, err
	}
	if len(fields) == 2 {
		if !validCategory(fields[1]) {
			return Entry{}, false, fmt.Errorf("bad category %q: use letters, digits, '-', '_' and '.'", fields[1])
		}
		e.Category = fields[1]
	}
	return e, true, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "%") {
		return netip.Prefix{}, fmt.Errorf("%q: an IPv6 zone has no place in a list", s)
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("bad network %q: want an address or CIDR such as 192.0.2.0/24", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad address %q: want an address or CIDR such as 192.0.2.0/24", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%s has bits set beyond its /%d: write %s for the whole network, or the address alone", s, p.Bits(), m)
	}
	p, _ = Canonical(p)
	return p, nil
}

func validCategory(s string) bool {
	if len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-' || c == '_' || c == '.':
			if i == 0 {
				return false
			}
		default:
			return false
		}
	}
	return true
}
