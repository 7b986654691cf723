package milter

import (
	"log/slog"
	"time"
)

// Options configure a Server. Zero values take the defaults below.
type Options struct {
	Logger *slog.Logger
	// ReadTimeout bounds the wait for each MTA command, from the moment
	// blmilter starts waiting for it until its last byte: idle time and a
	// slow packet alike. Default 2m.
	ReadTimeout time.Duration
	// WriteTimeout bounds each reply. Default 10s.
	WriteTimeout time.Duration
	// MaxConnections is the most MTA connections served at once; a
	// connection beyond it is closed at once. Default 500.
	MaxConnections int
	// SessionTimeout bounds a whole connection, however busy. Default 30m.
	SessionTimeout time.Duration
	// OnPanic, when set, is called once for every panic recovered while
	// serving a client (for blmilter_panics_total).
	OnPanic func()
}

const (
	defaultReadTimeout    = 2 * time.Minute
	defaultWriteTimeout   = 10 * time.Second
	defaultMaxConnections = 500
	defaultSessionTimeout = 30 * time.Minute
)

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = defaultReadTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = defaultWriteTimeout
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = defaultMaxConnections
	}
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = defaultSessionTimeout
	}
	return o
}
