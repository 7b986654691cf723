package dnsbl

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/miekg/dns"
)

// A Batch is the lookups of one check, asked together and answered in
// the goroutine that waits for them: no goroutine per lookup. Its first
// queries leave together, on one pooled socket (one sendmmsg on Linux),
// and the socket's reader hands each answer to the batch as it comes.
// Retries to the next server, the TCP fallback for a truncated answer,
// and lookups joining an identical query in flight work as for a single
// Lookup, which is a batch of one.
type Batch struct {
	r        *Resolver
	ctx      context.Context
	ctxEnd   <-chan struct{} // ctx.Done() until its end is handled
	deadline time.Time       // bounds every lookup, as a deadline of ctx would
	calls    []call
	events   chan event // answers for the calls: from sockets, flights and TCP
	timer    *time.Timer
	slot     uint32 // the socket slot its queries use (see udpPool.register)
	done     []int  // calls finished, in order; done[doneAt:] not yet returned by Next
	doneAt   int
	open     int // calls not finished

	// A check asks a few lists: their calls and its queue fit here.
	callBuf [4]call
	doneBuf [4]int
}

// callKind is what a call asks.
type callKind uint8

const (
	kindLookup callKind = iota // the A records, then the TXT text of a listing unless NoTXT
	kindReason                 // the TXT text only
)

// callState is where a call stands.
type callState uint8

const (
	stateIdle   callState = iota // between attempts
	stateUDP                     // its query waits on a socket
	stateTCP                     // a TCP exchange runs for it
	stateJoined                  // it waits for an identical query in flight
	stateDone                    // finished; res holds the result
	stateGone                    // returned by Next, or abandoned by Close
)

// call is one lookup of a batch.
type call struct {
	b        *Batch
	i        int
	kind     callKind
	txt      bool   // kindLookup: fetch the text of a listing
	wire     string // the name asked, in wire form (in wireBuf)
	qtype    uint16
	start    time.Time
	deadline time.Time
	state    callState

	f     *flight // the flight it asks for (owner) or waits for
	owner bool

	// The attempts of an owner (see ask in resolver.go for the policy).
	attempts   int
	attempt    int // attempts made
	first      int // the server asked first
	idx        int // the server of the current attempt
	tries      int
	askStart   time.Time
	attemptEnd time.Time
	lastErr    error
	sock       *udpSocket
	id         uint16
	taken      bool // the reader took the waiter; its answer is on the way
	w          waiter
	wireBuf    [255]byte
	pkt        []byte // the attempt's query, in pktBuf
	pktBuf     [maxQuery]byte

	res Result
	m   *msg // the answer a kindReason call got
	err error
}

// event is an answer, or the end of an attempt, for one call.
type event struct {
	c      *call
	m      *msg
	err    error
	flight bool // from the flight the call joined: m and err are its result
	tcp    bool // from the TCP exchange of the call's attempt
}

// Start begins the lookups qs, as Lookup does each, under ctx and, if not
// zero, deadline (which bounds them as a deadline of ctx would, without a
// context of its own): their A queries leave at once, together. Next
// returns their results as they come; Close ends the ones still running.
// A Batch is used by one goroutine.
func (r *Resolver) Start(ctx context.Context, deadline time.Time, qs []Query) *Batch {
	return r.start(ctx, deadline, qs, kindLookup)
}

// ReasonResult is what Reasons found for one query: Reason's results.
type ReasonResult struct {
	Reason string
	TTL    time.Duration
	Err    error
}

// Reasons asks for the TXT texts of qs at once, as Reason does for one,
// and returns when each has its answer or its time is up.
func (r *Resolver) Reasons(ctx context.Context, qs []Query) []ReasonResult {
	out := make([]ReasonResult, len(qs))
	b := r.start(ctx, time.Time{}, qs, kindReason)
	defer b.Close()
	for {
		i, _, ok := b.Next(time.Time{})
		if !ok {
			return out
		}
		c := &b.calls[i]
		if c.err != nil {
			out[i].Err = c.err
			continue
		}
		out[i].Reason, out[i].TTL = reasonText(c.m), textTTL(c.m)
	}
}

