package dnsbl

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
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

// sendBatch is the most queries sent at once (one sendmmsg on Linux); a
// check asks a few lists, so more go out in several calls.
const sendBatch = 8

// maxUDPAnswer is the first read buffer of a socket: any datagram fits,
// although a server that honours the EDNS0 size sends at most udpSize.
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
	snd  sender // see send

	mu      sync.Mutex
	ids     *mrand.ChaCha8 // query IDs; seeded from crypto/rand
	pending map[uint16]*waiter
	uses    int
	retired bool // takes no new queries; closed once pending is empty
	closed  bool
}

// waiter is one attempt of a call waiting for its answer on a socket.
// It lives in its call (see batch.go), which reuses it attempt after
// attempt; the reader hands the answer to the call's batch.
type waiter struct {
	wire  string // the question, to match the answer's
	qtype uint16
	c     *call
}

// register puts w on the socket of the pool's slot (a batch's turn) under
// a random ID that no other query on that socket holds. The calls of one
// batch register in the same slot, so their queries go out together.
func (p *udpPool) register(w *waiter, slot uint32) (*udpSocket, uint16, error) {
	i := int(slot % uint32(socketsPerServer))
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

// readFailed handles an error reading the socket and reports whether the
// reader goes on.
func (s *udpSocket) readFailed(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	s.failAll(err)
	if errors.Is(err, syscall.ECONNREFUSED) {
		// An ICMP "port unreachable" from the server: nothing listened
		// there for the queries on this socket. The socket itself is
		// fine; the server may come back.
		return true
	}
	s.retire()
	return false
}

// deliver hands a datagram to the query waiting for it, if it is that
// query's answer; anything else is dropped. A datagram cut short by the
// read buffer (cut) is taken for a truncated answer: its query is asked
// again over TCP.
func (s *udpSocket) deliver(b []byte, cut bool) {
	if len(b) < headerSize {
		return // not even a header
	}
	if cut {
		b[2] |= flagTrunc >> 8
	}
	id := binary.BigEndian.Uint16(b)
	s.mu.Lock()
	w := s.pending[id]
	var wire string
	var qtype uint16
	if w != nil {
		wire, qtype = w.wire, w.qtype
	}
	s.mu.Unlock()
	if w == nil {
		return // late (its query gave up) or forged
	}
	m, ok := unpack(b)
	if !ok || !m.answers(wire, qtype) {
		return
	}
	s.mu.Lock()
	if s.pending[id] != w {
		s.mu.Unlock()
		return // its query gave up meanwhile
	}
	delete(s.pending, id)
	c := w.c
	s.closeIfDoneLocked()
	c.b.events <- event{c: c, m: m}
}

// unpack parses a datagram from the network. Whatever it holds, a bad one
// is dropped: a panic in the parser must not end the process, whose only
// reader of this socket this goroutine is.
func unpack(b []byte) (m *msg, ok bool) {
	defer func() {
		if recover() != nil {
			m, ok = nil, false
		}
	}()
	m, err := parse(b)
	if err != nil {
		return nil, false
	}
	return m, true
}

// failAll ends every query waiting on the socket with err.
func (s *udpSocket) failAll(err error) {
	s.mu.Lock()
	cs := make([]*call, 0, len(s.pending))
	for id, w := range s.pending {
		cs = append(cs, w.c)
		delete(s.pending, id)
	}
	s.closeIfDoneLocked()
	for _, c := range cs {
		c.b.events <- event{c: c, err: fmt.Errorf("dnsbl: udp: %w", err)}
	}
}
