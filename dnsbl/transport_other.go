//go:build !linux

package dnsbl

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
