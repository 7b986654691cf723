package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/blmilter/blmilter/internal/testkit"
)

func TestBuildVersion(t *testing.T) {
	vcs := func(rev, when, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: when}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "3b89d1e869bba6b95a472fdf1b2c03139d45fc0c"
	for _, tc := range []struct {
		name     string
		main     string
		settings []debug.BuildSetting
		want     string
	}{
		{"go install of a release", "v1.2.3", nil, "v1.2.3"},
		{"checkout build, Go 1.24 and later", "v0.0.0-20261201150049-3b89d1e869bb+dirty", vcs(rev, "2026-12-01T15:00:49Z", "true"), "v0.0.0-20261201150049-3b89d1e869bb+dirty"},
		{"checkout build, older Go", "(devel)", vcs(rev, "2026-12-01T16:00:49+01:00", "false"), "v0.0.0-20261201150049-3b89d1e869bb"},
		{"checkout build with changes, older Go", "(devel)", vcs(rev, "2026-12-01T15:00:49Z", "true"), "v0.0.0-20261201150049-3b89d1e869bb+dirty"},
		{"revision without a time", "(devel)", []debug.BuildSetting{{Key: "vcs.revision", Value: rev}}, "devel-3b89d1e869bb"},
		{"no version control", "(devel)", nil, "devel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/blmilter/blmilter", Version: tc.main}, Settings: tc.settings}
			if got := buildVersion(bi); got != tc.want {
				t.Errorf("buildVersion = %q, want %q", got, tc.want)
			}
		})
	}
}

// A version given at build time (as the Debian package's build does) is
// what "blmilter version" prints and what blmilter_build_info carries.
func TestVersionStampedAtBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it as a daemon")
	}
	dir := t.TempDir()
	const stamp = "v9.8.7-test"
	bin := filepath.Join(dir, "blmilter")
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+stamp, "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "blmilter "+stamp+" (go") {
		t.Fatalf("blmilter version: %q, %v", out, err)
	}

	addr := testkit.FreeAddr(t)
	cfg := filepath.Join(dir, "blmilter.toml")
	writeFile(t, filepath.Join(dir, "local.txt"), "")
	writeFile(t, cfg, fmt.Sprintf("[milter]\nlisten = \"\"\n\n[web]\nlisten = %q\n\n[store]\npath = %q\n\n[[list]]\nname = \"local\"\nfile = \"local.txt\"\n", addr, filepath.Join(dir, "blmilter.db")))
	startDaemon(t, bin, cfg, "http://"+addr)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `blmilter_build_info{version="` + stamp + `"} 1`; !strings.Contains(string(body), want) {
		t.Errorf("/metrics has no %s", want)
	}
}
