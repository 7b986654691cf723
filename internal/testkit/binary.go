package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// builds are the commands built in this test run, in a directory Main
// removes at the end.
var builds struct {
	sync.Mutex
	dir   string
	paths map[string]string
	errs  map[string]error
}

// Main runs a package's tests (call it from TestMain) and removes the
// binaries Binary built for them.
func Main(m *testing.M) int {
	dir, err := os.MkdirTemp("", "blmilter-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	builds.Lock()
	builds.dir = dir
	builds.paths = map[string]string{}
	builds.errs = map[string]error{}
	builds.Unlock()
	code := m.Run()
	RemoveBinaries()
	return code
}

// RemoveBinaries removes what Binary built; Main does it at the end of the
// run, and a test binary about to be killed by -timeout may do it earlier.
func RemoveBinaries() {
	builds.Lock()
	defer builds.Unlock()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
}

// Binary builds the Go command pkg (an import path inside this module, such
// as "github.com/blmilter/blmilter/cmd/blmilter") once per test run and
// returns its path. The package's TestMain must call Main.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	builds.Lock()
	defer builds.Unlock()
	if builds.dir == "" {
		t.Fatal("testkit.Binary: the package's TestMain must run the tests through testkit.Main")
	}
	if p, ok := builds.paths[pkg]; ok {
		return p
	}
	if err, ok := builds.errs[pkg]; ok {
		t.Fatal(err)
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build %s: %v", pkg, err)
	}
	out := filepath.Join(builds.dir, filepath.Base(pkg))
	cmd := exec.Command(goTool, "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		err = fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
		builds.errs[pkg] = err
		t.Fatal(err)
	}
	builds.paths[pkg] = out
	return out
}

// moduleRoot is the directory of go.mod above the test's working directory
// (go test runs a package's tests in its own directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the test's directory")
		}
		dir = parent
	}
}
