package dnsbl

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// UDP queries to one server go through a few long-lived sockets instead of
// a socket per query: a dial, a close and their allocations per query cost
// more than the query itself. What a socket per query gave for free, its
// own source port, is made up for as resolvers do it:
//
//   - Each socket is connected to the server, so the kernel passes it only
//     datagrams from the server's address and port.
//   - Each query in flight on a socket has its own random 16-bit ID, and an
//     answer is taken only when its ID, question name (compared without
//     case), type and class match a query waiting on that socket. Anything
//     else (a late answer to a query that gave up, a forged one) is
//     dropped, and the query keeps waiting for its own answer.
//   - A socket is retired after socketMaxUses queries or socketMaxAge,
//     whichever comes first, and a new one takes its place, so the source
//     port an off-path attacker must guess does not stay the same for long
//     (the Kaminsky attack needs many tries at one port and query).
var (
	socketsPerServer = 4
	socketMaxUses    = 1000
	socketMaxAge     = 10 * time.Second
)

// maxUDPAnswer is the read buffer of a socket: any datagram fits, although
// a server that honours the EDNS0 size sends at most udpSize.
const maxUDPAnswer = 65535

// pools holds one socket pool per server address, shared by every
// Resolver in the process: two engines during a reload, and the health
// probes, use the same sockets.
var pools struct {
	sync.Mutex
	m map[string]*udpPool
}

func poolFor(server string) *udpPool {
	pools.Lock()
	defer pools.Unlock()
	if pools.m == nil {
		pools.m = map[string]*udpPool{}
	}
	p := pools.m[server]
	if p == nil {
		p = &udpPool{server: server}
		pools.m[server] = p
	}
	return p
}

// udpPool is the sockets to one server. A slot is filled on first use and
// refilled when its socket retires, so an idle resolver holds no sockets
// once socketMaxAge has passed.
type udpPool struct {
	server string
	next   atomic.Uint32
	mu     sync.Mutex
	slots  []*udpSocket
	dials  atomic.Uint64 // sockets opened, for tests
}

// udpSocket is one connected socket, its reader goroutine and the queries
// waiting on it.
type udpSocket struct {
	pool *udpPool
	conn *net.UDPConn
	age  *time.Timer

	mu      sync.Mutex
	ids     *mrand.ChaCha8 // query IDs; seeded from crypto/rand
	pending map[uint16]*waiter
	uses    int
	retired bool // takes no new queries; closed once pending is empty
	closed  bool
}

// waiter is one query waiting for its answer. Waiters are reused, with
// their channel and timer.
type waiter struct {
	name  string
	qtype uint16
	done  chan reply  // buffered: the reader never blocks on a waiter
	timer *time.Timer // the attempt's deadline; stopped while in the pool
}

type reply struct {
	msg *dns.Msg
	err error
}

var waiterPool = sync.Pool{New: func() any { return &waiter{done: make(chan reply, 1)} }}

// exchange sends m (its ID is set here) to the pool's server and waits
// until deadline or ctx for the matching answer. A timeout or the end of
// ctx comes back as os.ErrDeadlineExceeded, as from a socket's deadline.
func (p *udpPool) exchange(ctx context.Context, deadline time.Time, m *dns.Msg) (*dns.Msg, error) {
	q := m.Question[0]
	w := waiterPool.Get().(*waiter)
	w.name, w.qtype = q.Name, q.Qtype
	s, id, err := p.register(w)
	if err != nil {
		waiterPool.Put(w)
		return nil, err
	}
	m.Id = id
	var buf [512]byte
	packed, err := m.PackBuffer(buf[:])
	if err == nil {
		_, err = s.conn.Write(packed)
	}
	if err != nil {
		if s.unregister(id, w) {
			waiterPool.Put(w)
		}
		return nil, err
	}
	if w.timer == nil {
		w.timer = time.NewTimer(time.Until(deadline))
	} else {
		w.timer.Reset(time.Until(deadline))
	}
	var r reply
	select {
	case r = <-w.done:
	case <-w.timer.C:
		r = giveUp(s, id, w)
	case <-ctx.Done():
		r = giveUp(s, id, w)
	}
	// Since Go 1.23 a stopped timer delivers nothing stale after Reset.
	w.timer.Stop()
	w.name = ""
	waiterPool.Put(w)
	return r.msg, r.err
}

// giveUp takes w off the socket after its time ran out. If the reader took
// it a moment ago, its answer is on the way and is used.
func giveUp(s *udpSocket, id uint16, w *waiter) reply {
	if s.unregister(id, w) {
		return reply{err: os.ErrDeadlineExceeded}
	}
	return <-w.done
}

// register puts w on one of the pool's sockets under a random ID that no
// other query on that socket holds.
func (p *udpPool) register(w *waiter) (*udpSocket, uint16, error) {
	i := int(p.next.Add(1)) % socketsPerServer
	// A socket can retire between being picked and taking w (its last
	// query went to another waiter); then the slot is refilled.
	for range 3 {
		p.mu.Lock()
		if p.slots == nil {
			p.slots = make([]*udpSocket, socketsPerServer)
		}
		s := p.slots[i]
		p.mu.Unlock()
		if s != nil {
			if id, ok := s.add(w); ok {
				return s, id, nil
			}
		}
		// The slot is empty or its socket retired: open a new one
		// outside the lock (a server given by name is resolved here).
		ns, err := p.dial()
		if err != nil {
			return nil, 0, err
		}
		p.mu.Lock()
		if cur := p.slots[i]; cur != s && cur != nil {
			// Another query refilled the slot first; use its socket.
			p.mu.Unlock()
			ns.retire()
			continue
		}
		p.slots[i] = ns
		p.mu.Unlock()
		if s != nil {
			s.retire()
		}
		if id, ok := ns.add(w); ok {
			return ns, id, nil
		}
	}
	return nil, 0, errors.New("dnsbl: no usable socket")
}

