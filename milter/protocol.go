package milter

import (
	"bytes"
	"encoding/binary"
	"maps"
	"net/netip"
	"slices"
	"strings"

	gomilter "github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/traps"
)

// The milter protocol, as Sendmail's libmilter and Postfix speak it: each
// packet is a 4-byte big-endian length, then a command byte and length-1
// bytes of data.

// Commands from the MTA.
const (
	cmdAbort   = 'A' // SMFIC_ABORT: the message transaction ends; no reply
	cmdBody    = 'B' // SMFIC_BODY: a body chunk
	cmdConnect = 'C' // SMFIC_CONNECT: host\0 family [port addr\0]
	cmdMacro   = 'D' // SMFIC_MACRO: command, then name\0value\0 pairs; no reply
	cmdEOB     = 'E' // SMFIC_BODYEOB: end of message
	cmdHelo    = 'H' // SMFIC_HELO
	cmdQuitNC  = 'K' // SMFIC_QUIT_NC: the SMTP session ends, another follows; no reply
	cmdHeader  = 'L' // SMFIC_HEADER
	cmdMail    = 'M' // SMFIC_MAIL
	cmdEOH     = 'N' // SMFIC_EOH: end of headers
	cmdOptNeg  = 'O' // SMFIC_OPTNEG: version, actions, protocol flags
	cmdQuit    = 'Q' // SMFIC_QUIT: the connection ends
	cmdRcpt    = 'R' // SMFIC_RCPT
	cmdData    = 'T' // SMFIC_DATA
	cmdUnknown = 'U' // SMFIC_UNKNOWN: an SMTP command the MTA does not know
)

// Replies to the MTA.
const (
	respAccept    = byte(gomilter.ActAccept)    // SMFIR_ACCEPT: stop filtering this SMTP session
	respContinue  = byte(gomilter.ActContinue)  // SMFIR_CONTINUE
	respReplyCode = byte(gomilter.ActReplyCode) // SMFIR_REPLYCODE: "550 5.7.1 text\0"
	respAddHeader = byte(gomilter.ActAddHeader) // SMFIR_ADDHEADER: name\0value\0
	respDelRcpt   = byte(gomilter.ActDelRcpt)   // SMFIR_DELRCPT: "<rcpt>"\0
	respDiscard   = byte(gomilter.ActDiscard)   // SMFIR_DISCARD: accept the message and drop it
	respOptNeg    = byte(gomilter.CodeOptNeg)   // option negotiation
)

// Packet sizes. An envelope command is a few hundred bytes and Postfix
// sends body chunks of at most 64 KiB, so a larger packet is not an MTA
// speaking the protocol. Content is dropped through the read buffer
// whatever its size; the bound on it only ends nonsense sooner.
const (
	headerLen     = 5        // length and command byte
	optNegDataLen = 12       // version, actions, protocol flags
	minMTAVersion = 2        // libmilter's oldest protocol version
	maxParsedData = 64 << 10 // data of a command blmilter reads
	maxSkipData   = 64 << 20 // data of a command blmilter drops unread
)

// packetKind says how a command's data is read.
type packetKind uint8

const (
	kindInvalid packetKind = iota // not a milter command
	kindParsed                    // read whole, at most maxParsedData bytes
	kindEmpty                     // no data at all
	kindSkipped                   // message content and the like: dropped as it arrives
)

var packetKinds = func() (k [256]packetKind) {
	for _, c := range []byte{cmdOptNeg, cmdMacro, cmdConnect, cmdHelo, cmdMail, cmdRcpt} {
		k[c] = kindParsed
	}
	for _, c := range []byte{cmdAbort, cmdQuit, cmdQuitNC} {
		k[c] = kindEmpty
	}
	// blmilter negotiates none of these but end of message, and reads
	// nothing in any of them: Sendmail may send the last body chunk with
	// end of message, and an MTA may send what it was asked not to.
	for _, c := range []byte{cmdData, cmdHeader, cmdEOH, cmdBody, cmdEOB, cmdUnknown} {
		k[c] = kindSkipped
	}
	return k
}()

// Negotiated with the MTA. AddHeader is needed for action = "tag";
// SetSymList asks for the few macros blmilter reads.
//
// The protocol flags skip the stages blmilter has no use for, HELO among
// them unless spam traps or delist addresses read it (see negotiation):
// each stage costs a round trip per SMTP session. No "no reply" flag
// (SMFIP_NR_*) is ever set: Postfix leaves Nagle's algorithm on for its
// milter sockets, and an MTA that sends a command without waiting for a
// reply and then another small one stalls on the peer's delayed ACK (about
// 40 ms per session on Linux). Replying to every command costs a round trip
// on loopback and avoids that.
const (
	milterActions  = gomilter.OptAddHeader | gomilter.OptSetSymList
	milterProtocol = gomilter.OptNoHelo | gomilter.OptNoHeaders | gomilter.OptNoEOH |
		gomilter.OptNoBody | gomilter.OptNoUnknown | gomilter.OptNoData
)

