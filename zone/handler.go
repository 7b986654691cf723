package zone

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"hash"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ServeDNS answers one parsed message: every query over TCP, and those the
// UDP fast path leaves (TSIG, transfers, other opcodes, odd packets). A
// panic ends this query only: it is counted and logged, and nothing is
// sent.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	defer func() {
		if p := recover(); p != nil {
			s.recovered(p, w.RemoteAddr().String())
		}
	}()
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	if tcp {
		s.stats.tcpQueries.Add(1)
	}
	if req.Response {
		s.stats.dropped.Add(1)
		return
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Compress = true
	resp.RecursionAvailable = false
	resp.CheckingDisabled = req.CheckingDisabled
	opt := req.IsEdns0()
	if opt != nil {
		resp.SetEdns0(uint16(s.opts.UDPSize), opt.Do())
	}
	tsig := req.IsTsig()
	if tsig != nil {
		err := w.TsigStatus()
		if s.opts.TSIG == nil {
			err = dns.ErrSecret // no key configured, so none is known
		}
		if err != nil {
			s.stats.tsigRefused.Add(1)
			level := slog.LevelWarn
			if !tcp {
				level = slog.LevelDebug // a forged source could flood the log
			}
			s.log.Log(context.Background(), level, "refused a query with a bad TSIG", "remote", w.RemoteAddr().String(), "key", tsig.Hdr.Name, "err", err)
			s.writeTSIGError(w, resp, tsig, err)
			return
		}
		// Answers to a signed query are signed (RFC 8945 section 5.3).
		resp.SetTsig(tsig.Hdr.Name, tsig.Algorithm, 300, time.Now().Unix())
	}
	switch {
	case req.Opcode != dns.OpcodeQuery:
		resp.Rcode = dns.RcodeNotImplemented
		resp.Question = nil
		s.write(w, resp, tcp, opt)
		return
	case len(req.Question) != 1:
		resp.Rcode = dns.RcodeFormatError
		s.write(w, resp, tcp, opt)
		return
	case opt != nil && opt.Version() != 0:
		resp.Rcode = dns.RcodeBadVers
		s.write(w, resp, tcp, opt)
		return
	}
	q := req.Question[0]
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		resp.Rcode = dns.RcodeRefused
		s.write(w, resp, tcp, opt)
		return
	}
	sn := s.snap.Load()
	if sn == nil {
		// Not loaded yet: no answer is better than a wrong one.
		resp.Rcode = dns.RcodeServerFailure
		s.write(w, resp, tcp, opt)
		return
	}
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		s.transfer(w, req, resp, sn, tcp, opt)
		return
	case dns.TypeMAILA, dns.TypeMAILB:
		resp.Rcode = dns.RcodeNotImplemented
		s.write(w, resp, tcp, opt)
		return
	}
	var wire [256]byte
	n, err := dns.PackDomainName(q.Name, wire[:], 0, nil, false)
	if err != nil {
		resp.Rcode = dns.RcodeFormatError
		s.write(w, resp, tcp, opt)
		return
	}
	m := sn.b.tree.resolve(sn.apex, wire[:n])
	r := sn.decide(m, q.Qtype)
	apexOwner := sn.apex.name
	if m.rcode != dns.RcodeRefused {
		if name, _, err := dns.UnpackDomainName(wire[:n], m.apexOff); err == nil {
			apexOwner = name
		}
	}
	if !tcp && tsig == nil && sn.wireLen(r, n, opt != nil) > udpLimit(opt, s.opts.UDPSize) {
		s.stats.truncated.Add(1)
		resp.Truncated = true
		resp.Authoritative = r.aa
		resp.Rcode = r.rcode
		s.write(w, resp, tcp, opt)
		return
	}
	sn.fill(resp, r, q.Name, apexOwner)
	s.stats.count(r)
	s.write(w, resp, tcp, opt)
}

// recovered counts and logs a panic that ended one query: the client gets
// no answer, the server goes on.
func (s *Server) recovered(p any, remote string) {
	s.stats.panics.Add(1)
	if s.opts.OnPanic != nil {
		s.opts.OnPanic()
	}
	s.log.Error("panic answering a query; the query is dropped", "panic", p, "remote", remote, "stack", string(debug.Stack()))
}

