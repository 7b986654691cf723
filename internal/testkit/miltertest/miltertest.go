// Package miltertest negotiates with a milter as Postfix 3.x does and
// reads back what the milter took: the tests of blmilter's milter and the
// end-to-end tests (blmilter and the no-op milter it is measured against)
// compare negotiations with it. go-milter's client cannot: it refuses the
// version-2 reply with version-6 flags that milters send and Postfix
// accepts, and it does not show the macros asked for.
package miltertest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	gomilter "github.com/emersion/go-milter"
)

// What Postfix 3.x offers in its option negotiation: version 6, every
// action and every protocol step, "no reply" ones included.
const (
	PostfixVersion = 6
	PostfixActions = gomilter.OptAddHeader | gomilter.OptChangeBody | gomilter.OptAddRcpt | gomilter.OptRemoveRcpt |
		gomilter.OptChangeHeader | gomilter.OptQuarantine | gomilter.OptChangeFrom | gomilter.OptAddRcptWithArgs |
		gomilter.OptSetSymList
	PostfixProtocol = gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoMailFrom | gomilter.OptNoRcptTo |
		gomilter.OptNoBody | gomilter.OptNoHeaders | gomilter.OptNoEOH | gomilter.OptNoUnknown | gomilter.OptNoData |
		gomilter.OptSkip | gomilter.OptRcptRej | gomilter.OptNoHeaderReply | gomilter.OptNoConnReply |
		gomilter.OptNoHeloReply | gomilter.OptNoMailReply | gomilter.OptNoRcptReply | gomilter.OptNoDataReply |
		gomilter.OptNoUnknownReply | gomilter.OptNoEOHReply | gomilter.OptNoBodyReply | gomilter.OptHeaderLeadingSpace
)

// Negotiation is a milter's reply to the option negotiation.
type Negotiation struct {
	Version  uint32
	Actions  gomilter.OptAction
	Protocol gomilter.OptProtocol
	// Macros are the macros asked for per stage (SMFIF_SETSYMLIST), as
	// the milter wrote them: names separated by spaces.
	Macros map[gomilter.Stage]string
}

// Negotiate dials the milter at network, addr, offers what Postfix
// offers, and returns the milter's reply. The connection is closed after
// it.
func Negotiate(network, addr string) (Negotiation, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return Negotiation{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := binary.BigEndian.AppendUint32(nil, 13)
	req = append(req, byte(gomilter.CodeOptNeg))
	req = binary.BigEndian.AppendUint32(req, PostfixVersion)
	req = binary.BigEndian.AppendUint32(req, uint32(PostfixActions))
	req = binary.BigEndian.AppendUint32(req, uint32(PostfixProtocol))
	if _, err := c.Write(req); err != nil {
		return Negotiation{}, err
	}
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return Negotiation{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if hdr[4] != byte(gomilter.CodeOptNeg) || n < 13 || n > 1<<16 {
		return Negotiation{}, fmt.Errorf("reply to option negotiation: code %q length %d", hdr[4], n)
	}
	body := make([]byte, n-1)
	if _, err := io.ReadFull(c, body); err != nil {
		return Negotiation{}, err
	}
	return Parse(body)
}

// Parse reads the data of an option negotiation reply.
func Parse(body []byte) (Negotiation, error) {
	if len(body) < 12 {
		return Negotiation{}, fmt.Errorf("option negotiation reply of %d bytes", len(body))
	}
	neg := Negotiation{
		Version:  binary.BigEndian.Uint32(body),
		Actions:  gomilter.OptAction(binary.BigEndian.Uint32(body[4:])),
		Protocol: gomilter.OptProtocol(binary.BigEndian.Uint32(body[8:])),
		Macros:   map[gomilter.Stage]string{},
	}
	rest := body[12:]
	for len(rest) > 0 {
		if len(rest) < 5 {
			return neg, fmt.Errorf("macro list cut short: %q", rest)
		}
		stage := gomilter.Stage(binary.BigEndian.Uint32(rest))
		rest = rest[4:]
		end := 0
		for end < len(rest) && rest[end] != 0 {
			end++
		}
		if end == len(rest) {
			return neg, fmt.Errorf("macro list of stage %d without its NUL", stage)
		}
		if _, dup := neg.Macros[stage]; dup {
			return neg, fmt.Errorf("stage %d asked for twice", stage)
		}
		neg.Macros[stage] = string(rest[:end])
		rest = rest[end+1:]
	}
	return neg, nil
}