func (r *Resolver) start(ctx context.Context, deadline time.Time, qs []Query, kind callKind) *Batch {
	now := time.Now()
	b := &Batch{r: r, ctx: ctx, ctxEnd: ctx.Done(), deadline: deadline, events: make(chan event, len(qs)), slot: r.c.next.Add(1)}
	if len(qs) <= len(b.callBuf) {
		b.calls, b.done = b.callBuf[:len(qs)], b.doneBuf[:0]
	} else {
		b.calls, b.done = make([]call, len(qs)), make([]int, 0, len(qs))
	}
	var buf [len(Batch{}.callBuf)]*call
	sendNow := buf[:0]
	for i, q := range qs {
		c := &b.calls[i]
		c.b, c.i, c.kind, c.start = b, i, kind, now
		c.txt = kind == kindLookup && !q.NoTXT
		c.qtype = dns.TypeA
		if kind == kindReason {
			c.qtype = dns.TypeTXT
		}
		n, timeout, err := r.prepare(q, &c.wireBuf)
		if err != nil {
			c.state = stateDone
			c.res, c.err = Result{Status: Error, Err: err}, err
			b.done = append(b.done, i)
			continue
		}
		// The name stays in the call for its life and is never changed.
		c.wire = unsafe.String(&c.wireBuf[0], n)
		c.deadline = lookupDeadline(ctx, timeout)
		if !deadline.IsZero() && deadline.Before(c.deadline) {
			c.deadline = deadline
		}
		b.open++
		if b.ask(c) {
			sendNow = append(sendNow, c)
		}
	}
	b.sendFirst(sendNow)
	return b
}

// Next waits for the next lookup to finish and returns its index in the
// queries and its result; it returns ok false when every result has been
// returned, or when until (if not zero) comes first. Past until it returns
// only the results that are in already: a lookup whose own time ends at
// until is still running then, not timed out.
func (b *Batch) Next(until time.Time) (i int, res Result, ok bool) {
	for {
		if b.doneAt < len(b.done) {
			i = b.done[b.doneAt]
			b.doneAt++
			c := &b.calls[i]
			c.state = stateGone
			return i, c.res, true
		}
		if b.open == 0 {
			return -1, Result{}, false
		}
		now := time.Now()
		if !until.IsZero() && !now.Before(until) {
			if b.drain() && b.doneAt < len(b.done) {
				continue
			}
			return -1, Result{}, false
		}
		wake := b.expire(now)
		if b.doneAt < len(b.done) {
			continue
		}
		if !until.IsZero() && (wake.IsZero() || until.Before(wake)) {
			wake = until
		}
		var timeout <-chan time.Time
		if !wake.IsZero() {
			if b.timer == nil {
				b.timer = getTimer(wake.Sub(now))
			} else {
				b.timer.Reset(wake.Sub(now))
			}
			timeout = b.timer.C
		}
		select {
		case ev := <-b.events:
			b.handle(ev)
			b.drain()
		case <-timeout:
		case <-b.ctxEnd:
		}
	}
}

// drain handles the events that are in, without waiting, and reports
// whether there were any.
func (b *Batch) drain() bool {
	got := false
	for {
		select {
		case ev := <-b.events:
			b.handle(ev)
			got = true
		default:
			return got
		}
	}
}

// Close ends the lookups still running: their queries are given up, and
// lookups of other batches waiting for the same questions ask on their
// own. Results not yet returned are dropped.
func (b *Batch) Close() {
	if b.timer != nil {
		putTimer(b.timer)
		b.timer = nil
	}
	if b.open == 0 {
		return
	}
	for i := range b.calls {
		c := &b.calls[i]
		switch c.state {
		case stateUDP:
			if !c.taken {
				c.sock.unregister(c.id, &c.w)
			}
		case stateJoined:
			b.r.c.leave(c)
		}
		if c.owner && c.state != stateDone && c.state != stateGone {
			b.r.c.land(c.f, nil, fmt.Errorf("dnsbl: lookup canceled: %w", context.Canceled))
			c.owner = false
		}
		if c.state != stateDone && c.state != stateGone {
			c.state = stateGone
		}
	}
	b.open = 0
}

