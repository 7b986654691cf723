package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blmilter/blmilter/policy"
)

func TestListErrorsRateLimited(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	l := &ListErrors{Log: slog.New(slog.NewJSONHandler(&buf, nil)), Interval: time.Minute, Now: func() time.Time { return now }}
	for range 1000 {
		l.ObserveAnswer("Dead BL", "error", policy.ListHealthy, time.Second)
		now = now.Add(10 * time.Millisecond) // 1000 errors in 10 s
	}
	l.ObserveAnswer("Other BL", "error", policy.ListUnproven, time.Second)
	l.ObserveAnswer("Dead BL", "clean", policy.ListHealthy, time.Millisecond)
	now = now.Add(time.Minute)
	l.ObserveAnswer("Dead BL", "error", policy.ListDegraded, time.Second)

	var lines []map[string]any
	for _, ln := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(ln), &m); err != nil {
			t.Fatalf("line %q: %v", ln, err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3 (one per list, then one after the interval):\n%s", len(lines), buf.String())
	}
	if lines[0]["list"] != "Dead BL" || lines[0]["level"] != "WARN" || lines[0]["errors_since_last_line"] != 1.0 || lines[0]["list_state"] != "healthy" {
		t.Errorf("first line %v", lines[0])
	}
	// A list not yet proven by a probe is not a degraded one.
	if lines[1]["list"] != "Other BL" || lines[1]["list_state"] != "unproven" {
		t.Errorf("second line %v", lines[1])
	}
	if lines[2]["errors_since_last_line"] != 1000.0 || lines[2]["list_state"] != "degraded" {
		t.Errorf("third line stands for %v errors, want 1000 (999 suppressed + itself), and a degraded list: %v", lines[2]["errors_since_last_line"], lines[2])
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "blmilter.log")
	log, out, err := New(Options{Level: slog.LevelInfo, Format: "json", File: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	log.Info("before rotation")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	log.Info("still the old file")
	if err := out.Reopen(); err != nil {
		t.Fatal(err)
	}
	log.Info("after rotation")
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(old), "before rotation") || !strings.Contains(string(old), "still the old file") {
		t.Errorf("rotated file: %s", old)
	}
	if !strings.Contains(string(cur), "after rotation") || strings.Contains(string(cur), "before") {
		t.Errorf("new file: %s", cur)
	}
	log.Debug("below the level")
	if cur, _ := os.ReadFile(path); strings.Contains(string(cur), "below the level") {
		t.Error("debug line written at level info")
	}
	// A reload changes the level of the running logger.
	out.SetLevel(slog.LevelDebug)
	log.Debug("debug after the level changed")
	if cur, _ := os.ReadFile(path); !strings.Contains(string(cur), "debug after the level changed") {
		t.Error("debug line not written after SetLevel(debug)")
	}
}

func TestBadFile(t *testing.T) {
	_, _, err := New(Options{File: filepath.Join(t.TempDir(), "missing-dir", "x.log")}, nil)
	if err == nil || !strings.Contains(err.Error(), "missing-dir") {
		t.Fatalf("err = %v, want one naming the path", err)
	}
}
