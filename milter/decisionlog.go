package milter

import (
	"context"
	"fmt"
	"log/slog"
	"os"
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
// log line costs as much as the rest of a cached check). The writer wakes
// at most once per gatherFor and writes what gathered since, rather than
// once per line: waking a goroutine for every session costs the sessions
// more than the line itself. Lines keep the time of the decision. When
// the queue is full, or the server has stopped, a line is written by the
// caller: lines are never dropped.
type decisionLog struct {
	logger *slog.Logger

	mu      sync.Mutex
	running bool
	stopped bool
	queue   []decisionLine
	spare   []decisionLine // the writer's last batch, reused
	wake    chan struct{}  // a line came into an empty queue
	quit    chan struct{}
	done    chan struct{}
}

const (
	gatherFor = 20 * time.Millisecond
	maxQueued = 4096
)

func newDecisionLog(logger *slog.Logger) *decisionLog {
	return &decisionLog{logger: logger}
}

func (l *decisionLog) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running || l.stopped {
		return
	}
	l.running = true
	l.wake = make(chan struct{}, 1)
	l.quit = make(chan struct{})
	l.done = make(chan struct{})
	go l.run()
}

func (l *decisionLog) run() {
	defer close(l.done)
	t := time.NewTimer(gatherFor)
	t.Stop()
	for {
		select {
		case <-l.wake:
		case <-l.quit:
			l.writeQueued()
			return
		}
		t.Reset(gatherFor)
		select {
		case <-t.C:
		case <-l.quit:
			t.Stop()
			l.writeQueued()
			return
		}
		l.writeQueued()
	}
}

func (l *decisionLog) writeQueued() {
	l.mu.Lock()
	batch := l.queue
	l.queue = l.spare[:0]
	l.mu.Unlock()
	for i := range batch {
		l.write(batch[i])
	}
	clear(batch) // the verdicts' slices may be large: let them go
	l.mu.Lock()
	l.spare = batch
	l.mu.Unlock()
}

// stop writes the lines queued and stops the writer for good.
func (l *decisionLog) stop() {
	l.mu.Lock()
	if !l.running {
		l.stopped = true
		l.mu.Unlock()
		return
	}
	l.running = false
	l.stopped = true
	close(l.quit)
	l.mu.Unlock()
	<-l.done
}

func (l *decisionLog) log(d decisionLine) {
	if !l.logger.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	l.mu.Lock()
	if !l.running || len(l.queue) >= maxQueued {
		l.mu.Unlock()
		l.write(d)
		return
	}
	l.queue = append(l.queue, d)
	first := len(l.queue) == 1
	l.mu.Unlock()
	if first {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

func (l *decisionLog) write(d decisionLine) {
	defer func() {
		// A log handler that fails loses this line, not the process
		// (this goroutine serves every session's lines).
		if p := recover(); p != nil {
			fmt.Fprintf(os.Stderr, "blmilter: milter decision line for %s lost: log handler panicked: %v\n", d.verdict.IP, p)
		}
	}()
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
