package policy

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/blmilter/blmilter/dnsbl"
)

// errLookupPanicked is the list error of a lookup that panicked.
var errLookupPanicked = errors.New("the lookup panicked")

// lookup asks list l about ip on a goroutine of the check's own. A panic
// there would end the process, not one client's check, so it is recovered
// and taken as a list error, which never refuses mail unless the list's
// on_error asks for a 451.
func (e *Engine) lookup(ctx context.Context, l *list, ip netip.Addr, all bool) (res dnsbl.Result) {
	defer func() {
		if p := recover(); p != nil {
			e.panicked("DNS lookup panicked; taken as a list error", p, slog.String("list", l.cfg.Name), slog.String("ip", ip.String()))
			res = dnsbl.Result{Status: dnsbl.Error, Err: errLookupPanicked}
		}
	}()
	return e.resolver.Lookup(ctx, dnsbl.Query{Zone: l.cfg.Zone, IP: ip, Timeout: l.cfg.Timeout, NoTXT: !all})
}

// panicked counts a panic recovered in one of the engine's goroutines and
// logs it with its stack, at most one line a second: a bug that panics on
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
