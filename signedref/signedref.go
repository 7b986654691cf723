// Package signedref makes and reads the self-contained references of
// decisions that the blmilter nodes of a fleet put in their replies. A
// reference carries what the filter saw when it refused a client (the time,
// the client's address, the lists that hit with their answer codes and
// categories, the score and the action) and a signature made with a key the
// fleet shares, so the lookup service of any node that holds the key shows
// the decision of any other without a shared database, and refuses a
// reference that was altered or made with another key.
//
// # Format
//
// A reference is binary, written as unpadded base64url (RFC 4648 section
// 5), which needs no escaping in a URL, an SMTP reply or Sendmail's %
// handling:
//
//	version 1 | flags 1 | unix time 4 | address 4 or 16 | score, threshold (signed varints, hundredths) |
//	node (length 1, bytes) | hit count 1 | hits | MAC 16
//
// flags hold the address family, the action and whether Sign left anything
// out. Each hit is a flags byte (dry run, degraded, unproven, has a code), the last
// three octets of its 127.0.0.0/8 answer code when it has one, its weight
// (a signed varint, hundredths), its list's display name (length, bytes)
// and its category: one byte for the usual ones, else length and bytes.
// List indexes would be shorter, but nodes may order or number their lists
// differently; names mean the same everywhere.
//
// The MAC is HMAC-SHA256 over a fixed label and the bytes before it, cut to
// 128 bits. It lets only holders of the key make references, which is what
// a lookup page needs: the nodes of one fleet trust each other. (Ed25519
// would keep one node from forging another's references, but its 64-byte
// signature alone takes 86 characters of the 512-octet SMTP reply line.)
package signedref

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Errors of Open. A reference that fails either way must not be shown as a
// decision.
var (
	// ErrMalformed: not a signed reference of this format.
	ErrMalformed = errors.New("signedref: not a signed decision reference")
	// ErrSignature: well formed, but not signed by any key held; altered, or
	// made by a node with another key.
	ErrSignature = errors.New("signedref: the signature does not match the fleet's key")
	// ErrTooLong: Sign cannot fit even the decision without its hits in
	// the space given.
	ErrTooLong = errors.New("signedref: the reference does not fit")
)

const (
	version = 1
	macSize = 16
	// MinKeySize is the shortest key NewKey takes, in bytes.
	MinKeySize = 16
	// MaxNode and MaxName bound a node's name and a list's name or
	// category in a reference, in bytes; longer ones are cut.
	MaxNode = 32
	MaxName = 64
	maxHits = 16
	// minSize is the smallest reference: IPv4, no node, no hits.
	minSize = 2 + 4 + 4 + 1 + 1 + 1 + 1 + macSize
)

// MinLen is the length of the shortest signed reference, in characters.
// The short references of a single node's store are far shorter.
var MinLen = base64.RawURLEncoding.EncodedLen(minSize)

// macLabel separates these MACs from anything else the key might sign.
const macLabel = "blmilter decision reference\x00"

// The actions, by their number in the flags byte.
var actions = []string{"accept", "reject", "tempfail", "tag", "log"}

// The categories written as one byte (0x80 | index). The order is part of
// the format: only ever append.
var knownCategories = []string{"listed", "local", "zombie", "open-proxy", "spam-source", "dynamic", "allow", "test"}

// Decision is what a reference carries.
type Decision struct {
	Time      time.Time // to the second
	IP        netip.Addr
	Action    string  // accept, reject, tempfail, tag or log
	Score     float64 // to two decimals
	Threshold float64
	Node      string // the deciding node's name; "" when not given
	Hits      []Hit
	// Truncated is set when Sign left something out to fit: the node's
	// name, the end of long list names, or the least weighty hits.
	Truncated bool
}

// Hit is one list that listed the client.
type Hit struct {
	List     string
	Category string
	Code     netip.Addr // the DNS answer in 127.0.0.0/8; invalid for file and store lists
	Weight   float64    // what the hit added to the score; 0 when it did not count
	DryRun   bool
	Degraded bool // the list failed its health checks
	Unproven bool // the list had not passed a health check yet
}

