package milter

import (
	"context"
	"fmt"
	"strings"

	"github.com/blmilter/blmilter/traps"
)

// trapRecipient answers rcpt when it is a spam trap or a delist address
// and reports whether it did. A trap gets the reply of a dead address
// whoever sends, and its hit lists the client unless it is one never
// listed; the verdict of this session stays as it was, so its other
// recipients are judged as before. A delist address from the listed
// client itself removes the listing: the recipient is accepted and
// dropped at end of message. A delist address that proves nothing is
// answered as any recipient when the client is refused anyway, else as a
// dead address.
func (c *conn) trapRecipient(rcpt []byte) bool {
	s := &c.session
	t := s.traps
	kind, token := t.Classify(string(rcpt))
	if kind == traps.Ordinary {
		return false
	}
	s.awaitVerdict()
	sess := traps.Session{
		IP: s.verdict.IP, HELO: s.helo, MailFrom: s.mailFrom, QueueID: s.queueID,
		ClientName: s.clientName, TLS: s.tls, Authenticated: s.auth, Verdict: s.verdict,
	}
	switch kind {
	case traps.Trap:
		t.Hit(context.Background(), sess, string(rcpt))
		c.out = appendStringsPacket(c.out, respReplyCode, fmt.Sprintf("%d %s %s", traps.TrapCode, traps.TrapEnhanced, traps.TrapText))
		return true
	default:
		res := t.Delist(context.Background(), sess, token)
		if traps.Accepts(res) {
			if r := strings.Trim(string(rcpt), "<>"); len(r) <= maxEvidence {
				s.delistRcpts = append(s.delistRcpts, r)
			}
			c.out = append(c.out, continuePacket...)
			return true
		}
		if s.verdict.Action.Applies() && !s.auth {
			return false // the listing's own reply, with its link
		}
		c.out = appendStringsPacket(c.out, respReplyCode, fmt.Sprintf("%d %s %s", traps.DelistCode, traps.TrapEnhanced, traps.DelistText))
		return true
	}
}
