package sockets

import (
	"strings"
	"testing"
)

func TestParseMilterSpec(t *testing.T) {
	tests := []struct {
		spec, network, addr, err string
	}{
		{spec: "inet:127.0.0.1:8895", network: "tcp", addr: "127.0.0.1:8895"},
		{spec: "inet:[::1]:8895", network: "tcp6", addr: "[::1]:8895"},
		{spec: "inet:8895@127.0.0.1", network: "tcp", addr: "127.0.0.1:8895"},
		{spec: "inet:localhost:8895", network: "tcp", addr: "localhost:8895"},
		{spec: "inet:8895", network: "tcp", addr: ":8895"},
		{spec: "inet6:[::1]:8895", network: "tcp6", addr: "[::1]:8895"},
		{spec: "inet6:8895@::1", network: "tcp6", addr: "[::1]:8895"},
		{spec: "inet6:8895@[::1]", network: "tcp6", addr: "[::1]:8895"},
		{spec: "unix:/run/blmilter/milter.sock", network: "unix", addr: "/run/blmilter/milter.sock"},
		{spec: "local:/run/blmilter/milter.sock", network: "unix", addr: "/run/blmilter/milter.sock"},
		{spec: "UNIX:/tmp/x.sock", network: "unix", addr: "/tmp/x.sock"},
		{spec: "127.0.0.1:8895", err: "unknown kind"},
		{spec: "/run/milter.sock", err: "want inet:HOST:PORT"},
		{spec: "unix:", err: "want inet:HOST:PORT"},
		{spec: "unix:milter.sock", err: "must be absolute"},
		{spec: "inet:127.0.0.1", err: "want HOST:PORT"},
		{spec: "inet:127.0.0.1:99999", err: "bad port"},
		{spec: "inet:127.0.0.1:smtp", err: "bad port"},
		{spec: "tcp:127.0.0.1:8895", err: "unknown kind"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			network, addr, err := ParseMilterSpec(tt.spec)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseMilterSpec(%q) = %q, %q, %v; want error containing %q", tt.spec, network, addr, err, tt.err)
				}
				return
			}
			if err != nil || network != tt.network || addr != tt.addr {
				t.Fatalf("ParseMilterSpec(%q) = %q, %q, %v; want %q, %q", tt.spec, network, addr, err, tt.network, tt.addr)
			}
		})
	}
}
