package contrib

import (
	"bufio"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/blmilter/blmilter/config"
)

// instruction is one line of a Dockerfile, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case: FROM, COPY, ...
	args []string
}

func readDockerfile(t *testing.T, name string) []instruction {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []instruction
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (l == "" || strings.HasPrefix(l, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if more, ok := strings.CutSuffix(l, `\`); ok {
			cur.WriteString(more + " ")
			continue
		}
		cur.WriteString(l)
		fields := strings.Fields(cur.String())
		out = append(out, instruction{line: start, cmd: strings.ToUpper(fields[0]), args: fields[1:]})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur.Len() > 0 {
		t.Fatalf("%s: ends in a continuation line", name)
	}
	return out
}

// The Dockerfile builds the static binary from this repository, runs it as
// a user that is not root on a distroless base, with the shipped config, and
// exposes the ports and the state volume that config uses. No Docker engine
// runs here, so this reads the file as Docker would and checks what it
// refers to.
func TestDockerfile(t *testing.T) {
	const root = ".."
	ins := readDockerfile(t, filepath.Join(root, "Dockerfile"))
	known := []string{"FROM", "WORKDIR", "COPY", "RUN", "ARG", "ENV", "USER", "VOLUME", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"}
	ignored := dockerignore(t, filepath.Join(root, ".dockerignore"))

	var stages []string // FROM images, in order
	var copied = map[string]string{}
	var user, workdir string
	var volumes, exposed []string
	var entrypoint, cmd []string
	var built bool
	for _, in := range ins {
		if !slices.Contains(known, in.cmd) {
			t.Errorf("line %d: unknown instruction %s", in.line, in.cmd)
			continue
		}
		switch in.cmd {
		case "FROM":
			stages = append(stages, in.args[0])
			user = "" // each stage starts as root
		case "RUN":
			run := strings.Join(in.args, " ")
			if strings.Contains(run, "go build") {
				built = true
				if !strings.Contains(run, "CGO_ENABLED=0") || !strings.Contains(run, "./cmd/blmilter") || !strings.Contains(run, "-X main.version=") {
					t.Errorf("line %d: the build is not a static, version-stamped build of ./cmd/blmilter: %s", in.line, run)
				}
			}
		case "COPY":
			var from string
			var srcs []string
			for _, a := range in.args {
				if v, ok := strings.CutPrefix(a, "--from="); ok {
					from = v
				} else if !strings.HasPrefix(a, "--") {
					srcs = append(srcs, a)
				}
			}
			dst := srcs[len(srcs)-1]
			for _, src := range srcs[:len(srcs)-1] {
				copied[dst] = src
				if from != "" || src == "." {
					continue
				}
				if _, err := os.Stat(filepath.Join(root, src)); err != nil {
					t.Errorf("line %d: COPY %s: %v", in.line, src, err)
				}
				if ignored(src) {
					t.Errorf("line %d: COPY %s, which .dockerignore leaves out of the context", in.line, src)
				}
			}
		case "USER":
			user = in.args[0]
		case "WORKDIR":
			workdir = in.args[0]
		case "VOLUME":
			volumes = append(volumes, jsonArgs(in.args)...)
		case "EXPOSE":
			exposed = append(exposed, in.args...)
		case "ENTRYPOINT":
			entrypoint = jsonArgs(in.args)
		case "CMD":
			cmd = jsonArgs(in.args)
		}
	}
	for _, must := range []string{"go.mod", "go.sum", "cmd/blmilter", "config/default.toml", "docs/config.md"} {
		if ignored(must) {
			t.Errorf(".dockerignore leaves %s out: the build needs it", must)
		}
	}
	if !built {
		t.Error("no go build")
	}
	if len(stages) < 2 {
		t.Fatalf("stages %v: want a build stage and a runtime stage", stages)
	}
	if base := stages[len(stages)-1]; base != "scratch" && !strings.HasPrefix(base, "gcr.io/distroless/static") {
		t.Errorf("runtime base %s: want distroless static or scratch", base)
	}
	if goImage := stages[0]; !strings.HasPrefix(goImage, "golang:"+goMinor(t, filepath.Join(root, "go.mod"))) {
		t.Errorf("build stage %s does not match go.mod's Go version", goImage)
	}
	if user == "" || user == "root" || user == "0" || strings.HasPrefix(user, "0:") {
		t.Errorf("the image runs as %q: want a user that is not root", user)
	}
	if len(entrypoint) == 0 || copied[entrypoint[0]] == "" {
		t.Errorf("ENTRYPOINT %v runs no file the image copies in", entrypoint)
	}
	// The config the image starts with ships in it, and passes config check.
	cfgPath := ""
	if i := slices.Index(cmd, "-config"); i >= 0 && i+1 < len(cmd) {
		cfgPath = cmd[i+1]
	}
	src, ok := copied[cfgPath]
	if !ok {
		t.Fatalf("CMD %v names config %q, which the image does not copy in", cmd, cfgPath)
	}
	cfg, err := config.LoadFile(filepath.Join(root, src))
	if err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	// Its listeners are reachable through published ports, and its store
	// is in the volume (the working directory holds a relative path).
	for name, addr := range map[string]string{"milter": cfg.Milter.Listen, "web": cfg.Web.Listen, "policyd": cfg.Policyd.Listen, "metrics": cfg.Metrics.Listen} {
		if addr == "" {
			continue
		}
		hp := strings.TrimPrefix(strings.TrimPrefix(addr, "inet:"), "inet6:")
		host, port, err := net.SplitHostPort(hp)
		if err != nil {
			t.Errorf("%s listen %q: %v", name, addr, err)
			continue
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			t.Errorf("%s listens on %s: a published port cannot reach loopback inside the container", name, addr)
		}
		if !slices.Contains(exposed, port) {
			t.Errorf("%s listens on port %s, which is not EXPOSEd (%v)", name, port, exposed)
		}
	}
	store := cfg.Store.Path
	if !path.IsAbs(store) {
		store = path.Join(workdir, store)
	}
	if !slices.ContainsFunc(volumes, func(v string) bool { return strings.HasPrefix(store, v+"/") }) {
		t.Errorf("the store %s is not in a volume (%v): it would be lost with the container", store, volumes)
	}
}

// jsonArgs reads an instruction's exec form, ["a", "b"], or its shell form.
func jsonArgs(args []string) []string {
	s := strings.Join(args, " ")
	if !strings.HasPrefix(s, "[") {
		return args
	}
	var out []string
	for _, m := range regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`).FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// dockerignore returns whether a path of the build context is left out.
func dockerignore(t *testing.T, name string) func(string) bool {
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, strings.TrimPrefix(l, "/"))
		}
	}
	return func(p string) bool {
		for _, pat := range patterns {
			for q := p; q != "." && q != "/" && q != ""; q = path.Dir(q) {
				if ok, _ := path.Match(pat, q); ok {
					return true
				}
				if ok, _ := path.Match(pat, path.Base(q)); ok && !strings.Contains(pat, "/") && strings.HasPrefix(pat, "*") {
					return true
				}
			}
		}
		return false
	}
}

// goMinor is go.mod's Go version without the patch: "1.26".
func goMinor(t *testing.T, gomod string) string {
	b, err := os.ReadFile(gomod)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}
