package milter

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/blmilter/blmilter/internal/sockets"
)

// Listen opens the milter socket named by spec, in the forms Postfix and
// Sendmail use for the same endpoint:
//
//	inet:127.0.0.1:8895     inet:[::1]:8895     inet:8895@127.0.0.1
//	inet6:[::1]:8895        inet6:8895@::1
//	unix:/run/blmilter/milter.sock              local:/run/blmilter/milter.sock
//
// A unix socket left behind by a previous run is removed only when nothing
// accepts connections on it; mode (when not 0) is applied to a new socket.
func Listen(spec string, mode os.FileMode) (net.Listener, error) {
	network, addr, err := sockets.ParseMilterSpec(spec)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		return listenUnix(addr, mode)
	}
	// No TCP keepalive on MTA connections: the read, write and session
	// timeouts end a dead peer's session already, and setting keepalive
	// up costs four system calls per connection, one per SMTP session.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return nil, fmt.Errorf("milter: listen on %s: %w", spec, err)
	}
	return ln, nil
}

func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	ln, err := sockets.ListenUnix(path, mode)
	if err != nil {
		return nil, fmt.Errorf("milter: %w", err)
	}
	return ln, nil
}
