package zone

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/blmilter/blmilter/iplist"
)

// The RFC 5782 test points (section 5). The listed ones answer 127.0.0.2
// with a TXT from the template, category "test".
var (
	testListed4   = netip.MustParsePrefix("127.0.0.2/32")
	testUnlisted4 = netip.MustParsePrefix("127.0.0.1/32")
	testListed6   = netip.MustParsePrefix("::ffff:7f00:2/128")
	testUnlisted6 = netip.MustParsePrefix("::ffff:7f00:1/128")
)

const (
	testCategory = "test"
	testReason   = "RFC 5782 test point"
)

// built is one build of the zone's content.
type built struct {
	tree     *tree
	digest   string
	next     time.Time // the earliest expiry still ahead; zero: none
	listings int       // listings in effect
}

// compile builds the tree of the listings in effect at now.
func (z *Zone) compile(tpl template, listings []Listing, now time.Time) *built {
	es := z.entries(tpl, listings, now)
	out := &built{next: es.next, listings: es.listings}
	out.tree = buildTree(es.v4, es.v6, es.data)
	out.digest = z.digest(out.tree)
	return out
}

// entrySet is the listings in effect, with the test points, one entry per
// prefix, each family sorted by address, data numbered.
type entrySet struct {
	v4, v6   []*enode
	data     []rdata
	next     time.Time
	listings int
}

func (z *Zone) entries(tpl template, listings []Listing, now time.Time) entrySet {
	var es entrySet
	slab := make([]enode, 0, len(listings)+4)
	var buf []byte
	add := func(p netip.Prefix, rd rdata, hole, test bool) {
		slab = append(slab, enode{a: fromAddr(p.Addr()), bits: p.Bits(), rd: rd, hole: hole, test: test, prefix: p, order: len(slab)})
		e := &slab[len(slab)-1]
		if p.Addr().Is4() {
			es.v4 = append(es.v4, e)
		} else {
			es.v6 = append(es.v6, e)
		}
	}
	for _, l := range listings {
		if !l.Expires.IsZero() {
			if !l.Expires.After(now) {
				continue
			}
			if es.next.IsZero() || l.Expires.Before(es.next) {
				es.next = l.Expires
			}
		}
		p, ok := iplist.Canonical(l.Prefix)
		if !ok {
			continue
		}
		buf = z.render(buf[:0], tpl, p, l.Category, l.Reason)
		add(p, rdata{a: z.code(l.Category), txt: string(cleanTXT(buf))}, false, false)
		es.listings++
	}
	// ::ffff:7f00:2 is 127.0.0.2 and says the same (rbldnsd answers it
	// from its IPv4 data).
	testData := rdata{a: [4]byte{127, 0, 0, 2}, txt: string(cleanTXT(z.render(nil, tpl, testListed4, testCategory, testReason)))}
	add(testListed4, testData, false, true)
	add(testUnlisted4, rdata{}, true, true)
	add(testListed6, testData, false, true)
	add(testUnlisted6, rdata{}, true, true)

	// The data are numbered in address order, not in the order the
	// listings came, so the same listings give the same tree and digest.
	es.v4, es.v6 = sortEntries(es.v4), sortEntries(es.v6)
	// Listings share data only when the template names neither the
	// address nor its page; otherwise each has its own and interning
	// would only cost.
	var intern map[rdata]int32
	if !tpl.perAddress() {
		intern = map[rdata]int32{}
	}
	es.data = make([]rdata, 0, len(es.v4)+len(es.v6))
	for _, list := range [][]*enode{es.v4, es.v6} {
		for _, e := range list {
			if e.hole {
				e.d = -1
				continue
			}
			if intern != nil {
				if i, ok := intern[e.rd]; ok {
					e.d = i
					continue
				}
				intern[e.rd] = int32(len(es.data))
			}
			e.d = int32(len(es.data))
			es.data = append(es.data, e.rd)
		}
	}
	return es
}

func (z *Zone) code(category string) [4]byte {
	if c, ok := z.Codes[category]; ok {
		return c.Unmap().As4()
	}
	return DefaultCode.As4()
}

// render expands the TXT template for a listing.
func (z *Zone) render(dst []byte, tpl template, p netip.Prefix, category, reason string) []byte {
	for _, part := range tpl {
		switch part.field {
		case fieldText:
			dst = append(dst, part.text...)
		case fieldIP:
			if p.IsSingleIP() {
				dst = p.Addr().AppendTo(dst)
			} else {
				dst = p.AppendTo(dst)
			}
		case fieldCategory:
			dst = append(dst, category...)
		case fieldReason:
			dst = append(dst, reason...)
		case fieldURL:
			if z.PublicURL != "" {
				dst = append(dst, z.PublicURL...)
				dst = append(dst, "/ip/"...)
				dst = p.Addr().AppendTo(dst)
			}
		}
	}
	return dst
}

