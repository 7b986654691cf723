package milter

import (
	"fmt"
	"net"
	"os"
	"strings"

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
	network, addr, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		return listenUnix(addr, mode)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("milter: listen on %s: %w", spec, err)
	}
	return ln, nil
}

// ParseSpec turns a milter socket spec into a network ("tcp", "tcp4",
// "tcp6" or "unix") and an address for net.Listen / net.Dial.
func ParseSpec(spec string) (network, addr string, err error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("milter: socket %q: want inet:HOST:PORT, inet6:[ADDR]:PORT or unix:PATH", spec)
	}
	switch strings.ToLower(kind) {
	case "unix", "local":
		if !strings.HasPrefix(rest, "/") && !strings.HasPrefix(rest, ".") {
			// A relative name is almost always a typo for an inet spec;
			// "./name" states the intent.
			return "", "", fmt.Errorf("milter: socket %q: unix socket path must be absolute (or start with ./)", spec)
		}
		return "unix", rest, nil
	case "inet", "inet6":
		network = "tcp"
		if strings.EqualFold(kind, "inet6") {
			network = "tcp6"
		}
		host, port, err := splitHostPort(rest)
		if err != nil {
			return "", "", fmt.Errorf("milter: socket %q: %w", spec, err)
		}
		if network == "tcp" && strings.Contains(host, ":") {
			network = "tcp6"
		}
		return network, net.JoinHostPort(host, port), nil
	default:
		return "", "", fmt.Errorf("milter: socket %q: unknown kind %q, want inet, inet6 or unix", spec, kind)
	}
}

// splitHostPort accepts HOST:PORT, [ADDR]:PORT, PORT@HOST (Sendmail) and a
// bare PORT (all addresses, as in Sendmail).
func splitHostPort(s string) (host, port string, err error) {
	if p, h, ok := strings.Cut(s, "@"); ok {
		host, port = strings.Trim(h, "[]"), p
	} else if isPort(s) {
		port = s
	} else {
		host, port, err = net.SplitHostPort(s)
		if err != nil {
			return "", "", fmt.Errorf("want HOST:PORT, [ADDR]:PORT or PORT@HOST: %w", err)
		}
	}
	if !isPort(port) {
		return "", "", fmt.Errorf("bad port %q", port)
	}
	return host, port, nil
}

func isPort(s string) bool {
	if s == "" || len(s) > 5 {
		return false
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	ln, err := sockets.ListenUnix(path, mode)
	if err != nil {
		return nil, fmt.Errorf("milter: %w", err)
	}
	return ln, nil
}