// expire ends what is over by now: lookups whose time or context ended,
// attempts whose share of the time ran out. It returns when the next of
// these is due (zero: none, every call waits for an event only).
func (b *Batch) expire(now time.Time) (wake time.Time) {
	ctxEnded := b.ctx.Err() != nil
	if ctxEnded {
		b.ctxEnd = nil // handled here from now on
	}
	for i := range b.calls {
		c := &b.calls[i]
		over := ctxEnded || !now.Before(c.deadline)
		switch c.state {
		case stateUDP:
			if c.taken || (!over && now.Before(c.attemptEnd)) {
				continue
			}
			if !c.sock.unregister(c.id, &c.w) {
				c.taken = true // its answer is in the events already
				continue
			}
			c.tries++
			c.lastErr = ErrTimeout
			c.state = stateIdle
			b.next(c)
		case stateJoined:
			if !over {
				continue
			}
			if !b.r.c.leave(c) {
				continue // the flight landed: its event is on the way
			}
			err := fmt.Errorf("%w (waiting for the same %s query in flight)", ErrTimeout, dns.TypeToString[c.qtype])
			if errors.Is(b.ctx.Err(), context.Canceled) {
				err = fmt.Errorf("dnsbl: lookup canceled: %w", b.ctx.Err())
			}
			c.state = stateIdle
			b.answered(c, nil, err)
		}
		// A TCP exchange ends by its attempt's end or ctx's, and says so.
	}
	for i := range b.calls {
		c := &b.calls[i]
		var t time.Time
		switch {
		case c.state == stateUDP && !c.taken:
			t = c.attemptEnd
		case c.state == stateJoined:
			t = c.deadline
		default:
			continue
		}
		if wake.IsZero() || t.Before(wake) {
			wake = t
		}
	}
	return wake
}

// handle takes one event.
func (b *Batch) handle(ev event) {
	c := ev.c
	if c.state == stateGone || c.state == stateDone {
		return // a TCP exchange that outlived its batch
	}
	if ev.flight {
		c.state = stateIdle
		c.f = nil
		ended := errors.Is(ev.err, ErrTimeout) || errors.Is(ev.err, context.Canceled)
		if ev.err == nil || !ended || b.ctx.Err() != nil || time.Until(c.deadline) < minRetry {
			b.answered(c, ev.m, ev.err)
			return
		}
		// The query ended on its asker's time, and this lookup has time
		// left: it asks itself.
		if b.ask(c) {
			b.sendOne(c)
		}
		return
	}
	c.taken = false
	c.state = stateIdle
	m, err := ev.m, ev.err
	if err == nil && m.truncated && !ev.tcp {
		// Too large for UDP: the same query over TCP, within the
		// attempt's time, in a goroutine of its own (truncation is rare).
		c.state = stateTCP
		pkt := append([]byte(nil), c.pkt...)
		server, ctx, end := b.r.servers[c.idx], b.ctx, c.attemptEnd
		go func() {
			m, err := exchangeTCP(ctx, end, pkt, server)
			b.events <- event{c: c, m: m, err: err, tcp: true}
		}()
		return
	}
	c.tries++
	if err != nil {
		err = netError(err)
	} else if err = check(m, c.wire, c.qtype); err == nil {
		switch m.rcode {
		case dns.RcodeSuccess, dns.RcodeNameError:
			if c.idx != c.first {
				b.r.c.preferred.Store(uint32(c.idx))
			}
			b.land(c, m, nil)
			return
		case dns.RcodeServerFailure:
			err = ErrServFail
		case dns.RcodeRefused:
			err = ErrRefused
		default:
			err = fmt.Errorf("dnsbl: server answered %s", dns.RcodeToString[m.rcode])
		}
	}
	c.lastErr = err
	if errors.Is(err, ErrMismatch) {
		b.land(c, nil, b.askError(c))
		return
	}
	b.next(c)
}

// ask starts asking c's question: it joins an identical query in flight,
// or becomes the one asking and reports true: its first attempt is
// registered and packed, for the caller to send.
func (b *Batch) ask(c *call) bool {
	if !b.r.c.fly(c) {
		c.state = stateJoined
		return false
	}
	n := len(b.r.servers)
	c.attempts, c.attempt, c.tries, c.lastErr = max(n, 2), 0, 0, nil
	c.first = int(b.r.c.preferred.Load()) % n
	c.askStart = time.Now()
	return b.arm(c)
}

// arm readies c's next attempt: the server, the attempt's share of the
// time left, a socket and a packed query. It reports false when none is
// left; then c has landed. (A failed registration counts as an attempt.)
func (b *Batch) arm(c *call) bool {
	for {
		if c.attempt >= c.attempts || b.over(c) {
			b.land(c, nil, b.askError(c))
			return false
		}
		c.idx = (c.first + c.attempt) % len(b.r.servers)
		left := time.Until(c.deadline)
		c.attemptEnd = time.Now().Add(left / time.Duration(c.attempts-c.attempt))
		c.attempt++
		c.w = waiter{wire: c.wire, qtype: c.qtype, c: c}
		p := b.r.c.pools[c.idx]
		s, id, err := p.register(&c.w, b.slot)
		if err != nil {
			c.tries++
			c.lastErr = netError(err)
			continue
		}
		c.sock, c.id, c.taken = s, id, false
		// Packets are sent from here: the kernel is handed pointers to
		// them, which would move a buffer on the stack to the heap.
		c.pkt = appendQuery(c.pktBuf[:0], id, c.wire, c.qtype)
		c.state = stateUDP
		return true
	}
}

