//go:build linux

package dnsbl

import (
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Linux the queries of a batch that share a socket leave with one
// sendmmsg: one system call for the lists of a check instead of one per
// list. The reader takes the answers that are in with one recvmmsg, so a
// check's answers, which come close together, wake it once.

// sender is a socket's sendmmsg state. The kernel reads the headers in
// place, so they live with the socket, and the callback is made once: a
// closure per call would allocate.
type sender struct {
	mu    sync.Mutex
	rc    syscall.RawConn
	msgs  [sendBatch]unix.Mmsghdr
	iovs  [sendBatch]unix.Iovec
	n     int
	sent  int
	errno syscall.Errno
	write func(fd uintptr) bool
}

// send writes pkts, in order, as one datagram each. It returns how many
// went out; when that is fewer than len(pkts), err says why pkts[sent]
// did not (the ones after it are not tried).
func (s *udpSocket) send(pkts [][]byte) (sent int, err error) {
	if len(pkts) == 1 {
		if _, err := s.conn.Write(pkts[0]); err != nil {
			return 0, err
		}
		return 1, nil
	}
	snd := &s.snd
	snd.mu.Lock()
	defer snd.mu.Unlock()
	if snd.rc == nil {
		rc, err := s.conn.SyscallConn()
		if err != nil {
			return 0, err
		}
		snd.rc = rc
		snd.write = snd.sendmmsg
		for i := range snd.msgs {
			snd.msgs[i].Hdr.Iov = &snd.iovs[i]
			snd.msgs[i].Hdr.SetIovlen(1)
		}
	}
	for sent < len(pkts) {
		n := min(len(pkts)-sent, sendBatch)
		for i := range n {
			p := pkts[sent+i]
			snd.iovs[i].Base = unsafe.SliceData(p)
			snd.iovs[i].SetLen(len(p))
		}
		snd.n, snd.sent, snd.errno = n, 0, 0
		err := snd.rc.Write(snd.write)
		for i := range n {
			snd.iovs[i].Base = nil // keep no packet alive
		}
		sent += snd.sent
		if err != nil {
			return sent, err
		}
		if snd.errno != 0 {
			return sent, os.NewSyscallError("sendmmsg", snd.errno)
		}
	}
	return sent, nil
}

// sendmmsg is the RawConn.Write callback: it sends msgs[sent:n], and
// reports false when the socket is not writable yet.
func (snd *sender) sendmmsg(fd uintptr) bool {
	for snd.sent < snd.n {
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&snd.msgs[snd.sent])),
			uintptr(snd.n-snd.sent), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			if r == 0 {
				snd.errno = unix.EIO // no progress and no reason: give up
				return true
			}
			snd.sent += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			snd.errno = errno
			return true
		}
	}
	return true
}

// readBatch is the most datagrams one recvmmsg takes. The first buffer
// holds any datagram; the others are smallBuffer bytes, far more than any
// list's answer (a server that honours EDNS0 sends at most udpSize), and a
// datagram cut short there is asked again over TCP.
const (
	readBatch   = 8
	smallBuffer = 4096
)

// read hands each answer to its waiter until the socket is closed.
func (s *udpSocket) read() {
	rc, err := s.conn.SyscallConn()
	if err != nil {
		s.readFailed(err)
		return
	}
	var (
		msgs  [readBatch]unix.Mmsghdr
		iovs  [readBatch]unix.Iovec
		bufs  [readBatch][]byte
		n     int
		errno syscall.Errno
	)
	bufs[0] = make([]byte, maxUDPAnswer)
	small := make([]byte, (readBatch-1)*smallBuffer)
	for i := 1; i < readBatch; i++ {
		bufs[i] = small[(i-1)*smallBuffer : i*smallBuffer]
	}
	for i := range msgs {
		iovs[i].Base = &bufs[i][0]
		iovs[i].SetLen(len(bufs[i]))
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.SetIovlen(1)
	}
	// Made once: a closure per call would allocate.
	recv := func(fd uintptr) bool {
		for {
			for i := range msgs {
				msgs[i].Hdr.Flags = 0
			}
			r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&msgs[0])), readBatch, unix.MSG_DONTWAIT, 0, 0)
			switch e {
			case 0:
				n = int(r)
				return true
			case unix.EINTR:
			case unix.EAGAIN:
				return false // wait until readable
			default:
				errno = e
				return true
			}
		}
	}
	for {
		n, errno = 0, 0
		if err := rc.Read(recv); err != nil {
			if !s.readFailed(err) {
				return
			}
			continue
		}
		if errno != 0 {
			// As net.UDPConn.Read reports it.
			err := &net.OpError{Op: "read", Net: "udp", Source: s.conn.LocalAddr(), Addr: s.conn.RemoteAddr(), Err: os.NewSyscallError("recvmmsg", errno)}
			if !s.readFailed(err) {
				return
			}
			continue
		}
		for i := range n {
			s.deliver(bufs[i][:msgs[i].Len], msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0)
		}
	}
}
