package zone

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// The UDP path. Each worker reads the socket in its own loop and answers
// in place, without a goroutine per packet. Plain queries (one question,
// class IN, EDNS at most, no TSIG) are read and written straight from and
// into the worker's buffers with no allocation; everything else is parsed
// by miekg/dns and answered by ServeDNS. Both decide with the same
// functions (resolve, decide, wireLen), and a test holds their answers
// equal.

const maxUDPQuery = 4096

func (s *Server) readUDP(pc net.PacketConn) error {
	in := make([]byte, maxUDPQuery)
	out := make([]byte, 0, 65535)
	uc, _ := pc.(*net.UDPConn)
	for {
		var (
			n    int
			from netip.AddrPort
			err  error
			addr net.Addr
		)
		if uc != nil {
			n, from, err = uc.ReadFromUDPAddrPort(in)
		} else {
			n, addr, err = pc.ReadFrom(in)
			if ua, ok := addr.(*net.UDPAddr); ok {
				from = ua.AddrPort()
			}
		}
		if err != nil {
			if s.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// ICMP errors for earlier answers surface here on some
			// systems; they concern a client, not the socket.
			s.log.Debug("reading a UDP query", "err", err)
			continue
		}
		s.stats.udpQueries.Add(1)
		resp := s.answerUDP(in[:n], from, pc.LocalAddr(), out[:0])
		if resp == nil {
			continue
		}
		if uc != nil {
			_, err = uc.WriteToUDPAddrPort(resp, from)
		} else {
			_, err = pc.WriteTo(resp, addr)
		}
		if err != nil && !s.isClosing() {
			s.log.Debug("writing a UDP answer", "remote", from.String(), "err", err)
		}
	}
}

func (s *Server) isClosing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// answerUDP answers one datagram into out; nil: send nothing. A panic
// drops the query and is counted (see recovered).
func (s *Server) answerUDP(req []byte, from netip.AddrPort, local net.Addr, out []byte) (resp []byte) {
	defer func() {
		if p := recover(); p != nil {
			s.recovered(p, from.String())
			resp = nil
		}
	}()
	sn := s.snap.Load()
	if sn != nil {
		if resp, ok := s.fastAnswer(sn, req, out); ok {
			return resp
		}
	}
	return s.slowAnswer(req, from, local, out)
}

// fastAnswer answers a plain query; ok is false for anything it leaves to
// slowAnswer.
func (s *Server) fastAnswer(sn *snapshot, req []byte, out []byte) (resp []byte, ok bool) {
	if len(req) < 12+1+4 {
		return nil, false
	}
	// QR clear, opcode QUERY; one question, nothing else but an OPT.
	if req[2]&0xf8 != 0 || binary.BigEndian.Uint16(req[4:]) != 1 ||
		binary.BigEndian.Uint16(req[6:]) != 0 || binary.BigEndian.Uint16(req[8:]) != 0 {
		return nil, false
	}
	arcount := binary.BigEndian.Uint16(req[10:])
	if arcount > 1 {
		return nil, false
	}
	end, ok := nameEnd(req, 12)
	if !ok || end+4 > len(req) {
		return nil, false
	}
	qtype := binary.BigEndian.Uint16(req[end:])
	qclass := binary.BigEndian.Uint16(req[end+2:])
	if qclass != dns.ClassINET || qtype == dns.TypeAXFR || qtype == dns.TypeIXFR ||
		qtype == dns.TypeMAILA || qtype == dns.TypeMAILB {
		return nil, false
	}
	p := end + 4
	edns, do := false, false
	clientSize := 0
	if arcount == 1 {
		// The OPT: root owner, type 41, version 0, its options ignored.
		if p+11 > len(req) || req[p] != 0 || binary.BigEndian.Uint16(req[p+1:]) != dns.TypeOPT || req[p+6] != 0 {
			return nil, false
		}
		if p+11+int(binary.BigEndian.Uint16(req[p+9:])) != len(req) {
			return nil, false
		}
		edns, do = true, req[p+7]&0x80 != 0
		clientSize = int(binary.BigEndian.Uint16(req[p+3:]))
		p = len(req)
	}
	if p != len(req) {
		return nil, false
	}

	qname := req[12:end]
	m := sn.b.tree.resolve(sn.apex, qname)
	r := sn.decide(m, qtype)
	limit := dns.MinMsgSize
	if edns {
		limit = min(max(clientSize, dns.MinMsgSize), s.opts.UDPSize)
	}
	truncated := sn.wireLen(r, len(qname), edns) > limit

	out = append(out, req[0], req[1])
	f1 := byte(0x80) | req[2]&0x01 // QR, RD copied
	if r.aa {
		f1 |= 0x04
	}
	if truncated {
		f1 |= 0x02
	}
	out = append(out, f1, req[3]&0x10|byte(r.rcode)) // CD copied
	out = append(out, 0, 1, 0, 0, 0, 0, 0, 0)
	out = append(out, req[12:end+4]...)
	var an, ns uint16
	if truncated {
		s.stats.truncated.Add(1)
	} else {
		if r.a != nil {
			out = appendRR(out, 0xc00c, dns.TypeA, sn.ttl, r.a.a[:])
			an++
		}
		if r.txt != nil {
			out = appendRRHeader(out, 0xc00c, dns.TypeTXT, sn.ttl, 1+len(r.txt.txt))
			out = append(out, byte(len(r.txt.txt)))
			out = append(out, r.txt.txt...)
			an++
		}
		if r.soa {
			out = appendRR(out, 0xc00c, dns.TypeSOA, sn.ttl, sn.soaRdata)
			an++
		}
		if r.ns {
			for _, rd := range sn.nsRdata {
				out = appendRR(out, 0xc00c, dns.TypeNS, sn.ttl, rd)
				an++
			}
		}
		if r.negSOA {
			out = appendRR(out, 0xc000|uint16(12+m.apexOff), dns.TypeSOA, sn.negTTL, sn.soaRdata)
			ns++
		}
		s.stats.count(r)
	}
	binary.BigEndian.PutUint16(out[6:], an)
	binary.BigEndian.PutUint16(out[8:], ns)
	if edns {
		var flags byte
		if do {
			flags = 0x80
		}
		out = append(out, 0, 0, byte(dns.TypeOPT), byte(s.opts.UDPSize>>8), byte(s.opts.UDPSize), 0, 0, flags, 0, 0, 0)
		binary.BigEndian.PutUint16(out[10:], 1)
	}
	return out, true
}