// next moves c to its next attempt after one that failed, or lands it.
func (b *Batch) next(c *call) {
	if b.arm(c) {
		b.sendOne(c)
	}
}

// over reports whether c's time or its batch's context has ended.
func (b *Batch) over(c *call) bool {
	return b.ctx.Err() != nil || !time.Now().Before(c.deadline)
}

// askError is the error of an ask that got no usable answer.
func (b *Batch) askError(c *call) error {
	if b.over(c) && !errors.Is(c.lastErr, ErrMismatch) {
		// The lookup's time ran out, whatever the last attempt said.
		return lookupEnded(b.ctx, c.tries, time.Since(c.askStart), c.qtype)
	}
	err := c.lastErr
	if err == nil {
		err = ErrTimeout
	}
	return fmt.Errorf("%w (%s query, %d attempt(s) in %v)",
		err, dns.TypeToString[c.qtype], c.tries, time.Since(c.askStart).Round(time.Millisecond))
}

// sendFirst sends the first attempts of a batch: the queries registered
// on one socket go out together.
func (b *Batch) sendFirst(cs []*call) {
	var pktBuf [sendBatch][]byte
	for len(cs) > 0 {
		s := cs[0].sock
		group := cs[:1]
		for _, c := range cs[1:] {
			if c.sock != s || len(group) == sendBatch {
				break
			}
			group = append(group, c)
		}
		cs = cs[len(group):]
		pkts := pktBuf[:0]
		for _, c := range group {
			pkts = append(pkts, c.pkt)
		}
		for len(group) > 0 {
			sent, err := s.send(pkts)
			group, pkts = group[sent:], pkts[sent:]
			if err == nil {
				break
			}
			b.sendFailed(group[0], err)
			group, pkts = group[1:], pkts[1:]
		}
	}
}

// sendOne sends c's armed attempt.
func (b *Batch) sendOne(c *call) {
	pkts := [1][]byte{c.pkt}
	if _, err := c.sock.send(pkts[:]); err != nil {
		b.sendFailed(c, err)
	}
}

// sendFailed ends an attempt whose query could not be sent.
func (b *Batch) sendFailed(c *call, err error) {
	if !c.sock.unregister(c.id, &c.w) {
		// The reader failed it meanwhile (a socket error): that event
		// ends the attempt.
		c.taken = true
		return
	}
	c.state = stateIdle
	c.tries++
	c.lastErr = netError(err)
	b.next(c)
}

// land ends c's ask with an answer or an error: the flight lands for
// every lookup waiting for it, and c has its answer.
func (b *Batch) land(c *call, m *msg, err error) {
	if c.owner {
		b.r.c.land(c.f, m, err)
		c.owner, c.f = false, nil
	}
	c.state = stateIdle
	b.answered(c, m, err)
}

// answered takes the answer to c's question: a lookup's A answer may ask
// for its text next; anything else finishes c.
func (b *Batch) answered(c *call, m *msg, err error) {
	switch {
	case c.kind == kindReason:
		c.m, c.err = m, err
		b.finish(c, Result{Err: err})
		return
	case c.qtype == dns.TypeA:
		if err != nil {
			b.finish(c, Result{Status: Error, Err: err})
			return
		}
		res := classify(m)
		if res.Status != Listed || !c.txt {
			b.finish(c, res)
			return
		}
		// The reason is a courtesy: without it the listing stands.
		c.res = res
		c.qtype = dns.TypeTXT
		if b.ask(c) {
			b.sendOne(c)
		}
	default: // the text of a listing
		res := c.res
		if err == nil {
			res.Reason = reasonText(m)
		}
		b.finish(c, res)
	}
}

func (b *Batch) finish(c *call, res Result) {
	res.Duration = time.Since(c.start)
	c.res = res
	c.state = stateDone
	b.done = append(b.done, c.i)
	b.open--
}

// Timers are reused from one batch to the next: a timer and its channel
// are two allocations per check otherwise. (Since Go 1.23 a timer that
// was stopped or reset delivers nothing stale.)
var timers sync.Pool

func getTimer(d time.Duration) *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func putTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}
