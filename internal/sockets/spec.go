package sockets

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// ParseMilterSpec turns a milter socket spec into a network ("tcp", "tcp4",
// "tcp6" or "unix") and an address for net.Listen / net.Dial.
func ParseMilterSpec(spec string) (network, addr string, err error) {
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
		return "", "", fmt.Errorf("milter: socket %q: unknown kind %q; want inet:HOST:PORT, inet6:[ADDR]:PORT or unix:PATH", spec, kind)
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

// ParsePolicySpec turns a policy server listen address into a network and
// an address: "host:port", "inet:host:port", "inet6:[addr]:port",
// "tcp:host:port", "unix:/path" or a bare "/path", as Postfix writes
// check_policy_service endpoints.
func ParsePolicySpec(spec string) (network, addr string, err error) {
	scheme, rest, found := strings.Cut(spec, ":")
	switch {
	case spec == "":
		return "", "", errors.New("policyd: empty listen address")
	case strings.HasPrefix(spec, "/"):
		return "unix", spec, nil
	case found && scheme == "unix":
		if rest == "" {
			return "", "", fmt.Errorf("policyd: listen %q: empty socket path", spec)
		}
		return "unix", rest, nil
	case found && (scheme == "inet" || scheme == "tcp"):
		return "tcp", rest, nil
	case found && scheme == "inet6":
		return "tcp6", rest, nil
	}
	if _, _, err := net.SplitHostPort(spec); err != nil {
		return "", "", fmt.Errorf("policyd: listen %q: want host:port, inet:host:port or unix:/path: %w", spec, err)
	}
	return "tcp", spec, nil
}
