package zone

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// xfrMessageSize is how many bytes of records (before compression) go in
// one message of a transfer.
const xfrMessageSize = 32 * 1024

// mayTransfer reports whether remote may transfer the zone: from a
// transfer network, and signed when a key is set (the signature itself was
// checked before).
func (s *Server) mayTransfer(remote netip.Addr, signed bool) bool {
	if s.opts.TSIG != nil && !signed {
		return false
	}
	for _, p := range *s.transferNets.Load() {
		if p.Contains(remote) {
			return true
		}
	}
	return false
}

// transfer answers AXFR (RFC 5936) and IXFR (RFC 1995).
func (s *Server) transfer(w dns.ResponseWriter, req, resp *dns.Msg, sn *snapshot, tcp bool, opt *dns.OPT) {
	q := req.Question[0]
	kind := dns.TypeToString[q.Qtype]
	remote := remoteAddr(w.RemoteAddr())
	signed := req.IsTsig() != nil
	if !s.mayTransfer(remote, signed) {
		s.stats.xfrRefused.Add(1)
		// Over UDP the address can be forged: no warning for anyone to flood the log with.
		level := slog.LevelWarn
		if !tcp {
			level = slog.LevelDebug
		}
		s.log.Log(context.Background(), level, "refused a zone transfer", "type", kind, "remote", remote.String(), "signed", signed)
		resp.Rcode = dns.RcodeRefused
		s.write(w, resp, tcp, opt)
		return
	}
	if !strings.EqualFold(dns.Fqdn(q.Name), sn.apex.name) {
		resp.Rcode = dns.RcodeNotAuth
		s.write(w, resp, tcp, opt)
		return
	}
	resp.Authoritative = true
	if q.Qtype == dns.TypeAXFR {
		if !tcp {
			// RFC 5936 section 4.2: AXFR is not defined over UDP.
			resp.Rcode = dns.RcodeNotImplemented
			s.write(w, resp, tcp, opt)
			return
		}
		s.stats.axfr.Add(1)
		s.sendZone(w, req, sn, kind, remote)
		return
	}

	var have *dns.SOA
	for _, rr := range req.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			have = soa
		}
	}
	if have == nil {
		resp.Rcode = dns.RcodeFormatError
		s.write(w, resp, tcp, opt)
		return
	}
	if !serialAfter(sn.serial, have.Serial) || !tcp {
		// Up to date: the current SOA alone. Over UDP the current SOA
		// alone too, which sends the secondary to TCP (RFC 1995 section 2).
		resp.Answer = []dns.RR{sn.soa}
		s.write(w, resp, tcp, opt)
		return
	}
	s.stats.ixfr.Add(1)
	chain := sn.journalFrom(have.Serial)
	if chain == nil {
		// Not in the journal: the whole zone, in an IXFR answer.
		s.stats.ixfrFull.Add(1)
		s.sendZone(w, req, sn, kind, remote)
		return
	}
	start := time.Now()
	x := s.newXfr(w, req)
	x.add(sn.soa)
	for _, c := range chain {
		x.add(sn.soaWithSerial(c.from))
		x.add(c.del...)
		x.add(sn.soaWithSerial(c.to))
		x.add(c.add...)
	}
	x.add(sn.soa)
	x.flush()
	s.logTransfer(x, kind, remote, have.Serial, sn.serial, start)
}

// sendZone streams the whole zone: SOA, NS, the records, SOA.
func (s *Server) sendZone(w dns.ResponseWriter, req *dns.Msg, sn *snapshot, kind string, remote netip.Addr) {
	start := time.Now()
	x := s.newXfr(w, req)
	x.add(sn.soa)
	sn.eachRecord(func(rr dns.RR) bool {
		x.add(rr)
		return x.err == nil
	})
	x.add(sn.soa)
	x.flush()
	s.logTransfer(x, kind, remote, 0, sn.serial, start)
}

func (s *Server) logTransfer(x *xfr, kind string, remote netip.Addr, from, to uint32, start time.Time) {
	if x.err != nil {
		s.stats.xfrFailed.Add(1)
		s.log.Warn("zone transfer failed", "type", kind, "remote", remote.String(), "serial", to, "err", x.err)
		return
	}
	s.log.Info("zone transferred", "type", kind, "remote", remote.String(), "from_serial", from, "serial", to,
		"records", x.records, "messages", x.messages, "took", time.Since(start).Round(time.Millisecond))
}