// udpLimit is the largest UDP answer a client takes: its EDNS size
// (RFC 6891: at least 512), at most ours; 512 without EDNS.
func udpLimit(opt *dns.OPT, ours int) int {
	if opt == nil {
		return dns.MinMsgSize
	}
	return min(max(int(opt.UDPSize()), dns.MinMsgSize), ours)
}

func (s *Server) write(w dns.ResponseWriter, resp *dns.Msg, tcp bool, opt *dns.OPT) {
	if !tcp && resp.IsTsig() != nil {
		// A signed answer cannot be cut afterwards; one that does not fit
		// goes out empty, truncated.
		if resp.Len() > udpLimit(opt, s.opts.UDPSize) {
			resp.Answer, resp.Ns = nil, nil
			resp.Truncated = true
			s.stats.truncated.Add(1)
		}
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("writing an answer", "remote", w.RemoteAddr().String(), "err", err)
	}
}

// writeTSIGError answers a query whose TSIG failed (RFC 8945 section 5.2):
// NOTAUTH with the TSIG error, unsigned unless only the time was off.
func (s *Server) writeTSIGError(w dns.ResponseWriter, resp *dns.Msg, tsig *dns.TSIG, err error) {
	resp.Rcode = dns.RcodeNotAuth
	resp.Answer, resp.Ns = nil, nil
	t := &dns.TSIG{
		Hdr:       dns.RR_Header{Name: tsig.Hdr.Name, Rrtype: dns.TypeTSIG, Class: dns.ClassANY},
		Algorithm: tsig.Algorithm,
		Fudge:     300,
		OrigId:    resp.Id,
	}
	switch {
	case errors.Is(err, dns.ErrTime):
		t.Error = dns.RcodeBadTime
		t.TimeSigned = uint64(time.Now().Unix())
	case errors.Is(err, dns.ErrSecret) || errors.Is(err, dns.ErrKeyAlg):
		t.Error = dns.RcodeBadKey
	default:
		t.Error = dns.RcodeBadSig
	}
	resp.Extra = append(resp.Extra, t)
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("writing a TSIG error", "remote", w.RemoteAddr().String(), "err", err)
	}
}

// remoteAddr is the client's address without port.
func remoteAddr(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// tsigKey is the configured key as a miekg/dns TsigProvider: it knows one
// key, by name in any case, with one algorithm.
type tsigKey struct{ k *TSIG }

func (p tsigKey) check(t *dns.TSIG) error {
	if !strings.EqualFold(dns.Fqdn(t.Hdr.Name), p.k.Name) {
		return dns.ErrSecret
	}
	if !strings.EqualFold(dns.Fqdn(t.Algorithm), p.k.Algorithm) {
		return dns.ErrKeyAlg
	}
	return nil
}

func (p tsigKey) mac() hash.Hash {
	switch p.k.Algorithm {
	case dns.HmacSHA1:
		return hmac.New(sha1.New, p.k.Secret)
	case dns.HmacSHA224:
		return hmac.New(sha256.New224, p.k.Secret)
	case dns.HmacSHA384:
		return hmac.New(sha512.New384, p.k.Secret)
	case dns.HmacSHA512:
		return hmac.New(sha512.New, p.k.Secret)
	}
	return hmac.New(sha256.New, p.k.Secret)
}

func (p tsigKey) Generate(msg []byte, t *dns.TSIG) ([]byte, error) {
	if err := p.check(t); err != nil {
		return nil, err
	}
	h := p.mac()
	h.Write(msg)
	return h.Sum(nil), nil
}

func (p tsigKey) Verify(msg []byte, t *dns.TSIG) error {
	if err := p.check(t); err != nil {
		return err
	}
	want, err := p.Generate(msg, t)
	if err != nil {
		return err
	}
	got, err := hex.DecodeString(t.MAC)
	if err != nil || !hmac.Equal(got, want) {
		return dns.ErrSig
	}
	return nil
}
