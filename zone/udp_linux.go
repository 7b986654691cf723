//go:build linux

package zone

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Linux each worker reads up to batchSize datagrams with one recvmmsg
// and sends the answers with one sendmmsg: two system calls per batch
// instead of two per query, which is most of what a query costs.

const batchSize = 64

// udpBatch is one worker's buffers; the kernel reads and writes them in
// place, so they are allocated once.
type udpBatch struct {
	rc syscall.RawConn

	msgs  [batchSize]unix.Mmsghdr
	iovs  [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrInet6 // large enough for IPv4 too
	bufs  [batchSize][maxUDPQuery]byte
	outs  [batchSize][]byte

	send     [batchSize]unix.Mmsghdr
	sendIovs [batchSize]unix.Iovec
	answers  [batchSize][]byte // what send points at, kept until it is sent

	n, sendN, sent int
	errno          error
	recv, write    func(fd uintptr) bool
}

func newUDPBatch(rc syscall.RawConn) *udpBatch {
	b := &udpBatch{rc: rc}
	for i := range b.msgs {
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(maxUDPQuery)
		b.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.msgs[i].Hdr.Iov = &b.iovs[i]
		b.msgs[i].Hdr.SetIovlen(1)
		b.outs[i] = make([]byte, 0, maxUDPQuery)
		b.send[i].Hdr.Iov = &b.sendIovs[i]
		b.send[i].Hdr.SetIovlen(1)
	}
	// The callbacks are made once: a closure per call would allocate.
	b.recv = func(fd uintptr) bool {
		for i := range b.msgs {
			b.msgs[i].Hdr.Namelen = uint32(unsafe.Sizeof(b.names[i]))
			b.msgs[i].Hdr.Flags = 0
		}
		for {
			n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.msgs[0])), batchSize, unix.MSG_DONTWAIT, 0, 0)
			switch errno {
			case 0:
				b.n = int(n)
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // wait until readable
			}
			b.errno = errno
			return true
		}
	}
	b.write = func(fd uintptr) bool {
		for b.sent < b.sendN {
			n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.send[b.sent])), uintptr(b.sendN-b.sent), unix.MSG_DONTWAIT, 0, 0)
			switch errno {
			case 0:
				b.sent += int(n)
			case unix.EINTR:
			case unix.EAGAIN:
				return false // wait until writable
			default:
				// The first message could not go (a client's ICMP error,
				// say): skip it, send the rest.
				b.errno = errno
				b.sent++
			}
		}
		return true
	}
	return b
}

// from is the source of datagram i.
func (b *udpBatch) from(i int) netip.AddrPort {
	sa := &b.names[i]
	port := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p := uint16(port[0])<<8 | uint16(port[1])
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), p)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), p)
}

// readUDPBatched is readUDP with recvmmsg and sendmmsg.
func (s *Server) readUDPBatched(uc *net.UDPConn) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return s.readUDP(uc)
	}
	b := newUDPBatch(rc)
	local := uc.LocalAddr()
	for {
		b.n, b.errno = 0, nil
		if err := rc.Read(b.recv); err != nil {
			if s.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if b.errno != nil {
			// An ICMP error for an earlier answer: it concerns a client.
			s.log.Debug("reading UDP queries", "err", b.errno)
			continue
		}
		s.stats.udpQueries.Add(uint64(b.n))
		b.sendN, b.sent = 0, 0
		for i := range b.n {
			if b.msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
				s.stats.dropped.Add(1) // larger than any query
				continue
			}
			from := b.from(i)
			resp := s.answerUDP(b.bufs[i][:b.msgs[i].Len], from, local, b.outs[i][:0])
			if resp == nil {
				continue
			}
			j := b.sendN
			b.answers[j] = resp
			b.sendIovs[j].Base = &resp[0]
			b.sendIovs[j].SetLen(len(resp))
			b.send[j].Hdr.Name = b.msgs[i].Hdr.Name
			b.send[j].Hdr.Namelen = b.msgs[i].Hdr.Namelen
			b.sendN++
		}
		if b.sendN == 0 {
			continue
		}
		b.errno = nil
		if err := rc.Write(b.write); err != nil {
			if s.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if b.errno != nil {
			s.log.Debug("writing UDP answers", "err", b.errno)
		}
		for j := range b.sendN {
			b.answers[j] = nil
		}
	}
}