// milterVersion is the protocol version blmilter answers with. Postfix and
// Sendmail both take the version-6 flags above with it (the end-to-end
// tests run both), and the commands blmilter reads are the same in all
// versions.
const milterVersion = 2

// noReplyFlags are the protocol flags blmilter must never negotiate.
const noReplyFlags = gomilter.OptNoHeaderReply | gomilter.OptNoConnReply | gomilter.OptNoHeloReply |
	gomilter.OptNoMailReply | gomilter.OptNoRcptReply | gomilter.OptNoDataReply |
	gomilter.OptNoUnknownReply | gomilter.OptNoEOHReply | gomilter.OptNoBodyReply

// symList is the macros blmilter reads, per stage. An MTA that honours it
// (Postfix, Sendmail 8.14+) sends only these; the MTA defaults carry them too.
var symList = map[gomilter.Stage][]string{
	gomilter.StageConnect:  {"{client_addr}", "_"},
	gomilter.StageMailFrom: {"i", "{auth_authen}"},
	gomilter.StageRcptTo:   {"i"},
	gomilter.StageEOM:      {"i"},
}

// heloMacros are read with HELO when it is negotiated: the TLS of the
// session, for the evidence.
var heloMacros = []string{"{tls_version}", "{cipher}"}

// negotiation is what blmilter asks of the MTA beyond the base above. A
// spam trap hit and a proof of control keep the name the client gave at
// HELO and its TLS, so with traps or a delist domain the HELO stage and
// its macros are wanted; a delist address is dropped from a message that
// has other recipients, which needs SMFIF_DELRCPT.
type negotiation struct {
	helo    bool
	delRcpt bool
}

// negotiationFor is what the traps t (nil: none) need.
func negotiationFor(t *traps.Traps) negotiation {
	return negotiation{helo: t != nil, delRcpt: t.DelistDomain() != ""}
}

// optNegReplies are the option negotiation reply packets, made once.
var optNegReplies = func() map[negotiation][]byte {
	r := map[negotiation][]byte{}
	for _, helo := range []bool{false, true} {
		for _, delRcpt := range []bool{false, true} {
			n := negotiation{helo, delRcpt}
			r[n] = n.reply()
		}
	}
	return r
}()

func (n negotiation) options() (gomilter.OptAction, gomilter.OptProtocol, map[gomilter.Stage][]string) {
	actions, protocol, syms := milterActions, milterProtocol, maps.Clone(symList)
	if n.helo {
		protocol &^= gomilter.OptNoHelo
		syms[gomilter.StageHelo] = heloMacros
	}
	if n.delRcpt {
		actions |= gomilter.OptRemoveRcpt
	}
	return actions, protocol, syms
}

// reply is the whole option negotiation reply packet of n.
func (n negotiation) reply() []byte {
	actions, protocol, syms := n.options()
	data := binary.BigEndian.AppendUint32(nil, milterVersion)
	data = binary.BigEndian.AppendUint32(data, uint32(actions))
	data = binary.BigEndian.AppendUint32(data, uint32(protocol))
	stages := slices.Sorted(maps.Keys(syms))
	for _, st := range stages {
		data = binary.BigEndian.AppendUint32(data, uint32(st))
		data = append(data, strings.Join(syms[st], " ")...)
		data = append(data, 0)
	}
	return appendPacket(nil, respOptNeg, data)
}

// Replies without data, whole packets.
var (
	continuePacket = appendPacket(nil, respContinue, nil)
	acceptPacket   = appendPacket(nil, respAccept, nil)
	discardPacket  = appendPacket(nil, respDiscard, nil)
)

func appendPacket(b []byte, code byte, data []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)+1))
	b = append(b, code)
	return append(b, data...)
}

// appendStringsPacket appends a packet whose data is the NUL-terminated
// strings ss.
func appendStringsPacket(b []byte, code byte, ss ...string) []byte {
	n := 1
	for _, s := range ss {
		n += len(s) + 1
	}
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = append(b, code)
	for _, s := range ss {
		b = append(b, s...)
		b = append(b, 0)
	}
	return b
}

// cstring returns b up to its first NUL, and what follows the NUL; ok is
// false when b has no NUL.
func cstring(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return b, nil, false
	}
	return b[:i], b[i+1:], true
}