// Key signs references with its first key and accepts references signed
// with any of its keys, so a fleet can change its key without refusing
// the references of replies already sent.
type Key struct {
	keys [][]byte
}

// NewKey makes a key that signs with signing and also accepts references
// signed with previous ones. Each key is at least MinKeySize bytes.
func NewKey(signing []byte, previous ...[]byte) (*Key, error) {
	k := &Key{}
	for i, b := range append([][]byte{signing}, previous...) {
		if len(b) < MinKeySize {
			if i == 0 {
				return nil, fmt.Errorf("signedref: the key is %d bytes; it needs at least %d", len(b), MinKeySize)
			}
			return nil, fmt.Errorf("signedref: previous key %d is %d bytes; it needs at least %d", i, len(b), MinKeySize)
		}
		k.keys = append(k.keys, slices.Clone(b))
	}
	return k, nil
}

// ParseKey reads a key file: the key as base64 text on one line, as
// `head -c 32 /dev/urandom | base64 > fleet.key` writes it (standard or URL
// alphabet, padded or not). Blank lines and lines starting with # are
// skipped.
func ParseKey(file []byte) ([]byte, error) {
	var text string
	for _, line := range strings.Split(string(file), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if text != "" {
			return nil, errors.New("more than one line of key text; the file holds one base64 key")
		}
		text = line
	}
	if text == "" {
		return nil, errors.New("no key in the file; write one with: head -c 32 /dev/urandom | base64")
	}
	text = strings.TrimRight(text, "=")
	enc := base64.RawStdEncoding
	if strings.ContainsAny(text, "-_") {
		enc = base64.RawURLEncoding
	}
	key, err := enc.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("the key is not base64 text: %w", err)
	}
	if len(key) < MinKeySize {
		return nil, fmt.Errorf("the key is %d bytes; use at least %d (head -c 32 /dev/urandom | base64)", len(key), MinKeySize)
	}
	return key, nil
}

