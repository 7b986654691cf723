//go:build !linux

package dnsbl

// read hands each answer to its waiter until the socket is closed.
func (s *udpSocket) read() {
	buf := make([]byte, maxUDPAnswer)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			if !s.readFailed(err) {
				return
			}
			continue
		}
		s.deliver(buf[:n], false)
	}
}

// sender is empty where queries go out one write at a time.
type sender struct{}

// send writes pkts, in order, as one datagram each. It returns how many
// went out; when that is fewer than len(pkts), err says why pkts[sent]
// did not (the ones after it are not tried).
func (s *udpSocket) send(pkts [][]byte) (sent int, err error) {
	for _, p := range pkts {
		if _, err := s.conn.Write(p); err != nil {
			return sent, err
		}
		sent++
	}
	return sent, nil
}
