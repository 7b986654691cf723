//go:build !linux

package zone

import "net"

// readUDPBatched reads one datagram at a time where recvmmsg is not known.
func (s *Server) readUDPBatched(uc *net.UDPConn) error { return s.readUDP(uc) }
