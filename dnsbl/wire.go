package dnsbl

import (
	"encoding/binary"
	"errors"

	"github.com/miekg/dns"
)

// A lookup writes one kind of message, a query with one question, and
// reads a few things of the answer: the header, the question, the A,
// CNAME and TXT records of the answer section, the SOA of the authority
// section and the extended rcode of an OPT record. That much of RFC 1035
// is written here, straight from and into byte slices, instead of through
// miekg/dns's general message types, which cost a few dozen allocations
// per answer. Names stay in wire form (length-prefixed labels, without
// compression) and are compared without ASCII case, so no name is turned
// into text and back.

// Header bits and sizes (RFC 1035 section 4.1).
const (
	headerSize   = 12
	flagResponse = 1 << 15
	flagTrunc    = 1 << 9
	flagRD       = 1 << 8
	maxQuery     = headerSize + 255 + 4 + 11 // the longest name, type and class, an OPT record
	maxPointers  = 126                       // compression pointers followed in one name, as miekg/dns
	typeOPT      = 41
)

var errBadMessage = errors.New("dnsbl: malformed DNS message")

// msg is what a lookup uses of a DNS answer.
type msg struct {
	id        uint16
	response  bool
	truncated bool
	rcode     int // with the extended bits of an OPT record
	questions int
	qname     string // the first question's, in wire form
	qtype     uint16
	qclass    uint16
	answer    []record
	hasSOA    bool   // the authority section has an SOA record (the first one is used)
	soaTTL    uint32 // its TTL
	soaMin    uint32 // its MINIMUM field

	answerBuf [2]record // a list's answer has a record or two
}

// record is one record of the answer section.
type record struct {
	name   string // owner, wire form
	rtype  uint16
	class  uint16
	ttl    uint32
	a      [4]byte // A
	hasA   bool    // an A record with its address (miekg/dns took one without data)
	target string  // CNAME: wire form
	txt    []byte  // TXT: its strings, concatenated (a long text is split at 255 bytes)
}

// appendQuery appends a query for the wire-form name and qtype, class IN,
// recursion desired, with an EDNS0 OPT record advertising udpSize.
func appendQuery(b []byte, id uint16, wire string, qtype uint16) []byte {
	b = binary.BigEndian.AppendUint16(b, id)
	b = binary.BigEndian.AppendUint16(b, flagRD)
	b = append(b, 0, 1, 0, 0, 0, 0, 0, 1) // one question, one additional record
	b = append(b, wire...)
	b = binary.BigEndian.AppendUint16(b, qtype)
	b = binary.BigEndian.AppendUint16(b, dns.ClassINET)
	// OPT: root name, type 41, class = UDP size, TTL 0 (no DO bit), no data.
	b = append(b, 0, 0, typeOPT)
	b = binary.BigEndian.AppendUint16(b, udpSize)
	return append(b, 0, 0, 0, 0, 0, 0)
}

