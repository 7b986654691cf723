package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// crashChildEnv makes the test binary run crashChild instead of the tests:
// the durability test re-executes itself as the process it kills.
const crashChildEnv = "BLMILTER_STORE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		os.Exit(crashChild(path))
	}
	os.Exit(m.Run())
}

// Child-side bounds: the parent kills the child long before either.
const (
	crashMaxRequests = 50000
	crashMaxTime     = 60 * time.Second
	crashWorkers     = 4
)

// crashChild opens the store and creates removal requests from a few
// goroutines at once, printing "ack ID EMAIL" after each CreateRequest has
// returned: from that moment the request counts as acknowledged.
func crashChild(path string) int {
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	var (
		mu   sync.Mutex
		next int
		wg   sync.WaitGroup
	)
	deadline := time.Now().Add(crashMaxTime)
	out := bufio.NewWriter(os.Stdout)
	for range crashWorkers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= crashMaxRequests {
					return
				}
				email := fmt.Sprintf("burst%d@example.org", i)
				r, err := s.CreateRequest(ctx, NewRequest{IP: fmt.Sprintf("192.0.2.%d", i%250+1), Email: email, Reason: "burst"})
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				// One write per line, flushed at once: a line the parent
				// reads was printed after the commit returned.
				mu.Lock()
				fmt.Fprintf(out, "ack %d %s\n", r.ID, email)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Println("done")
	s.Close()
	return 0
}

// TestDurabilityKill9 kills (SIGKILL) a process in the middle of a burst of
// removal requests and checks that every request it acknowledged is in the
// database afterwards.
func TestDurabilityKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	kill := func() {
		if !killed {
			killed = true
			cmd.Process.Kill() // SIGKILL: no deferred code, no Close, no flush
		}
	}
	defer kill()

	// Kill after this many acks, or after the time bound, whichever is first.
	const killAfter = 300
	timer := time.AfterFunc(30*time.Second, kill)
	defer timer.Stop()

	acked := map[int64]string{}
	finished := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if line == "done" {
			finished = true
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "ack" {
			t.Fatalf("child said %q", line)
		}
		id, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		acked[id] = f[2]
		if len(acked) == killAfter {
			kill()
		}
		// Lines already in the pipe are still read: they were acknowledged
		// before the kill.
	}
	cmd.Wait()
	if finished {
		t.Fatal("the child finished its burst before it was killed; nothing was tested")
	}
	if len(acked) < killAfter {
		t.Fatalf("only %d acks before the time bound", len(acked))
	}

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	defer s.Close()
	var integrity string
	if err := s.db.QueryRow(`PRAGMA integrity_check`).Scan(&integrity); err != nil || integrity != "ok" {
		t.Errorf("integrity_check: %q, %v", integrity, err)
	}
	all, err := s.Requests(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	have := map[int64]RemovalRequest{}
	for _, r := range all {
		have[r.ID] = r
	}
	missing := 0
	for id, email := range acked {
		r, ok := have[id]
		switch {
		case !ok:
			missing++
		case r.Email != email || r.Status != StatusPending:
			t.Errorf("request %d: %s %s, acknowledged as %s pending", id, r.Email, r.Status, email)
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged requests lost by kill -9", missing, len(acked))
	}
	t.Logf("%d acknowledged, %d in the database after kill -9 (the rest were in flight)", len(acked), len(all))
}