// connectInfo is the data of a CONNECT command. The slices point into the
// read buffer: valid until the next packet is read.
type connectInfo struct {
	host   []byte
	family byte // gomilter.Family*: '4', '6', 'L' (unix), 'U' (unknown)
	addr   []byte
}

// parseConnect parses "host\0 family [port(2) address\0]". The address may
// lack its NUL; a unix-socket or unknown client's rest is not read.
func parseConnect(data []byte) (connectInfo, bool) {
	host, rest, ok := cstring(data)
	if !ok || len(rest) < 1 {
		return connectInfo{}, false
	}
	ci := connectInfo{host: host, family: rest[0]}
	rest = rest[1:]
	if ci.family == byte(gomilter.FamilyInet) || ci.family == byte(gomilter.FamilyInet6) {
		if len(rest) < 2 {
			return connectInfo{}, false
		}
		ci.addr, _, _ = cstring(rest[2:])
	}
	return ci, true
}

// Macro stages blmilter keeps: the macros sent for a command are read when
// that command comes.
const (
	stageConnect = iota
	stageHelo
	stageMail
	stageRcpt
	stageEOM
	stageCount
)

func macroStage(cmd byte) int {
	switch cmd {
	case cmdConnect:
		return stageConnect
	case cmdHelo:
		return stageHelo
	case cmdMail:
		return stageMail
	case cmdRcpt:
		return stageRcpt
	case cmdEOB:
		return stageEOM
	}
	return -1
}

// stageMacros are the macros blmilter reads, as the MTA last sent them for
// one command. Each MACRO packet replaces the whole set for its command.
type stageMacros struct {
	set        bool // a MACRO packet came for the command and is not used yet
	clientAddr string
	underscore string
	queueID    string
	authAuthen string
	tlsVersion string
	cipher     string
}

// assign keeps s as *dst, reusing the string already there when it is the
// same (the queue ID is sent again and again), so that most macro packets
// do not allocate.
func assign(dst *string, b []byte) {
	if string(b) != *dst {
		*dst = string(b)
	}
}

// setMacros reads the name\0value\0 pairs of a MACRO packet. Names are
// matched with or without braces, as libmilter does ("i" and "{i}").
func (m *stageMacros) setMacros(pairs []byte) {
	var seen [6]bool
	for len(pairs) > 0 {
		var name, value []byte
		name, pairs, _ = cstring(pairs)
		value, pairs, _ = cstring(pairs)
		if len(name) > 2 && name[0] == '{' && name[len(name)-1] == '}' {
			name = name[1 : len(name)-1]
		}
		switch string(name) {
		case "client_addr":
			assign(&m.clientAddr, value)
			seen[0] = true
		case "_":
			assign(&m.underscore, value)
			seen[1] = true
		case "i":
			assign(&m.queueID, value)
			seen[2] = true
		case "auth_authen":
			assign(&m.authAuthen, value)
			seen[3] = true
		case "tls_version":
			assign(&m.tlsVersion, value)
			seen[4] = true
		case "cipher":
			assign(&m.cipher, value)
			seen[5] = true
		}
	}
	for i, p := range []*string{&m.clientAddr, &m.underscore, &m.queueID, &m.authAuthen, &m.tlsVersion, &m.cipher} {
		if !seen[i] {
			*p = ""
		}
	}
	m.set = true
}

// clientIP finds the SMTP client's address: the connect command's address
// for IPv4 and IPv6 clients, else the {client_addr} macro, the "[addr]"
// host name the MTA uses when the client has no name, or the "_" macro
// ("name [addr]"). Sendmail writes IPv6 addresses as "IPv6:2001:db8::1".
// Unix-socket and unknown clients have no address to look up.
func clientIP(ci connectInfo, m *stageMacros) (netip.Addr, bool) {
	if ci.family == byte(gomilter.FamilyUnix) {
		return netip.Addr{}, false
	}
	if len(ci.addr) > 0 {
		if a, ok := parseAddr(string(ci.addr)); ok {
			return a, true
		}
	}
	if m.set {
		if a, ok := parseAddr(m.clientAddr); ok {
			return a, true
		}
	}
	if len(ci.host) > 0 && ci.host[0] == '[' {
		if a, ok := parseAddr(string(ci.host)); ok {
			return a, true
		}
	}
	if m.set && m.underscore != "" {
		if i := strings.LastIndexByte(m.underscore, '['); i >= 0 {
			if a, ok := parseAddr(m.underscore[i:]); ok {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// parseAddr parses "192.0.2.1", "[192.0.2.1]", "IPv6:2001:db8::1" and
// "[IPv6:2001:db8::1]".
func parseAddr(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		s = s[1:end]
	}
	if len(s) > 5 && strings.EqualFold(s[:5], "IPv6:") {
		s = s[5:]
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