func (p *udpPool) dial() (*udpSocket, error) {
	c, err := net.Dial("udp", p.server)
	if err != nil {
		return nil, err
	}
	var seed [32]byte
	rand.Read(seed[:])
	s := &udpSocket{pool: p, conn: c.(*net.UDPConn), ids: mrand.NewChaCha8(seed), pending: map[uint16]*waiter{}}
	s.age = time.AfterFunc(socketMaxAge, s.retire)
	p.dials.Add(1)
	go s.read()
	return s, nil
}

// add registers w under a fresh random ID, unless the socket is retired.
// The query that reaches socketMaxUses is the socket's last.
func (s *udpSocket) add(w *waiter) (uint16, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retired {
		return 0, false
	}
	var id uint16
	for {
		id = uint16(s.ids.Uint64())
		if _, taken := s.pending[id]; !taken {
			break
		}
	}
	s.pending[id] = w
	s.uses++
	if s.uses >= socketMaxUses {
		s.retired = true
	}
	return id, true
}

// unregister removes w if it still waits under id and reports whether it
// did; false means the reader has taken it and is handing it an answer.
func (s *udpSocket) unregister(id uint16, w *waiter) bool {
	s.mu.Lock()
	if s.pending[id] != w {
		s.mu.Unlock()
		return false
	}
	delete(s.pending, id)
	s.closeIfDoneLocked()
	return true
}

// retire stops new queries on the socket and closes it once the queries
// on it are answered or given up.
func (s *udpSocket) retire() {
	s.mu.Lock()
	s.retired = true
	s.closeIfDoneLocked()
}

// closeIfDoneLocked closes a retired socket that no query waits on, and
// unlocks s.mu.
func (s *udpSocket) closeIfDoneLocked() {
	closeNow := s.retired && len(s.pending) == 0 && !s.closed
	if closeNow {
		s.closed = true
	}
	s.mu.Unlock()
	if closeNow {
		s.age.Stop()
		s.conn.Close() // ends the reader
	}
}

// answers reports whether resp is an answer to the question name/qtype/IN.
// Some servers send REFUSED or FORMERR without the question section; such
// an answer carries no data, only its rcode, and is taken by its ID.
func answers(resp *dns.Msg, name string, qtype uint16) bool {
	if !resp.Response {
		return false
	}
	if len(resp.Question) == 0 {
		return resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError
	}
	q := resp.Question[0]
	return len(resp.Question) == 1 && q.Qtype == qtype && q.Qclass == dns.ClassINET && strings.EqualFold(q.Name, name)
}

// read hands each answer to its waiter until the socket is closed.
func (s *udpSocket) read() {
	buf := make([]byte, maxUDPAnswer)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.failAll(err)
			if errors.Is(err, syscall.ECONNREFUSED) {
				// An ICMP "port unreachable" from the server: nothing
				// listened there for the queries on this socket. The
				// socket itself is fine; the server may come back.
				continue
			}
			s.retire()
			return
		}
		if n < 12 {
			continue // not even a header
		}
		id := binary.BigEndian.Uint16(buf[:2])
		s.mu.Lock()
		_, known := s.pending[id]
		s.mu.Unlock()
		if !known {
			continue // late (its query gave up) or forged
		}
		resp, ok := unpack(buf[:n])
		if !ok {
			continue
		}
		if w := s.take(id, resp); w != nil {
			w.done <- reply{msg: resp}
		}
	}
}

// unpack parses a datagram from the network. Whatever it holds, a bad one
// is dropped: a panic in the parser must not end the process, whose only
// reader of this socket this goroutine is.
func unpack(b []byte) (m *dns.Msg, ok bool) {
	defer func() {
		if recover() != nil {
			m, ok = nil, false
		}
	}()
	m = new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, false
	}
	return m, true
}

// take removes and returns the waiter for an answer with this ID if the
// answer is for its question; nil if the answer is no one's.
func (s *udpSocket) take(id uint16, resp *dns.Msg) *waiter {
	s.mu.Lock()
	w := s.pending[id]
	if w == nil || !answers(resp, w.name, w.qtype) {
		s.mu.Unlock()
		return nil
	}
	delete(s.pending, id)
	s.closeIfDoneLocked()
	return w
}

// failAll ends every query waiting on the socket with err.
func (s *udpSocket) failAll(err error) {
	s.mu.Lock()
	ws := make([]*waiter, 0, len(s.pending))
	for id, w := range s.pending {
		ws = append(ws, w)
		delete(s.pending, id)
	}
	s.closeIfDoneLocked()
	for _, w := range ws {
		w.done <- reply{err: fmt.Errorf("dnsbl: udp: %w", err)}
	}
}
