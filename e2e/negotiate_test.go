//go:build e2e

package e2e

import (
	be "encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-milter"
)

// Postfix leaves Nagle's algorithm on for its milter connections. A milter
// that negotiates "no reply" for a step lets Postfix send the next small
// command without waiting, and the session then stalls on a delayed ACK,
// about 40 ms each. blmilter must answer every step: this test offers
// everything Postfix 3.x offers and checks what the running binary takes.
func TestMilterNegotiatesNoReplySteps(t *testing.T) {
	need(t, "rbldnsd")
	dns := startRbldnsd(t)
	b := startBlmilter(t, blmilterOpts{DNS: dns, NoPolicyd: true})

	const offered = milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo |
		milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH | milter.OptNoUnknown | milter.OptNoData |
		milter.OptSkip | milter.OptRcptRej | milter.OptNoHeaderReply | milter.OptNoConnReply |
		milter.OptNoHeloReply | milter.OptNoMailReply | milter.OptNoRcptReply | milter.OptNoDataReply |
		milter.OptNoUnknownReply | milter.OptNoEOHReply | milter.OptNoBodyReply | milter.OptHeaderLeadingSpace
	const noReply = milter.OptNoHeaderReply | milter.OptNoConnReply | milter.OptNoHeloReply |
		milter.OptNoMailReply | milter.OptNoRcptReply | milter.OptNoDataReply |
		milter.OptNoUnknownReply | milter.OptNoEOHReply | milter.OptNoBodyReply

	// Negotiate by hand, as Postfix does: go-milter's client refuses the
	// version-2 reply with version-6 flags that go-milter's server sends
	// (and Postfix accepts).
	conn, err := net.DialTimeout("tcp", b.Milter, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	req := make([]byte, 4+1+12)
	be.BigEndian.PutUint32(req, 13)
	req[4] = 'O'
	be.BigEndian.PutUint32(req[5:], 6)
	be.BigEndian.PutUint32(req[9:], uint32(milter.OptAddHeader|milter.OptChangeHeader|milter.OptSetSymList))
	be.BigEndian.PutUint32(req[13:], uint32(offered))
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	var hdr [5]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		t.Fatal(err)
	}
	n := be.BigEndian.Uint32(hdr[:4])
	if hdr[4] != 'O' || n < 13 || n > 1<<16 {
		t.Fatalf("reply to option negotiation: code %q length %d", hdr[4], n)
	}
	body := make([]byte, n-1)
	if _, err := io.ReadFull(conn, body); err != nil {
		t.Fatal(err)
	}
	got := milter.OptProtocol(be.BigEndian.Uint32(body[8:12]))
	if got&noReply != 0 {
		t.Errorf("blmilter negotiated no-reply steps %#x (protocol %#x); Postfix would stall on delayed ACKs", uint32(got&noReply), uint32(got))
	}
	// The steps blmilter decides at must reach it.
	for _, step := range []milter.OptProtocol{milter.OptNoConnect, milter.OptNoRcptTo} {
		if got&step != 0 {
			t.Errorf("blmilter skips a step it decides at: %#x", uint32(step))
		}
	}
}
