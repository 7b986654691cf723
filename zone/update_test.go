package zone

import (
	"encoding/base64"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/internal/testkit"
)

func TestNextSerial(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	for _, tt := range []struct {
		name string
		prev uint32
		want uint32
	}{
		{"fresh: the clock", 0, 1_800_000_000},
		{"behind the clock: the clock", 1_700_000_000, 1_800_000_000},
		{"at the clock: one more", 1_800_000_000, 1_800_000_001},
		{"ahead of the clock: one more", 1_800_000_500, 1_800_000_501},
		// A date-style serial (2026120101) is after the clock in serial
		// arithmetic: it keeps counting.
		{"date-style serial", 2026120101, 2026120102},
		{"wraps past the top", 1<<32 - 1, 1_800_000_000},
	} {
		if got := nextSerial(tt.prev, clock); got != tt.want {
			t.Errorf("%s: nextSerial(%d) = %d, want %d", tt.name, tt.prev, got, tt.want)
		}
		if got := nextSerial(tt.prev, clock); !serialAfter(got, tt.prev) {
			t.Errorf("%s: %d is not after %d", tt.name, got, tt.prev)
		}
	}
}

func TestSerialMovesOnlyOnChange(t *testing.T) {
	type saved struct {
		serial uint32
		digest string
	}
	var (
		mu    sync.Mutex
		calls []saved
	)
	opts := testOptions()
	opts.OnSerial = func(serial uint32, digest string) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, saved{serial, digest})
		return nil
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s1, changed := s.Update(serverListings)
	if !changed || s1 == 0 {
		t.Fatalf("first Update: serial %d, changed %v", s1, changed)
	}
	// The same listings in another order: nothing changes.
	rev := slices.Clone(serverListings)
	slices.Reverse(rev)
	if s2, changed := s.Update(rev); changed || s2 != s1 {
		t.Errorf("same listings: serial %d (was %d), changed %v", s2, s1, changed)
	}
	// A changed reason changes the TXT.
	ls := slices.Clone(serverListings)
	ls[0].Reason = "another reason"
	s3, changed := s.Update(ls)
	if !changed || !serialAfter(s3, s1) {
		t.Errorf("changed listing: serial %d after %d, changed %v", s3, s1, changed)
	}
	mu.Lock()
	if len(calls) != 2 || calls[0].serial != s1 || calls[1].serial != s3 || calls[0].digest == calls[1].digest {
		t.Errorf("OnSerial calls %v, want %d and %d with different digests", calls, s1, s3)
	}
	last := calls[len(calls)-1]
	mu.Unlock()

	// A restart with what was saved and the same listings keeps the
	// serial and saves nothing.
	opts2 := opts
	opts2.Serial, opts2.Digest = last.serial, last.digest
	calls = nil
	s4, err := New(opts2)
	if err != nil {
		t.Fatal(err)
	}
	if serial, _ := s4.Update(ls); serial != s3 {
		t.Errorf("restart with the same content: serial %d, want %d", serial, s3)
	}
	if len(calls) != 0 {
		t.Errorf("restart with the same content saved %v", calls)
	}
	// A restart with other content moves on from the saved serial.
	s5, err := New(opts2)
	if err != nil {
		t.Fatal(err)
	}
	if serial, _ := s5.Update(serverListings); !serialAfter(serial, s3) {
		t.Errorf("restart with other content: serial %d, not after %d", serial, s3)
	}
	if len(calls) != 1 {
		t.Errorf("restart with other content: %d saves, want 1", len(calls))
	}
}

func TestOnSerialErrorStillServes(t *testing.T) {
	opts := testOptions()
	opts.OnSerial = func(uint32, string) error { return errors.New("disk full") }
	ts := startServer(t, opts, serverListings)
	ts.Update(append(slices.Clone(serverListings), Listing{Prefix: netip.MustParsePrefix("203.0.113.9/32"), Category: "zombie"}))
	if r := ask(t, ts.addr, "udp", "9.113.0.203.bl.example.org.", dns.TypeA); dnstest.AnswerA(r) != "127.0.0.4" {
		t.Errorf("the change is not served: %v", r)
	}
	if !strings.Contains(ts.log.String(), "saving the zone's serial") {
		t.Error("the failed save is not logged")
	}
}

