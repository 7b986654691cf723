package milter

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// limitedLog logs events by kind, at most one line per kind per interval,
// so that a hostile or broken client cannot flood the log. Each line says
// how many events of its kind it stands for: itself and those held back
// since the previous line. Held-back events are reported at the latest
// when the interval ends, with the details of the last of them. Kinds are
// fixed words, so the set of kinds stays small.
type limitedLog struct {
	logger   *slog.Logger
	interval time.Duration

	mu    sync.Mutex
	kinds map[string]*limitedKind
}

type limitedKind struct {
	next      time.Time // no line before this
	held      int       // events since the last line, not logged yet
	flushing  bool      // a timer will log the held events
	lastLevel slog.Level
	lastMsg   string
	lastAttrs []slog.Attr
}

func newLimitedLog(logger *slog.Logger, interval time.Duration) *limitedLog {
	return &limitedLog{logger: logger, interval: interval, kinds: map[string]*limitedKind{}}
}

func (l *limitedLog) log(level slog.Level, kind, msg string, attrs ...slog.Attr) {
	if !l.logger.Enabled(context.Background(), level) {
		return
	}
	now := time.Now()
	l.mu.Lock()
	k := l.kinds[kind]
	if k == nil {
		k = &limitedKind{}
		l.kinds[kind] = k
	}
	if now.Before(k.next) {
		k.held++
		k.lastLevel, k.lastMsg, k.lastAttrs = level, msg, attrs
		if !k.flushing {
			k.flushing = true
			time.AfterFunc(k.next.Sub(now), func() { l.flush(kind) })
		}
		l.mu.Unlock()
		return
	}
	count := k.held + 1
	k.held = 0
	k.lastAttrs = nil
	k.next = now.Add(l.interval)
	l.mu.Unlock()
	l.write(level, kind, msg, count, attrs)
}

// flush logs the events of kind held back during the interval that ended.
func (l *limitedLog) flush(kind string) {
	l.mu.Lock()
	k := l.kinds[kind]
	k.flushing = false
	if k.held == 0 {
		l.mu.Unlock()
		return
	}
	count, level, msg, attrs := k.held, k.lastLevel, k.lastMsg, k.lastAttrs
	k.held = 0
	k.lastAttrs = nil
	k.next = time.Now().Add(l.interval)
	l.mu.Unlock()
	l.write(level, kind, msg, count, attrs)
}

func (l *limitedLog) write(level slog.Level, kind, msg string, count int, attrs []slog.Attr) {
	all := make([]slog.Attr, 0, len(attrs)+2)
	all = append(all, slog.String("kind", kind))
	all = append(all, attrs...)
	all = append(all, slog.Int("count", count))
	l.logger.LogAttrs(context.Background(), level, msg, all...)
}
