package milter

import (
	"log/slog"
	"time"
)

// Options are the milter server's settings; cmd/blmilter fills them from
// the [milter] section.
type Options struct {
	Logger       *slog.Logger
	ReadTimeout  time.Duration // idle time allowed between MTA commands
	WriteTimeout time.Duration // time allowed to write one reply
	// SessionTimeout bounds a whole MTA connection, however active.
	SessionTimeout time.Duration
	// MaxConnections is the most MTA connections served at once.
	MaxConnections int
}
