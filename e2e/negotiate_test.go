//go:build e2e

package e2e

import (
	"reflect"
	"testing"

	"github.com/emersion/go-milter"

	"github.com/blmilter/blmilter/internal/testkit/miltertest"
)

// Postfix leaves Nagle's algorithm on for its milter connections. A milter
// that negotiates "no reply" for a step lets Postfix send the next small
// command without waiting, and the session then stalls on a delayed ACK,
// about 40 ms each. blmilter must answer every step: this test offers
// everything Postfix 3.x offers and checks what the running binary takes.
//
// The no-op milter is the floor the load comparison measures blmilter
// against, so it must negotiate what blmilter negotiates by default:
// the same steps cost the same round trips. With spam traps or delist
// addresses blmilter takes the HELO stage too, and nothing more.
func TestMilterNegotiatesNoReplySteps(t *testing.T) {
	need(t, "rbldnsd")
	dns := startRbldnsd(t)
	const noReply = milter.OptNoHeaderReply | milter.OptNoConnReply | milter.OptNoHeloReply |
		milter.OptNoMailReply | milter.OptNoRcptReply | milter.OptNoDataReply |
		milter.OptNoUnknownReply | milter.OptNoEOHReply | milter.OptNoBodyReply

	negotiate := func(t *testing.T, what, addr string) miltertest.Negotiation {
		t.Helper()
		n, err := miltertest.Negotiate("tcp", addr)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if n.Protocol&noReply != 0 {
			t.Errorf("%s negotiated no-reply steps %#x (protocol %#x); Postfix would stall on delayed ACKs", what, uint32(n.Protocol&noReply), uint32(n.Protocol))
		}
		// The steps blmilter decides at must reach it.
		for _, step := range []milter.OptProtocol{milter.OptNoConnect, milter.OptNoMailFrom, milter.OptNoRcptTo} {
			if n.Protocol&step != 0 {
				t.Errorf("%s skips a step blmilter decides at: %#x", what, uint32(step))
			}
		}
		return n
	}

	plain := negotiate(t, "blmilter", startBlmilter(t, blmilterOpts{DNS: dns, NoPolicyd: true}).Milter)
	if plain.Protocol&milter.OptNoHelo == 0 {
		t.Errorf("blmilter without traps takes the HELO stage: protocol %#x", uint32(plain.Protocol))
	}
	if noop := negotiate(t, "the no-op milter", startNoopMilter(t).addr); !reflect.DeepEqual(noop, plain) {
		t.Errorf("the no-op milter negotiates %+v\nblmilter                     %+v", noop, plain)
	}

	traps := negotiate(t, "blmilter with traps", startBlmilter(t, blmilterOpts{DNS: dns, NoPolicyd: true,
		WebExtra: `delist_domain = "e2e.test"`, Extra: evidenceTOML}).Milter)
	want := plain
	want.Protocol &^= milter.OptNoHelo
	want.Actions |= milter.OptRemoveRcpt
	want.Macros = map[milter.Stage]string{milter.StageHelo: "{tls_version} {cipher}"}
	for st, m := range plain.Macros {
		want.Macros[st] = m
	}
	if !reflect.DeepEqual(traps, want) {
		t.Errorf("blmilter with traps and delist addresses negotiates %+v\nwant %+v", traps, want)
	}
}