// eachRecord calls fn for the NS records and every A and TXT, in tree
// order, until fn returns false.
func (sn *snapshot) eachRecord(fn func(dns.RR) bool) {
	for _, ns := range sn.ns {
		if !fn(ns) {
			return
		}
	}
	t := sn.b.tree
	ok := true
	var name []byte
	emit := func(path []sym, wildcard bool, d int32) {
		if !ok || d < 0 {
			return
		}
		name = appendName(name[:0], path, wildcard, sn.apex.name)
		for _, rr := range sn.records(string(name), &t.data[d]) {
			if ok = fn(rr); !ok {
				return
			}
		}
	}
	t.walk(func(path []sym, n *tnode) bool {
		emit(path, false, n.own)
		emit(path, true, n.wild)
		return ok
	})
}

func (sn *snapshot) soaWithSerial(serial uint32) *dns.SOA {
	soa := *sn.soa
	soa.Serial = serial
	return &soa
}

// journalFrom returns the journal's changes from serial to the current
// one, or nil when the journal does not reach back that far.
func (sn *snapshot) journalFrom(serial uint32) []*change {
	for i, c := range sn.journal {
		if c.from == serial {
			return sn.journal[i:]
		}
	}
	return nil
}

// xfr writes a transfer as a series of messages, each signed when the
// request was (RFC 8945 section 5.3.1: the later ones over the timers
// only, chained to the previous MAC by the writer).
type xfr struct {
	w        dns.ResponseWriter
	req      *dns.Msg
	batch    []dns.RR
	size     int
	messages int
	records  int
	err      error
}

func (s *Server) newXfr(w dns.ResponseWriter, req *dns.Msg) *xfr {
	return &xfr{w: w, req: req}
}

func (x *xfr) add(rrs ...dns.RR) {
	for _, rr := range rrs {
		if x.err != nil {
			return
		}
		x.batch = append(x.batch, rr)
		x.records++
		x.size += dns.Len(rr)
		if x.size >= xfrMessageSize {
			x.flush()
		}
	}
}

func (x *xfr) flush() {
	if x.err != nil || len(x.batch) == 0 {
		return
	}
	m := new(dns.Msg)
	m.SetReply(x.req)
	m.Authoritative = true
	m.Compress = true
	m.Answer = x.batch
	if t := x.req.IsTsig(); t != nil {
		m.SetTsig(t.Hdr.Name, t.Algorithm, 300, time.Now().Unix())
	}
	if x.messages > 0 {
		x.w.TsigTimersOnly(true)
	}
	x.err = x.w.WriteMsg(m)
	x.messages++
	x.batch = nil
	x.size = 0
}

// diffTrees lists what changed from a to b as records: the owner names
// whose A+TXT went away or changed, and the new or changed ones.
func diffTrees(a, b *tree, sn *snapshot) (del, add []dns.RR) {
	var name []byte
	emit := func(out *[]dns.RR, path []sym, wildcard bool, rd *rdata) {
		name = appendName(name[:0], path, wildcard, sn.apex.name)
		*out = append(*out, sn.records(string(name), rd)...)
	}
	same := func(x, y *rdata) bool { return x == nil && y == nil || x != nil && y != nil && *x == *y }
	var path []sym
	var whole func(t *tree, n int32, out *[]dns.RR)
	whole = func(t *tree, n int32, out *[]dns.RR) {
		nd := &t.nodes[n]
		if nd.own >= 0 {
			emit(out, path, false, &t.data[nd.own])
		}
		if nd.wild >= 0 {
			emit(out, path, true, &t.data[nd.wild])
		}
		for _, e := range t.kids(n) {
			path = append(path, e.s)
			whole(t, e.node, out)
			path = path[:len(path)-1]
		}
	}
	var both func(na, nb int32)
	both = func(na, nb int32) {
		x, y := &a.nodes[na], &b.nodes[nb]
		for _, wildcard := range []bool{false, true} {
			dx, dy := x.own, y.own
			if wildcard {
				dx, dy = x.wild, y.wild
			}
			rx, ry := a.rdataAt(dx), b.rdataAt(dy)
			if same(rx, ry) {
				continue
			}
			if rx != nil {
				emit(&del, path, wildcard, rx)
			}
			if ry != nil {
				emit(&add, path, wildcard, ry)
			}
		}
		ka, kb := a.kids(na), b.kids(nb)
		i, j := 0, 0
		for i < len(ka) || j < len(kb) {
			switch {
			case j == len(kb) || i < len(ka) && ka[i].s < kb[j].s:
				path = append(path, ka[i].s)
				whole(a, ka[i].node, &del)
				i++
			case i == len(ka) || kb[j].s < ka[i].s:
				path = append(path, kb[j].s)
				whole(b, kb[j].node, &add)
				j++
			default:
				path = append(path, ka[i].s)
				both(ka[i].node, kb[j].node)
				i++
				j++
			}
			path = path[:len(path)-1]
		}
	}
	both(a.root, b.root)
	return del, add
}
