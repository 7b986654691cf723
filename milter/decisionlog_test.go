package milter

import (
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
