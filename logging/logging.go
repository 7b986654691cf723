// Package logging builds blmilter's log/slog logger (text or JSON, stderr
// or a file that SIGUSR1 reopens for logrotate, a level a reload may
// change), and logs list errors at warning level without letting a dead
// list flood the log.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/blmilter/blmilter/policy"
)

// Options are the logger's settings; cmd/blmilter fills them from [log].
type Options struct {
	Level  slog.Level
	Format string // "text" (logfmt) or "json"
	File   string // "" logs to stderr
}

// Output is where log lines go: stderr, or a file that can be reopened. It
// also holds the level, which SetLevel changes.
type Output struct {
	path   string
	stderr io.Writer
	level  slog.LevelVar
	mu     sync.Mutex
	f      *os.File
}

// File is the log file; "" when the log goes to stderr.
func (o *Output) File() string { return o.path }

// SetLevel changes the lowest level the logger writes, at once.
func (o *Output) SetLevel(l slog.Level) { o.level.Set(l) }

// Write writes one log line to the current file.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		return o.stderr.Write(p)
	}
	return o.f.Write(p)
}

// Reopen opens the log file again, so logrotate can move the old one away
// (its postrotate sends SIGUSR1). On stderr it does nothing.
func (o *Output) Reopen() error {
	if o.path == "" {
		return nil
	}
	f, err := os.OpenFile(o.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("reopen log file %s: %w", o.path, err)
	}
	o.mu.Lock()
	old := o.f
	o.f = f
	o.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Close closes the log file.
func (o *Output) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		return nil
	}
	err := o.f.Close()
	o.f = nil
	return err
}

// New builds the logger, writing to opts.File or else to stderr. The Output
// is returned so SIGUSR1 can reopen it and a reload change the level.
func New(opts Options, stderr io.Writer) (*slog.Logger, *Output, error) {
	if stderr == nil {
		stderr = os.Stderr
	}
	out := &Output{path: opts.File, stderr: stderr}
	out.level.Set(opts.Level)
	if err := out.Reopen(); err != nil {
		return nil, nil, err
	}
	hopts := &slog.HandlerOptions{Level: &out.level}
	if opts.Format == "json" {
		return slog.New(slog.NewJSONHandler(out, hopts)), out, nil
	}
	return slog.New(slog.NewTextHandler(out, hopts)), out, nil
}

// ListErrors is a policy.Observer that logs list errors at warning level,
// at most one line per list per interval, with the number of errors the
// line stands for: a dead list answering nothing must not flood the log.
type ListErrors struct {
	Log      *slog.Logger
	Interval time.Duration // default 1m
	Now      func() time.Time

	mu    sync.Mutex
	lists map[string]*errorWindow
}

type errorWindow struct {
	last       time.Time
	suppressed int
}

// ObserveCheck is part of policy.Observer; the decision line is the front
// end's.
func (l *ListErrors) ObserveCheck(policy.Verdict) {}

// ObserveAnswer logs a list error, rate-limited per list, with the list's
// health state then (healthy, degraded, unproven: not yet checked).
func (l *ListErrors) ObserveAnswer(list, result string, state policy.ListState, took time.Duration) {
	if result != "error" {
		return
	}
	now := time.Now
	if l.Now != nil {
		now = l.Now
	}
	interval := l.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	t := now()
	l.mu.Lock()
	if l.lists == nil {
		l.lists = map[string]*errorWindow{}
	}
	w := l.lists[list]
	if w == nil {
		w = &errorWindow{}
		l.lists[list] = w
	}
	if !w.last.IsZero() && t.Sub(w.last) < interval {
		w.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := w.suppressed
	w.last, w.suppressed = t, 0
	l.mu.Unlock()
	l.Log.Warn("list error: the list did not answer for a client; never counted as a listing",
		"list", list, "list_state", state.String(), "took", took, "errors_since_last_line", suppressed+1)
}
