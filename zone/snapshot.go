package zone

import (
	"encoding/binary"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// snapshot is the zone as served at one serial; never changed once
// published, so queries read it without locks.
type snapshot struct {
	serial  uint32
	b       *built
	apex    *apex
	journal []*change // the IXFR journal up to this serial, oldest first

	ttl, negTTL uint32
	soa         *dns.SOA
	ns          []*dns.NS
	// The same in wire form for the UDP answer path: the SOA's rdata
	// (names uncompressed) and each NS target.
	soaRdata []byte
	nsRdata  [][]byte
}

// change is one step of the journal: what the serial from..to removed and
// added (RFC 1995 section 4).
type change struct {
	from, to uint32
	del, add []dns.RR
}

func (z *Zone) newSnapshot(ap *apex, b *built, serial uint32, journal []*change) *snapshot {
	sn := &snapshot{
		serial:  serial,
		b:       b,
		apex:    ap,
		journal: journal,
		ttl:     seconds(z.TTL),
		negTTL:  min(seconds(z.TTL), seconds(z.SOA.Minimum)),
	}
	sn.soa = &dns.SOA{
		Hdr:     dns.RR_Header{Name: ap.name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: sn.ttl},
		Ns:      z.SOA.MName,
		Mbox:    z.SOA.RName,
		Serial:  serial,
		Refresh: seconds(z.SOA.Refresh),
		Retry:   seconds(z.SOA.Retry),
		Expire:  seconds(z.SOA.Expire),
		Minttl:  seconds(z.SOA.Minimum),
	}
	buf := make([]byte, 600)
	n, _ := dns.PackDomainName(sn.soa.Ns, buf, 0, nil, false)
	n, _ = dns.PackDomainName(sn.soa.Mbox, buf, n, nil, false)
	for _, v := range []uint32{serial, sn.soa.Refresh, sn.soa.Retry, sn.soa.Expire, sn.soa.Minttl} {
		binary.BigEndian.PutUint32(buf[n:], v)
		n += 4
	}
	sn.soaRdata = buf[:n:n]
	for _, name := range z.NS {
		sn.ns = append(sn.ns, &dns.NS{Hdr: dns.RR_Header{Name: ap.name, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: sn.ttl}, Ns: name})
		w := make([]byte, 256)
		n, _ := dns.PackDomainName(name, w, 0, nil, false)
		sn.nsRdata = append(sn.nsRdata, w[:n:n])
	}
	return sn
}

func seconds(d time.Duration) uint32 { return uint32(d / time.Second) }

// reply is what an answer to a query holds, decided once for both ways of
// writing it (the UDP fast path and miekg/dns).
type reply struct {
	rcode  int
	aa     bool
	a, txt *rdata // the name's A and TXT in the answer section
	soa    bool   // the SOA in the answer section (a query at the apex)
	ns     bool   // the NS records in the answer section
	negSOA bool   // the SOA in the authority section: NXDOMAIN or NODATA
}

// decide answers qtype for a name the zone holds as m says.
func (sn *snapshot) decide(m match, qtype uint16) reply {
	switch m.rcode {
	case dns.RcodeRefused:
		return reply{rcode: dns.RcodeRefused}
	case dns.RcodeNameError:
		return reply{rcode: dns.RcodeNameError, aa: true, negSOA: true}
	}
	r := reply{aa: true}
	if m.apex {
		switch qtype {
		case dns.TypeSOA:
			r.soa = true
		case dns.TypeNS:
			r.ns = true
		case dns.TypeANY:
			r.soa, r.ns = true, true
		default:
			r.negSOA = true
		}
		return r
	}
	if rd := sn.b.tree.rdataAt(m.data); rd != nil {
		switch qtype {
		case dns.TypeA:
			r.a = rd
		case dns.TypeTXT:
			if rd.txt != "" {
				r.txt = rd
			}
		case dns.TypeANY:
			r.a = rd
			if rd.txt != "" {
				r.txt = rd
			}
		}
	}
	if r.a == nil && r.txt == nil {
		r.negSOA = true
	}
	return r
}

// wireLen is the length of the reply with every owner name a pointer to
// the question, as the fast path writes it; the other path compresses at
// least as well. Both decide truncation on it, so they agree.
func (sn *snapshot) wireLen(r reply, qnameLen int, edns bool) int {
	const rrFixed = 2 + 10 // owner pointer, type, class, TTL, length
	n := 12 + qnameLen + 4
	if r.a != nil {
		n += rrFixed + 4
	}
	if r.txt != nil {
		n += rrFixed + 1 + len(r.txt.txt)
	}
	if r.soa {
		n += rrFixed + len(sn.soaRdata)
	}
	if r.ns {
		for _, ns := range sn.nsRdata {
			n += rrFixed + len(ns)
		}
	}
	if r.negSOA {
		n += rrFixed + len(sn.soaRdata)
	}
	if edns {
		n += 11
	}
	return n
}

// fill puts the reply's records into m, a reply to a query for qname;
// owner is the name as asked (its case kept), apexOwner the apex as
// spelled in the question.
func (sn *snapshot) fill(m *dns.Msg, r reply, owner, apexOwner string) {
	m.Rcode = r.rcode
	m.Authoritative = r.aa
	if r.a != nil {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: sn.ttl},
			A:   net.IP(r.a.a[:]).To4(),
		})
	}
	if r.txt != nil {
		m.Answer = append(m.Answer, &dns.TXT{
			Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: sn.ttl},
			Txt: []string{escapeTXT(r.txt.txt)},
		})
	}
	if r.soa {
		soa := *sn.soa
		soa.Hdr.Name = owner
		m.Answer = append(m.Answer, &soa)
	}
	if r.ns {
		for _, ns := range sn.ns {
			c := *ns
			c.Hdr.Name = owner
			m.Answer = append(m.Answer, &c)
		}
	}
	if r.negSOA {
		soa := *sn.soa
		soa.Hdr.Name = apexOwner
		soa.Hdr.Ttl = sn.negTTL
		m.Ns = append(m.Ns, &soa)
	}
}

// escapeTXT writes raw text the way miekg/dns keeps a TXT string: the
// presentation form, where backslash and quote are escaped and other bytes
// outside printable ASCII are \DDD.
func escapeTXT(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			b.WriteByte('\\')
			b.WriteByte('0' + c/100)
			b.WriteByte('0' + c/10%10)
			b.WriteByte('0' + c%10)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// records returns the A and TXT records of one owner name.
func (sn *snapshot) records(name string, rd *rdata) []dns.RR {
	out := []dns.RR{&dns.A{
		Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: sn.ttl},
		A:   net.IP(rd.a[:]).To4(),
	}}
	if rd.txt != "" {
		out = append(out, &dns.TXT{
			Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: sn.ttl},
			Txt: []string{escapeTXT(rd.txt)},
		})
	}
	return out
}