func TestExpiryWithoutUpdate(t *testing.T) {
	ts := startServer(t, testOptions(), nil)
	soon := time.Now().Add(400 * time.Millisecond)
	ls := append(slices.Clone(serverListings),
		Listing{Prefix: netip.MustParsePrefix("203.0.113.9/32"), Category: "zombie", Expires: soon},
		Listing{Prefix: netip.MustParsePrefix("203.0.113.10/32"), Category: "zombie", Expires: time.Now().Add(-time.Second)},
	)
	serial, _ := ts.Update(ls)
	const name = "9.113.0.203.bl.example.org."
	if r := ask(t, ts.addr, "udp", name, dns.TypeA); dnstest.AnswerA(r) != "127.0.0.4" {
		t.Fatalf("before its expiry: %v", r)
	}
	if r := ask(t, ts.addr, "udp", "10.113.0.203.bl.example.org.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("a listing given already expired is served: %v", r)
	}
	time.Sleep(time.Until(soon))
	testkit.WaitFor(t, "the expired listing to go", 5*time.Second, func() error {
		r := ask(t, ts.addr, "udp", name, dns.TypeA)
		return testkit.Unless(r.Rcode == dns.RcodeNameError, "rcode %s", dns.RcodeToString[r.Rcode])
	})
	if late := time.Since(soon); late > time.Second {
		t.Errorf("served %v after its expiry", late)
	}
	if !serialAfter(ts.Serial(), serial) {
		t.Errorf("serial %d after the expiry, was %d", ts.Serial(), serial)
	}
}

// notifyReceiver is a secondary's NOTIFY port that answers only from the
// n-th NOTIFY on.
type notifyReceiver struct {
	addr     string
	received atomic.Int32
	signed   atomic.Int32
	serials  chan uint32
}

func startNotifyReceiver(t *testing.T, ackFrom int32, key *TSIG) *notifyReceiver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nr := &notifyReceiver{addr: pc.LocalAddr().String(), serials: make(chan uint32, 100)}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, m *dns.Msg) {
		if m.Opcode != dns.OpcodeNotify {
			return
		}
		n := nr.received.Add(1)
		if m.IsTsig() != nil && w.TsigStatus() == nil {
			nr.signed.Add(1)
		}
		if soa, ok := firstRR[*dns.SOA](m.Answer); ok {
			nr.serials <- soa.Serial
		}
		if n < ackFrom {
			return
		}
		r := new(dns.Msg)
		r.SetReply(m)
		if t := m.IsTsig(); t != nil {
			r.SetTsig(t.Hdr.Name, t.Algorithm, 300, time.Now().Unix())
		}
		w.WriteMsg(r)
	})}
	if key != nil {
		srv.TsigSecret = map[string]string{key.Name: base64.StdEncoding.EncodeToString(key.Secret)}
	}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return nr
}

func TestNotifyRetriesUntilAcknowledged(t *testing.T) {
	nr := startNotifyReceiver(t, 3, testKey)
	opts := testOptions()
	opts.Notify = []string{nr.addr}
	opts.NotifyTimeout = 100 * time.Millisecond
	opts.TSIG = testKey
	ts := startServer(t, opts, serverListings)
	testkit.WaitFor(t, "the NOTIFY to be acknowledged", 5*time.Second, func() error {
		return testkit.Unless(ts.Stats().NotifyAcked == 1, "%d acknowledged", ts.Stats().NotifyAcked)
	})
	if got := nr.received.Load(); got != 3 {
		t.Errorf("%d NOTIFYs received, want 3 (two unanswered)", got)
	}
	if got := nr.signed.Load(); got != 3 {
		t.Errorf("%d of the NOTIFYs carried a valid TSIG, want 3", got)
	}
	serial := ts.Serial()
	for range 3 {
		if got := <-nr.serials; got != serial {
			t.Errorf("NOTIFY for serial %d, want %d", got, serial)
		}
	}
	// A change sends a NOTIFY with the new serial.
	s2, _ := ts.Update(serverListings[1:])
	select {
	case got := <-nr.serials:
		if got != s2 {
			t.Errorf("NOTIFY for serial %d, want %d", got, s2)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no NOTIFY after a change")
	}
}

func TestNotifyGivesUp(t *testing.T) {
	nr := startNotifyReceiver(t, 1000, nil)
	opts := testOptions()
	opts.Notify = []string{nr.addr}
	opts.NotifyTimeout = 20 * time.Millisecond
	opts.NotifyRetries = 2
	ts := startServer(t, opts, serverListings)
	testkit.WaitFor(t, "the NOTIFY to be given up", 5*time.Second, func() error {
		return testkit.Unless(ts.Stats().NotifyGivenUp == 1, "%d given up", ts.Stats().NotifyGivenUp)
	})
	if got := nr.received.Load(); got != 3 {
		t.Errorf("%d NOTIFYs sent, want 3 (one and two retries)", got)
	}
	if !strings.Contains(ts.log.String(), "notify never acknowledged") {
		t.Error("giving up is not logged")
	}
}
