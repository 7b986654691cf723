package policy

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
	"time"
)

// errLookupPanicked is the list error of a lookup that panicked: a list
// error never refuses mail unless the list's on_error asks for a 451.
var errLookupPanicked = errors.New("the lookup panicked")

// panicked counts a panic recovered in the engine's DNS work (a check's
// batch of lookups, a background fetch of texts) and logs it with its
// stack, at most one line a second: a bug that panics on
// every check must not flood the log with stacks.
func (e *Engine) panicked(msg string, p any, attrs ...slog.Attr) {
	if e.opts.OnPanic != nil {
		e.opts.OnPanic()
	}
	now := time.Now().UnixNano()
	next := e.panicLogNext.Load()
	if now < next || !e.panicLogNext.CompareAndSwap(next, now+int64(time.Second)) {
		return
	}
	attrs = append(attrs, slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
	e.log.LogAttrs(context.Background(), slog.LevelError, msg, attrs...)
}
