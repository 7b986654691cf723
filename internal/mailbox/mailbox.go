// Package mailbox reads an email address that blmilter will send mail to:
// an RFC 5321 Mailbox whose domain is a domain name (LDH labels, or IDNA
// U-labels as RFC 6531 allows), never an address literal such as
// a@[127.0.0.1] or a name a relay could take for an internal host. The
// local part is kept exactly as typed: only its owner's server may fold
// its case.
package mailbox

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Limits of RFC 5321 section 4.5.3.1.
const (
	MaxLocal  = 64
	MaxDomain = 255
	MaxPath   = 254 // the reverse- or forward-path without its angle brackets
)

// Mailbox is a checked address.
type Mailbox struct {
	Local  string // as typed; a quoted local part keeps its quotes
	Domain string // as typed: LDH labels or U-labels
	// ASCIIDomain is Domain in A-labels (xn--...), lower case: what a
	// relay without SMTPUTF8 can carry.
	ASCIIDomain string
}

// String is the address as typed.
func (m Mailbox) String() string { return m.Local + "@" + m.Domain }

// NeedsSMTPUTF8 reports whether the address can only be sent with the
// SMTPUTF8 extension: its local part is not ASCII. A non-ASCII domain
// alone does not need it, since it has an A-label form.
func (m Mailbox) NeedsSMTPUTF8() bool { return !isASCII(m.Local) }

// Envelope is the address for the SMTP envelope and the To header: as
// typed when it needs SMTPUTF8, else with the domain in A-labels.
func (m Mailbox) Envelope() string {
	if m.NeedsSMTPUTF8() {
		return m.String()
	}
	return m.Local + "@" + m.ASCIIDomain
}

// Key is the address as compared for limits per mailbox: case-folded, so
// that A@Example.org and a@example.org share one quota.
func (m Mailbox) Key() string { return strings.ToLower(m.Local) + "@" + m.ASCIIDomain }

// ErrInvalid is wrapped by every error of Parse.
var ErrInvalid = errors.New("not a mailbox blmilter sends to")

// Parse checks s, an address without display name or angle brackets. The
// error says what is wrong in words a requester understands.
func Parse(s string) (Mailbox, error) {
	fail := func(format string, args ...any) (Mailbox, error) {
		return Mailbox{}, fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if s == "" {
		return fail("the address is empty")
	}
	if !utf8.ValidString(s) {
		return fail("the address is not valid UTF-8")
	}
	if len(s) > MaxPath {
		return fail("the address is longer than %d characters", MaxPath)
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return fail("the address has no @")
	}
	local, domain := s[:at], s[at+1:]
	if err := checkLocal(local); err != "" {
		return fail("%s", err)
	}
	ascii, err := checkDomain(domain)
	if err != "" {
		return fail("%s", err)
	}
	return Mailbox{Local: local, Domain: domain, ASCIIDomain: ascii}, nil
}

// checkLocal accepts RFC 5321's Dot-string and Quoted-string, with UTF-8
// where RFC 6531 allows it.
func checkLocal(l string) string {
	switch {
	case l == "":
		return "the part before the @ is empty"
	case len(l) > MaxLocal:
		return fmt.Sprintf("the part before the @ is longer than %d characters", MaxLocal)
	}
	if l[0] == '"' {
		if len(l) < 2 || l[len(l)-1] != '"' {
			return "the quoted part before the @ is not closed"
		}
		q := l[1 : len(l)-1]
		for i := 0; i < len(q); i++ {
			c := q[i]
			switch {
			case c == '\\':
				if i+1 >= len(q) || q[i+1] < 32 || q[i+1] > 126 {
					return "a backslash in the quoted part before the @ escapes nothing printable"
				}
				i++
			case c == '"':
				return "a quote inside the quoted part before the @ is not escaped"
			case c < 32 || c == 127:
				return "the part before the @ contains a control character"
			}
		}
		return ""
	}
	for _, atom := range strings.Split(l, ".") {
		if atom == "" {
			return "the part before the @ has an empty piece between dots, or starts or ends with a dot"
		}
		for _, r := range atom {
			if !atext(r) {
				return fmt.Sprintf("the part before the @ contains %q, which needs quoting", r)
			}
		}
	}
	return ""
}

func atext(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	case r > 127:
		// RFC 6531 UTF8-non-ascii; control and format characters are no
		// part of a name anyone types.
		return r >= 0xa0 && r != 0xfeff && !(r >= 0x2000 && r <= 0x200f) && !(r >= 0x2028 && r <= 0x202f)
	}
	return strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
}

// checkDomain returns the domain in A-labels, or what is wrong with it.
func checkDomain(d string) (string, string) {
	switch {
	case d == "":
		return "", "the part after the @ is empty"
	case strings.HasPrefix(d, "["):
		return "", "the part after the @ is an address literal; give a domain name"
	case len(d) > MaxDomain:
		return "", fmt.Sprintf("the domain is longer than %d characters", MaxDomain)
	case strings.HasSuffix(d, "."), strings.HasPrefix(d, "."), strings.Contains(d, ".."):
		return "", "the domain has an empty label (a dot at its start or end, or two dots)"
	}
	ascii := d
	if !isASCII(d) {
		a, err := idna.Lookup.ToASCII(d)
		if err != nil {
			return "", "the domain is not a valid internationalised domain name"
		}
		ascii = a
	}
	ascii = strings.ToLower(ascii)
	if len(ascii) > MaxDomain {
		return "", fmt.Sprintf("the domain is longer than %d characters", MaxDomain)
	}
	labels := strings.Split(ascii, ".")
	if len(labels) < 2 {
		return "", "the domain has a single label; give a full domain name such as example.org"
	}
	for _, lb := range labels {
		if !ldh(lb) {
			return "", fmt.Sprintf("the domain label %q is not letters, digits and inner hyphens (at most 63)", lb)
		}
	}
	if allDigits(labels[len(labels)-1]) {
		return "", "the domain ends in a number: it looks like an IP address; give a domain name"
	}
	return ascii, ""
}

// ldh: a label of letters, digits and hyphens, not starting or ending
// with a hyphen (RFC 5321 sub-domain, RFC 1123).
func ldh(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
