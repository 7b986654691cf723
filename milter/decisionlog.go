package milter

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/blmilter/blmilter/policy"
)

// decisionLine is one decision, to be logged.
type decisionLine struct {
	when    time.Time
	verdict policy.Verdict // read-only: its slices may be shared with the cache
	stage   string
	queueID string
	ref     string
	exempt  string
}

// decisionLog writes the decision lines from one goroutine, so that
// formatting a line does not delay the reply the MTA is waiting for (the
// log line costs as much as the rest of a cached check). Lines keep the
// time of the decision. When the queue is full, or the server has stopped,
// a line is written by the caller: lines are never dropped.
type decisionLog struct {
	logger *slog.Logger

	mu      sync.RWMutex
	running bool
	lines   chan decisionLine
	done    chan struct{}
}

func newDecisionLog(logger *slog.Logger) *decisionLog {
	return &decisionLog{logger: logger}
}

func (l *decisionLog) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running || l.lines != nil {
		return // running, or stopped for good
	}
	l.running = true
	l.lines = make(chan decisionLine, 256)
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		for d := range l.lines {
			l.write(d)
		}
	}()
}

// stop writes the lines queued and stops the writer.
func (l *decisionLog) stop() {
	l.mu.Lock()
	if !l.running {
		l.mu.Unlock()
		return
	}
	l.running = false
	close(l.lines) // no sender holds the read lock now
	l.mu.Unlock()
	<-l.done
}

func (l *decisionLog) log(d decisionLine) {
	if !l.logger.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	l.mu.RLock()
	if l.running {
		select {
		case l.lines <- d:
			l.mu.RUnlock()
			return
		default:
		}
	}
	l.mu.RUnlock()
	l.write(d)
}

func (l *decisionLog) write(d decisionLine) {
	attrs := policy.LogAttrs(d.verdict)
	attrs = append(attrs, slog.String("stage", d.stage))
	if d.queueID != "" {
		attrs = append(attrs, slog.String("queue_id", d.queueID))
	}
	if d.ref != "" {
		attrs = append(attrs, slog.String("ref", d.ref))
	}
	if d.exempt != "" {
		attrs = append(attrs, slog.String("accepted_for", d.exempt))
	}
	r := slog.NewRecord(d.when, slog.LevelInfo, "milter decision", 0)
	r.AddAttrs(attrs...)
	l.logger.Handler().Handle(context.Background(), r)
}