// cleanTXT makes a text one TXT string that every publisher can carry:
// control characters become spaces (rbldnsd's files are lines), no blanks
// at either end (rbldnsd drops leading ones), at most 255 bytes, cut
// between characters. It works in place.
func cleanTXT(b []byte) []byte {
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = ' '
		}
	}
	b = bytes.TrimSpace(b)
	if len(b) > 255 {
		cut := 255
		for cut > 0 && !utf8.RuneStart(b[cut]) {
			cut--
		}
		b = bytes.TrimSpace(b[:cut])
	}
	return b
}

// template is a parsed TXT template.
type template []templatePart

// perAddress reports whether the text differs for each listed network.
func (t template) perAddress() bool {
	for _, p := range t {
		if p.field == fieldIP || p.field == fieldURL {
			return true
		}
	}
	return false
}

type templatePart struct {
	field int
	text  string
}

const (
	fieldText = iota
	fieldIP
	fieldCategory
	fieldReason
	fieldURL
)

func parseTemplate(s string) template {
	fields := []struct {
		name  string
		field int
	}{{"{ip}", fieldIP}, {"{category}", fieldCategory}, {"{reason}", fieldReason}, {"{url}", fieldURL}}
	var t template
	for len(s) > 0 {
		next, which := len(s), -1
		for i, f := range fields {
			if j := strings.Index(s, f.name); j >= 0 && j < next {
				next, which = j, i
			}
		}
		if next > 0 {
			t = append(t, templatePart{field: fieldText, text: s[:next]})
		}
		if which < 0 {
			break
		}
		t = append(t, templatePart{field: fields[which].field})
		s = s[next+len(fields[which].name):]
	}
	return t
}

// digest identifies the zone's content apart from its serial: the same
// digest, the same records. The tree is hashed as built, so a change of
// blmilter's layout of names changes it too (digestVersion), as it should.
func (z *Zone) digest(t *tree) string {
	const digestVersion = "blmilter-zone-1"
	h := sha256.New()
	var buf []byte
	flush := func() {
		h.Write(buf)
		buf = buf[:0]
	}
	str := func(s string) {
		buf = binary.BigEndian.AppendUint64(buf, uint64(len(s)))
		buf = append(buf, s...)
		if len(buf) > 32*1024 {
			flush()
		}
	}
	num := func(v uint64) { buf = binary.BigEndian.AppendUint64(buf, v) }
	str(digestVersion)
	str(z.Name)
	num(uint64(z.TTL / time.Second))
	for _, ns := range z.NS {
		str(ns)
	}
	str(z.SOA.MName)
	str(z.SOA.RName)
	for _, d := range []time.Duration{z.SOA.Refresh, z.SOA.Retry, z.SOA.Expire, z.SOA.Minimum} {
		num(uint64(d / time.Second))
	}
	num(uint64(len(t.data)))
	for _, rd := range t.data {
		buf = append(buf, rd.a[:]...)
		str(rd.txt)
	}
	t.walk(func(path []sym, n *tnode) bool {
		var last uint32
		if len(path) > 0 {
			last = uint32(path[len(path)-1])
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(path)))
		buf = binary.BigEndian.AppendUint32(buf, last)
		buf = binary.BigEndian.AppendUint32(buf, uint32(n.own))
		buf = binary.BigEndian.AppendUint32(buf, uint32(n.wild))
		if len(buf) > 32*1024 {
			flush()
		}
		return true
	})
	flush()
	return hex.EncodeToString(h.Sum(nil))
}

// appendName appends the presentation name of path (labels from the top
// of the zone down), with a "*" label first for a wildcard, and the apex.
func appendName(b []byte, path []sym, wildcard bool, apex string) []byte {
	if wildcard {
		b = append(b, "*."...)
	}
	for i := len(path) - 1; i >= 0; i-- {
		b = appendSym(b, path[i])
		b = append(b, '.')
	}
	return append(b, apex...)
}

// addrName is the RFC 5782 name of an address, for tests and the export.
func addrName(a netip.Addr, apex string) string {
	var b []byte
	if a.Is4() {
		x := a.As4()
		for i := 3; i >= 0; i-- {
			b = strconv.AppendUint(b, uint64(x[i]), 10)
			b = append(b, '.')
		}
	} else {
		x := a.As16()
		const hexd = "0123456789abcdef"
		for i := 15; i >= 0; i-- {
			b = append(b, hexd[x[i]&0xf], '.', hexd[x[i]>>4], '.')
		}
	}
	return string(append(b, apex...))
}