// nameEnd returns where the uncompressed name at off in msg ends (after
// its root label), for names of at most 255 octets.
func nameEnd(msg []byte, off int) (int, bool) {
	start := off
	for off < len(msg) {
		l := int(msg[off])
		switch {
		case l == 0:
			return off + 1, off+1-start <= 255
		case l > 63:
			return 0, false // a compression pointer or an extended label
		}
		off += 1 + l
	}
	return 0, false
}

func appendRRHeader(b []byte, owner uint16, rrtype uint16, ttl uint32, rdlen int) []byte {
	return append(b, byte(owner>>8), byte(owner), byte(rrtype>>8), byte(rrtype), 0, 1,
		byte(ttl>>24), byte(ttl>>16), byte(ttl>>8), byte(ttl), byte(rdlen>>8), byte(rdlen))
}

func appendRR(b []byte, owner uint16, rrtype uint16, ttl uint32, rdata []byte) []byte {
	b = appendRRHeader(b, owner, rrtype, ttl, len(rdata))
	return append(b, rdata...)
}

// slowAnswer parses the datagram with miekg/dns and answers with ServeDNS.
func (s *Server) slowAnswer(req []byte, from netip.AddrPort, local net.Addr, out []byte) []byte {
	var h dns.Header
	if len(req) < 12 {
		s.stats.dropped.Add(1)
		return nil
	}
	h.Id = binary.BigEndian.Uint16(req)
	h.Bits = binary.BigEndian.Uint16(req[2:])
	h.Qdcount = binary.BigEndian.Uint16(req[4:])
	h.Ancount = binary.BigEndian.Uint16(req[6:])
	h.Nscount = binary.BigEndian.Uint16(req[8:])
	h.Arcount = binary.BigEndian.Uint16(req[10:])
	formErr := func(rcode int) []byte {
		// The header alone, as miekg/dns's server answers: no echo of
		// what could not be read.
		s.stats.formErr.Add(1)
		return append(out, req[0], req[1], 0x80|req[2]&0x79, byte(rcode), 0, 0, 0, 0, 0, 0, 0, 0)
	}
	switch dns.DefaultMsgAcceptFunc(h) {
	case dns.MsgIgnore:
		s.stats.dropped.Add(1)
		return nil
	case dns.MsgReject:
		return formErr(dns.RcodeFormatError)
	case dns.MsgRejectNotImplemented:
		return formErr(dns.RcodeNotImplemented)
	}
	m := new(dns.Msg)
	if err := m.Unpack(req); err != nil {
		return formErr(dns.RcodeFormatError)
	}
	w := &udpWriter{local: local, remote: net.UDPAddrFromAddrPort(from), buf: out}
	if t := m.IsTsig(); t != nil && s.tsig != nil {
		w.tsig = s.tsig
		w.tsigStatus = dns.TsigVerifyWithProvider(req, s.tsig, "", false)
		w.requestMAC = t.MAC
	}
	s.ServeDNS(w, m)
	return w.resp
}

// udpWriter is the dns.ResponseWriter of one UDP query on the slow path.
type udpWriter struct {
	local, remote net.Addr
	buf, resp     []byte
	tsig          dns.TsigProvider
	tsigStatus    error
	requestMAC    string
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.local }
func (w *udpWriter) RemoteAddr() net.Addr { return w.remote }
func (w *udpWriter) TsigStatus() error    { return w.tsigStatus }
func (w *udpWriter) TsigTimersOnly(bool)  {}
func (w *udpWriter) Hijack()              {}
func (w *udpWriter) Close() error         { return nil }

func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	var (
		b   []byte
		err error
	)
	if m.IsTsig() != nil && w.tsig != nil {
		b, _, err = dns.TsigGenerateWithProvider(m, w.tsig, w.requestMAC, false)
	} else {
		b, err = m.PackBuffer(w.buf[:cap(w.buf)])
	}
	if err != nil {
		return err
	}
	w.resp = b
	return nil
}

func (w *udpWriter) Write(b []byte) (int, error) {
	w.resp = append(w.buf[:0], b...)
	return len(b), nil
}
