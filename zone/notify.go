package zone

import (
	"context"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// notifier sends NOTIFY (RFC 1996) to each notify address on every new
// serial, and sends it again with a doubling timeout until it is
// acknowledged or the retries run out (section 4.3). A newer serial
// restarts the round for it.
type notifier struct {
	s       *Server
	targets []*notifyTarget

	startOnce sync.Once
	stopOnce  sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

type notifyTarget struct {
	addr string
	kick chan struct{}
}

func newNotifier(s *Server, addrs []string) *notifier {
	n := &notifier{s: s}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	for _, a := range addrs {
		n.targets = append(n.targets, &notifyTarget{addr: a, kick: make(chan struct{}, 1)})
	}
	return n
}

func (n *notifier) start() {
	n.startOnce.Do(func() {
		if n.ctx.Err() != nil {
			return
		}
		for _, t := range n.targets {
			n.wg.Add(1)
			go n.run(t)
		}
	})
}

// kick asks for a NOTIFY of the current serial to every target.
func (n *notifier) kick() {
	n.start()
	for _, t := range n.targets {
		select {
		case t.kick <- struct{}{}:
		default: // one is pending; it will send the newest serial
		}
	}
}

func (n *notifier) stop() {
	n.stopOnce.Do(func() {
		n.startOnce.Do(func() {}) // nothing starts after stop
		n.cancel()
	})
}

func (n *notifier) wait() { n.wg.Wait() }

func (n *notifier) run(t *notifyTarget) {
	defer n.wg.Done()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.kick:
		}
		n.send(t)
	}
}

func (n *notifier) send(t *notifyTarget) {
	s := n.s
	timeout := s.opts.NotifyTimeout
	for try := 0; try <= s.opts.NotifyRetries; try++ {
		sn := s.snap.Load()
		m := new(dns.Msg)
		m.SetNotify(sn.apex.name)
		m.Answer = []dns.RR{sn.soa}
		c := &dns.Client{Net: "udp", Timeout: timeout}
		if k := s.opts.TSIG; k != nil {
			m.SetTsig(k.Name, k.Algorithm, 300, time.Now().Unix())
			c.TsigProvider = s.tsig
		}
		start := time.Now()
		r, _, err := c.ExchangeContext(n.ctx, m, t.addr)
		switch {
		case n.ctx.Err() != nil:
			return
		case err == nil && r.Rcode == dns.RcodeSuccess && r.Opcode == dns.OpcodeNotify:
			s.stats.notifyAcked.Add(1)
			s.log.Debug("notify acknowledged", "to", t.addr, "serial", sn.serial, "tries", try+1)
			return
		case err == nil:
			s.log.Warn("notify answered with an error", "to", t.addr, "serial", sn.serial, "rcode", dns.RcodeToString[r.Rcode])
		default:
			s.log.Debug("notify not acknowledged", "to", t.addr, "serial", sn.serial, "err", err)
		}
		// An answer that came back at once (an error rcode, a refused
		// port) waits out the timeout before the next try.
		wait := time.NewTimer(max(timeout-time.Since(start), 0))
		select {
		case <-n.ctx.Done():
			wait.Stop()
			return
		case <-t.kick:
			// A newer serial: a fresh round for it.
			wait.Stop()
			try, timeout = -1, s.opts.NotifyTimeout/2
		case <-wait.C:
		}
		timeout *= 2
	}
	s.stats.notifyGivenUp.Add(1)
	s.log.Warn("notify never acknowledged; the secondary will see the change at its next refresh",
		"to", t.addr, "serial", s.Serial(), "tries", s.opts.NotifyRetries+1)
}
