package zone

import "github.com/miekg/dns"

// apex is the zone's name in the forms the answer paths need.
type apex struct {
	name   string // lower case, trailing dot
	wire   []byte // lower case wire form
	labels int
}

func newApex(name string) apex {
	buf := make([]byte, 256)
	n, _ := dns.PackDomainName(name, buf, 0, nil, false)
	return apex{name: name, wire: buf[:n], labels: dns.CountLabel(name)}
}

// match is what the zone holds for a name.
type match struct {
	rcode   int   // dns.RcodeSuccess, dns.RcodeNameError, or dns.RcodeRefused (not in the zone)
	apex    bool  // the name is the apex: SOA and NS
	data    int32 // the name's A and TXT (its own or a wildcard's); -1: none
	apexOff int   // the offset of the apex in the name, for compression
}

// maxLabels is the most labels a name of 255 octets has.
const maxLabels = 128

// labelOffsets finds the labels of an uncompressed wire name that ends
// exactly at the end of name. It reports false for anything else.
func labelOffsets(name []byte, offs *[maxLabels]uint8) (int, bool) {
	if len(name) == 0 || len(name) > 255 {
		return 0, false
	}
	n, off := 0, 0
	for {
		l := int(name[off])
		if l == 0 {
			return n, off == len(name)-1
		}
		if l > 63 || off+1+l >= len(name) || n == maxLabels {
			return 0, false
		}
		offs[n] = uint8(off)
		n++
		off += 1 + l
	}
}

// lowerEq compares wire bytes ignoring ASCII case; b is lower case.
func lowerEq(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i, c := range a {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != b[i] {
			return false
		}
	}
	return true
}

// resolve looks a wire name up as an authoritative server does (RFC 1034
// section 4.3.2, RFC 4592): the name itself if it exists, else the
// wildcard at its closest encloser, else NXDOMAIN.
func (t *tree) resolve(z *apex, name []byte) match {
	var offs [maxLabels]uint8
	n, ok := labelOffsets(name, &offs)
	below := n - z.labels
	// The apex has at least one label, so below < n.
	if !ok || below < 0 || !lowerEq(name[offs[below]:], z.wire) {
		return match{rcode: dns.RcodeRefused, data: -1}
	}
	m := match{data: -1, apexOff: int(offs[below])}
	node := t.root
	i := below - 1
	for ; i >= 0; i-- {
		label := name[int(offs[i])+1 : int(offs[i])+1+int(name[offs[i]])]
		if len(label) == 1 && label[0] == '*' && t.nodes[node].wild >= 0 {
			// The wildcard's own name: it exists, and nothing below it.
			if i == 0 {
				m.data = t.nodes[node].wild
				return m
			}
			m.rcode = dns.RcodeNameError
			return m
		}
		s, ok := parseSym(label)
		if !ok {
			break
		}
		c := t.child(node, s)
		if c < 0 {
			break
		}
		node = c
	}
	switch {
	case i < 0:
		m.apex = node == t.root
		m.data = t.nodes[node].own
	case t.nodes[node].wild >= 0:
		m.data = t.nodes[node].wild
	default:
		m.rcode = dns.RcodeNameError
	}
	return m
}
