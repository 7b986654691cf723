package policy_test

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
	"github.com/blmilter/blmilter/policy"
)

// A panic in the engine's DNS work ends neither the process nor the
// check: a lookup that panics is a list error (never a listing),
// a text fetch that panics leaves the decision recorded without the text,
// and each is counted and logged with its stack, one line a second at
// most.
func TestEnginePanicsRecovered(t *testing.T) {
	s := dnstest.Start(t)
	listed := netip.MustParseAddr("192.0.2.7")
	s.Set(qname(listed.String(), "zen.test"), dnstest.Answer{A: []string{"127.0.0.4"}, TXT: []string{"exploited host"}})
	var panics atomic.Int32
	logs := &testkit.Buffer{}
	rec := &recorder{}
	e := newEngine(t, s, zenConfig, policy.Deps{
		Recorder: rec,
		OnPanic:  func() { panics.Add(1) },
		Logger:   slog.New(slog.NewTextHandler(logs, nil)),
	})
	ctx := context.Background()
	v := e.Check(ctx, listed) // the mail path: the code, not the text
	if v.Action != policy.ActionReject {
		t.Fatalf("listed client: %+v", v)
	}

	e.BreakResolver()
	r := e.Reply(&v) // the text is fetched in the background, and panics
	e.FlushDecisions()
	if d := rec.all(); len(d) != 1 || d[0].Ref != r.Ref || d[0].Verdict.Hits[0].Reason != "" {
		t.Errorf("recorded %+v, want the decision without its text", d)
	}
	if n := panics.Load(); n != 1 {
		t.Errorf("%d panics counted after the text fetch, want 1", n)
	}

	v = e.Check(ctx, netip.MustParseAddr("192.0.2.8")) // a new client: its lookup panics
	if v.Action != policy.ActionAccept || len(v.Errors) != 1 || len(v.Hits) != 0 || !strings.Contains(v.Errors[0].Err, "panicked") {
		t.Errorf("check whose lookup panicked: %+v, want accept with one list error", v)
	}
	if n := panics.Load(); n != 2 {
		t.Errorf("%d panics counted, want 2", n)
	}
	log := logs.String()
	if !strings.Contains(log, "level=ERROR") || !strings.Contains(log, "panicked") || !strings.Contains(log, "goroutine") {
		t.Errorf("no panic with its stack in the log:\n%s", log)
	}
	if n := strings.Count(log, "level=ERROR"); n != 1 {
		t.Errorf("%d panic lines within a second, want 1:\n%s", n, log)
	}
}
