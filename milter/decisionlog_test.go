package milter

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/policy"
)

func TestDecisionLogKeepsEveryLine(t *testing.T) {
	var buf testkit.Buffer
	l := newDecisionLog(slog.New(slog.NewTextHandler(&buf, nil)))
	v := policy.Verdict{IP: netip.MustParseAddr("192.0.2.7"), Action: policy.ActionReject, Score: 3, Threshold: 3}
	l.log(decisionLine{when: time.Now(), verdict: v, stage: "rcpt"}) // before start: written at once
	l.start()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// More than the queue holds: the rest is written by the callers.
			for i := 0; i < 200; i++ {
				l.log(decisionLine{when: time.Now(), verdict: v, stage: "rcpt", queueID: "Q1"})
			}
		}()
	}
	wg.Wait()
	l.stop()
	l.log(decisionLine{when: time.Now(), verdict: v, stage: "connect"}) // after stop: written at once
	l.stop()
	got := strings.Count(buf.String(), "msg=\"milter decision\"")
	if got != 1+8*200+1 {
		t.Fatalf("%d lines logged, want %d", got, 1+8*200+1)
	}
	if !strings.Contains(buf.String(), "ip=192.0.2.7 action=reject score=3") || !strings.Contains(buf.String(), "stage=rcpt queue_id=Q1") {
		t.Fatalf("line fields:\n%s", buf.String()[:200])
	}
}

// panickyHandler fails on the lines about one IP, as a broken handler would.
type panickyHandler struct {
	slog.Handler
	ip string
}

func (h panickyHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "ip" && a.Value.String() == h.ip {
			panic("handler failed")
		}
		return true
	})
	return h.Handler.Handle(ctx, r)
}

func TestDecisionLogSurvivesAPanickingHandler(t *testing.T) {
	var buf testkit.Buffer
	l := newDecisionLog(slog.New(panickyHandler{slog.NewTextHandler(&buf, nil), "192.0.2.66"}))
	l.start()
	for _, ip := range []string{"192.0.2.1", "192.0.2.66", "192.0.2.2"} {
		l.log(decisionLine{when: time.Now(), verdict: policy.Verdict{IP: netip.MustParseAddr(ip), Action: policy.ActionAccept}, stage: "rcpt"})
	}
	l.stop()
	if got := strings.Count(buf.String(), "milter decision"); got != 2 || !strings.Contains(buf.String(), "ip=192.0.2.2") {
		t.Fatalf("%d lines, want the 2 the handler could write:\n%s", got, buf.String())
	}
}
