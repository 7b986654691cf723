package web

import (
	"log/slog"
	"net/http"
	"runtime/debug"
)

// RecoverPanics serves next, and turns a panic in it into a 500 for that
// request alone: the stack is logged once, onPanic (when set) counts it,
// and the server goes on. A panic after the response started aborts the
// connection instead, so the client never takes half a page for a whole
// one. http.ErrAbortHandler keeps its meaning.
func RecoverPanics(next http.Handler, log *slog.Logger, onPanic func()) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw := &startedWriter{ResponseWriter: w}
		defer func() {
			p := recover()
			if p == nil {
				return
			}
			if p == http.ErrAbortHandler {
				panic(p)
			}
			log.Error("web: request handler panicked", "method", r.Method, "path", r.URL.Path,
				"panic", p, "stack", string(debug.Stack()))
			if onPanic != nil {
				onPanic()
			}
			if tw.started {
				// net/http logs nothing for this one: the stack is above.
				panic(http.ErrAbortHandler)
			}
			h := w.Header()
			for k := range h {
				delete(h, k)
			}
			h.Set("Content-Type", "text/plain; charset=utf-8")
			h.Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte("internal error\n"))
		}()
		next.ServeHTTP(tw, r)
	})
}

// startedWriter notes whether the response has started.
type startedWriter struct {
	http.ResponseWriter
	started bool
}

func (w *startedWriter) WriteHeader(code int) {
	w.started = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *startedWriter) Write(b []byte) (int, error) {
	w.started = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *startedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
