package milter

import (
	"log/slog"
	"time"

	"github.com/blmilter/blmilter/traps"
)

// Options are the milter server's settings; cmd/blmilter fills them from
// the [milter] section. The durations and MaxConnections must be positive:
// the server keeps no defaults of its own.
type Options struct {
	Logger *slog.Logger
	// ReadTimeout bounds the wait for each MTA command, from the moment
	// blmilter starts waiting for it until its last byte: idle time and a
	// slow packet alike.
	ReadTimeout time.Duration
	// WriteTimeout bounds each reply.
	WriteTimeout time.Duration
	// SessionTimeout bounds a whole MTA connection, however busy.
	SessionTimeout time.Duration
	// MaxConnections is the most MTA connections served at once; a
	// connection beyond it is closed at once.
	MaxConnections int
	// OnPanic, when set, is called once for every panic recovered while
	// serving a client (for blmilter_panics_total).
	OnPanic func()
	// Traps, when set, returns the current spam traps and delist
	// addresses (nil: none). A connection asks when it negotiates and
	// keeps them: the HELO stage is negotiated only when there are some,
	// and SMFIF_DELRCPT only with delist addresses.
	Traps func() *traps.Traps
}