// Looks reports whether s could be a signed reference: long enough and
// all base64url. It checks no signature; web pages use it to tell signed
// references from a store's short ones.
func Looks(s string) bool {
	if len(s) < MinLen || len(s) > 2048 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Sign returns the reference of d in at most maxLen characters. When the
// whole decision does not fit, it leaves out, in turn, the node's name, the
// end of long list names and categories, and the hits of least weight
// (counted hits come first, heaviest first), and sets Truncated in what it
// signs. ErrTooLong means not even the decision without hits fits.
func (k *Key) Sign(d Decision, maxLen int) (string, error) {
	maxBytes := maxLen * 3 / 4
	if maxBytes < minSize {
		return "", ErrTooLong
	}
	a := actionIndex(d.Action)
	if a < 0 {
		return "", fmt.Errorf("signedref: unknown action %q", d.Action)
	}
	if !d.IP.IsValid() {
		return "", errors.New("signedref: no address")
	}
	d.IP = d.IP.Unmap()
	d.Node = cut(d.Node, MaxNode)
	hits := orderHits(d.Hits)
	if len(hits) > maxHits {
		hits, d.Truncated = hits[:maxHits], true
	}
	for i := range hits {
		if n := cut(hits[i].List, MaxName); n != hits[i].List {
			hits[i].List, d.Truncated = n, true
		}
		if c := cut(hits[i].Category, MaxName); c != hits[i].Category {
			hits[i].Category, d.Truncated = c, true
		}
	}
	d.Hits = hits
	size := func() int { return encodedSize(&d) }
	if size() > maxBytes && d.Node != "" {
		d.Node, d.Truncated = "", true
	}
	for _, limit := range []int{24, 12, 6} {
		if size() <= maxBytes {
			break
		}
		for i := range d.Hits {
			h := &d.Hits[i]
			if n := cut(h.List, limit); n != h.List {
				h.List, d.Truncated = n, true
			}
			if catIndex(h.Category) < 0 {
				if c := cut(h.Category, limit); c != h.Category {
					h.Category, d.Truncated = c, true
				}
			}
		}
	}
	for size() > maxBytes && len(d.Hits) > 0 {
		d.Hits, d.Truncated = d.Hits[:len(d.Hits)-1], true
	}
	if size() > maxBytes {
		return "", ErrTooLong
	}
	b := k.encode(&d, a)
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Open checks a reference's signature against every key held and returns
// the decision it carries.
func (k *Key) Open(ref string) (Decision, error) {
	if !Looks(ref) {
		return Decision{}, ErrMalformed
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(ref)
	if err != nil || len(b) < minSize || b[0] != version {
		return Decision{}, ErrMalformed
	}
	body, mac := b[:len(b)-macSize], b[len(b)-macSize:]
	ok := false
	for _, key := range k.keys {
		if hmac.Equal(mac, sum(key, body)) {
			ok = true
			break
		}
	}
	if !ok {
		return Decision{}, ErrSignature
	}
	d, err := decode(body)
	if err != nil {
		// Signed by a holder of the key, yet unreadable: a bug or a newer
		// format, never a decision to show.
		return Decision{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return d, nil
}

func sum(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(macLabel))
	m.Write(body)
	return m.Sum(nil)[:macSize]
}

// orderHits copies hits with the counted ones first, heaviest first, so
// that truncation drops what mattered least.
func orderHits(hits []Hit) []Hit {
	out := slices.Clone(hits)
	slices.SortStableFunc(out, func(a, b Hit) int {
		ca, cb := a.Weight > 0, b.Weight > 0
		switch {
		case ca && !cb:
			return -1
		case cb && !ca:
			return 1
		case ca && cb && a.Weight != b.Weight:
			if a.Weight > b.Weight {
				return -1
			}
			return 1
		}
		return 0
	})
	return out
}

// cut shortens s to at most n bytes at a rune boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func actionIndex(a string) int { return slices.Index(actions, a) }

func catIndex(c string) int { return slices.Index(knownCategories, c) }

// hundredths is a score or weight as the reference keeps it.
func hundredths(f float64) int64 {
	if math.IsNaN(f) {
		return 0
	}
	return int64(math.Round(math.Max(math.Min(f, 1e12), -1e12) * 100))
}

const (
	flagIPv6      = 1 << 0
	flagTruncated = 1 << 1
	actionShift   = 4

	hitDryRun   = 1 << 0
	hitDegraded = 1 << 1
	hitCode     = 1 << 2
	hitUnproven = 1 << 3
)

// hasCode reports whether a hit's code is written: only 127.0.0.0/8 codes
// are (the only ones a DNS list's listing can have).
func hasCode(c netip.Addr) bool { return c.Is4() && c.As4()[0] == 127 }

func encodedSize(d *Decision) int {
	n := 2 + 4 + len(d.IP.AsSlice()) + varintLen(hundredths(d.Score)) + varintLen(hundredths(d.Threshold)) + 1 + len(d.Node) + 1 + macSize
	for _, h := range d.Hits {
		n += 1 + varintLen(hundredths(h.Weight)) + 1 + len(h.List) + 1
		if hasCode(h.Code) {
			n += 3
		}
		if catIndex(h.Category) < 0 {
			n += len(h.Category)
		}
	}
	return n
}

func varintLen(v int64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutVarint(b[:], v)
}

func (k *Key) encode(d *Decision, action int) []byte {
	b := make([]byte, 0, encodedSize(d))
	flags := byte(action) << actionShift
	if d.IP.Is6() {
		flags |= flagIPv6
	}
	if d.Truncated {
		flags |= flagTruncated
	}
	b = append(b, version, flags)
	b = binary.BigEndian.AppendUint32(b, uint32(max(d.Time.Unix(), 0)))
	b = append(b, d.IP.AsSlice()...)
	b = binary.AppendVarint(b, hundredths(d.Score))
	b = binary.AppendVarint(b, hundredths(d.Threshold))
	b = append(b, byte(len(d.Node)))
	b = append(b, d.Node...)
	b = append(b, byte(len(d.Hits)))
	for _, h := range d.Hits {
		var hf byte
		if h.DryRun {
			hf |= hitDryRun
		}
		if h.Degraded {
			hf |= hitDegraded
		}
		if hasCode(h.Code) {
			hf |= hitCode
		}
		if h.Unproven {
			hf |= hitUnproven
		}
		b = append(b, hf)
		if hasCode(h.Code) {
			c := h.Code.As4()
			b = append(b, c[1], c[2], c[3])
		}
		b = binary.AppendVarint(b, hundredths(h.Weight))
		b = append(b, byte(len(h.List)))
		b = append(b, h.List...)
		if i := catIndex(h.Category); i >= 0 {
			b = append(b, 0x80|byte(i))
		} else {
			b = append(b, byte(len(h.Category)))
			b = append(b, h.Category...)
		}
	}
	return append(b, sum(k.keys[0], b)...)
}

// reader reads the fields of a reference; the first problem sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.fail("cut short")
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("bad number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// text reads a length and that many bytes of printable UTF-8 text.
func (r *reader) text(maxLen int) string { return r.textOf(int(r.byte()), maxLen) }

// textOf reads n bytes of printable UTF-8 text.
func (r *reader) textOf(n, maxLen int) string {
	if n > maxLen {
		r.fail("text of %d bytes", n)
		return ""
	}
	s := string(r.bytes(n))
	if !printable(s) {
		r.fail("text that is not printable")
		return ""
	}
	return s
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c >= 0x80 && c < 0xa0 {
			return false
		}
	}
	return true
}

func decode(body []byte) (Decision, error) {
	r := &reader{b: body}
	var d Decision
	r.byte() // version, checked
	flags := r.byte()
	if flags&^(flagIPv6|flagTruncated|7<<actionShift) != 0 {
		r.fail("unknown flags %#x", flags)
	}
	a := int(flags >> actionShift & 7)
	if a >= len(actions) {
		r.fail("unknown action %d", a)
	} else {
		d.Action = actions[a]
	}
	d.Truncated = flags&flagTruncated != 0
	if t := r.bytes(4); t != nil {
		d.Time = time.Unix(int64(binary.BigEndian.Uint32(t)), 0).UTC()
	}
	if flags&flagIPv6 != 0 {
		if b := r.bytes(16); b != nil {
			d.IP = netip.AddrFrom16([16]byte(b))
			if d.IP.Is4In6() {
				r.fail("an IPv4-mapped address written as IPv6")
			}
		}
	} else if b := r.bytes(4); b != nil {
		d.IP = netip.AddrFrom4([4]byte(b))
	}
	d.Score = float64(r.varint()) / 100
	d.Threshold = float64(r.varint()) / 100
	d.Node = r.text(MaxNode)
	n := int(r.byte())
	if n > maxHits {
		r.fail("%d hits", n)
	}
	for i := 0; i < n && r.err == nil; i++ {
		var h Hit
		hf := r.byte()
		if hf&^(hitDryRun|hitDegraded|hitCode|hitUnproven) != 0 {
			r.fail("unknown hit flags %#x", hf)
		}
		h.DryRun, h.Degraded, h.Unproven = hf&hitDryRun != 0, hf&hitDegraded != 0, hf&hitUnproven != 0
		if hf&hitCode != 0 {
			if c := r.bytes(3); c != nil {
				h.Code = netip.AddrFrom4([4]byte{127, c[0], c[1], c[2]})
			}
		}
		h.Weight = float64(r.varint()) / 100
		h.List = r.text(MaxName)
		// A category is one of the usual ones by number, or its length
		// and text.
		if c := r.byte(); c&0x80 == 0 {
			h.Category = r.textOf(int(c), MaxName)
		} else if int(c&0x7f) < len(knownCategories) {
			h.Category = knownCategories[c&0x7f]
		} else {
			r.fail("unknown category %d", c&0x7f)
		}
		d.Hits = append(d.Hits, h)
	}
	if r.err == nil && len(r.b) > 0 {
		r.fail("%d bytes after the hits", len(r.b))
	}
	return d, r.err
}