// wireName packs a fully qualified name as built by appendName into wire
// form; presentation escapes in a zone (\. or \DDD) are undone.
func wireName(name string) (string, error) {
	var buf [256]byte
	n, err := dns.PackDomainName(name, buf[:], 0, nil, false)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// equalFold compares two wire-form names without ASCII case. Length
// bytes (at most 63) are never letters, so they compare as themselves.
func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// parse reads a DNS message, as leniently as miekg/dns did: a message may
// end after its header (some servers send REFUSED so), inside the
// question after the name or the type, or between two records, and then
// holds what came before. The sections of a truncated answer are not read
// past the question: it is asked again over TCP. A record of a type the
// lookup reads must be well formed; the data of other types is skipped.
func parse(b []byte) (*msg, error) {
	if len(b) < headerSize {
		return nil, errBadMessage
	}
	m := &msg{id: binary.BigEndian.Uint16(b)}
	flags := binary.BigEndian.Uint16(b[2:])
	m.response = flags&flagResponse != 0
	m.truncated = flags&flagTrunc != 0
	m.rcode = int(flags & 0xf)
	qd := int(binary.BigEndian.Uint16(b[4:]))
	an := int(binary.BigEndian.Uint16(b[6:]))
	ns := int(binary.BigEndian.Uint16(b[8:]))
	ar := int(binary.BigEndian.Uint16(b[10:]))
	off := headerSize
	if off == len(b) {
		return m, nil
	}
	for i := range qd {
		name, p, err := readName(b, off, i == 0)
		if err != nil {
			return nil, err
		}
		var qtype, qclass uint16
		switch {
		case p == len(b):
		case p+2 > len(b):
			return nil, errBadMessage
		case p+2 == len(b):
			qtype, p = binary.BigEndian.Uint16(b[p:]), p+2
		case p+4 > len(b):
			return nil, errBadMessage
		default:
			qtype, qclass, p = binary.BigEndian.Uint16(b[p:]), binary.BigEndian.Uint16(b[p+2:]), p+4
		}
		if i == 0 {
			m.qname, m.qtype, m.qclass = name, qtype, qclass
		}
		m.questions++
		off = p
		if off == len(b) {
			return m, nil
		}
	}
	if m.truncated {
		return m, nil
	}
	m.answer = m.answerBuf[:0]
	for range an {
		if off == len(b) {
			return m, nil
		}
		var r record
		var rdata []byte
		var err error
		if q := m.qname; q != "" && off+2 <= len(b) && b[off] == 0xc0 && b[off+1] == headerSize {
			// The usual owner: a pointer to the question's name, read
			// already.
			r.name, r.rtype, r.class, r.ttl, rdata, off, err = readRecordAfter(b, off+2, q)
		} else {
			r.name, r.rtype, r.class, r.ttl, rdata, off, err = readRecord(b, off, true)
		}
		if err != nil {
			return nil, err
		}
		if len(rdata) > 0 {
			switch r.rtype {
			case dns.TypeA:
				if len(rdata) != 4 {
					return nil, errBadMessage
				}
				r.a, r.hasA = [4]byte(rdata), true
			case dns.TypeCNAME:
				target, end, err := readName(b[:off], off-len(rdata), true)
				if err != nil || end != off {
					return nil, errBadMessage
				}
				r.target = target
			case dns.TypeTXT:
				for len(rdata) > 0 {
					n := int(rdata[0])
					if 1+n > len(rdata) {
						return nil, errBadMessage
					}
					r.txt = append(r.txt, rdata[1:1+n]...)
					rdata = rdata[1+n:]
				}
			}
		}
		m.answer = append(m.answer, r)
	}
	for range ns {
		if off == len(b) {
			return m, nil
		}
		_, rtype, _, ttl, rdata, end, err := readRecord(b, off, false)
		if err != nil {
			return nil, err
		}
		if rtype == dns.TypeSOA {
			minimum, err := soaMinimum(b[:end], end-len(rdata))
			if err != nil {
				return nil, err
			}
			if !m.hasSOA {
				m.hasSOA, m.soaTTL, m.soaMin = true, ttl, minimum
			}
		}
		off = end
	}
	for range ar {
		if off == len(b) {
			break
		}
		_, rtype, _, ttl, _, end, err := readRecord(b, off, false)
		if err != nil {
			return nil, err
		}
		if rtype == typeOPT {
			m.rcode = m.rcode&0xf | int(ttl>>24)<<4 // the last OPT record counts
		}
		off = end
	}
	return m, nil
}

// soaMinimum reads the MINIMUM field of the SOA data from off to the end
// of b: MNAME and RNAME, then five 32-bit fields, MINIMUM the last. Data
// that ends early after a whole field leaves the rest 0, as miekg/dns read
// it.
func soaMinimum(b []byte, off int) (uint32, error) {
	var err error
	for range 2 {
		if off == len(b) {
			return 0, nil
		}
		if _, off, err = readName(b, off, false); err != nil {
			return 0, err
		}
	}
	var v uint32
	for range 5 {
		if off == len(b) {
			return 0, nil
		}
		if off+4 > len(b) {
			return 0, errBadMessage
		}
		v, off = binary.BigEndian.Uint32(b[off:]), off+4
	}
	if off != len(b) {
		return 0, errBadMessage
	}
	return v, nil
}

// readRecord reads the record at off: its owner (in wire form if keep),
// type, class, TTL and data, and the offset after it.
func readRecord(b []byte, off int, keep bool) (name string, rtype, class uint16, ttl uint32, rdata []byte, end int, err error) {
	name, off, err = readName(b, off, keep)
	if err != nil {
		return "", 0, 0, 0, nil, 0, errBadMessage
	}
	return readRecordAfter(b, off, name)
}

// readRecordAfter reads the rest of a record, whose owner name ends at
// off.
func readRecordAfter(b []byte, off int, name string) (_ string, rtype, class uint16, ttl uint32, rdata []byte, end int, err error) {
	if off+10 > len(b) {
		return "", 0, 0, 0, nil, 0, errBadMessage
	}
	rtype = binary.BigEndian.Uint16(b[off:])
	class = binary.BigEndian.Uint16(b[off+2:])
	ttl = binary.BigEndian.Uint32(b[off+4:])
	n := int(binary.BigEndian.Uint16(b[off+8:]))
	off += 10
	if off+n > len(b) {
		return "", 0, 0, 0, nil, 0, errBadMessage
	}
	return name, rtype, class, ttl, b[off : off+n], off + n, nil
}

// readName reads the name at off, following compression pointers, and
// returns it in wire form (if keep) and the offset after it.
func readName(b []byte, off int, keep bool) (string, int, error) {
	var buf [255]byte
	n := 0
	end := -1 // the offset after the name where it is, before any pointer
	for ptrs := 0; ; {
		if off >= len(b) {
			return "", 0, errBadMessage
		}
		c := int(b[off])
		switch c & 0xc0 {
		case 0x00:
			if off+1+c > len(b) || n+1+c > len(buf) {
				return "", 0, errBadMessage
			}
			if keep {
				copy(buf[n:], b[off:off+1+c])
			}
			n += 1 + c
			off += 1 + c
			if c == 0 {
				if end < 0 {
					end = off
				}
				if !keep {
					return "", end, nil
				}
				return string(buf[:n]), end, nil
			}
		case 0xc0:
			if off+1 >= len(b) {
				return "", 0, errBadMessage
			}
			if end < 0 {
				end = off + 2
			}
			if ptrs++; ptrs > maxPointers {
				return "", 0, errBadMessage
			}
			off = (c&0x3f)<<8 | int(b[off+1])
		default:
			return "", 0, errBadMessage // 0x40 and 0x80 are reserved
		}
	}
}

// answers reports whether m is an answer to the question name (as built
// by appendName) / qtype / IN.
func answers(m *msg, name string, qtype uint16) bool {
	wire, err := wireName(name)
	return err == nil && m.answers(wire, qtype)
}

// answers reports whether m is an answer to the question wire/qtype/IN.
// Some servers send REFUSED or FORMERR without the question section; such
// an answer carries no data, only its rcode, and is taken by its ID.
func (m *msg) answers(wire string, qtype uint16) bool {
	if !m.response {
		return false
	}
	if m.questions == 0 {
		return m.rcode != dns.RcodeSuccess && m.rcode != dns.RcodeNameError
	}
	return m.questions == 1 && m.qtype == qtype && m.qclass == dns.ClassINET && equalFold(m.qname, wire)
}
