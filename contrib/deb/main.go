// Command deb builds blmilter's Debian package with nfpm: the static binary
// with its version stamped, the systemd unit, /etc/blmilter/blmilter.toml as
// a conffile, the manual page made from the help text, the manuals, the
// Postfix and Sendmail snippets and the example configs, and the maintainer
// scripts that create the system user and the state directory and remove
// them on purge.
//
// It is a module of its own so that nfpm and its dependencies stay out of
// the daemon's module. From the repository root:
//
//	make deb
//	go -C contrib/deb run . -root "$PWD" -out "$PWD/dist" [-version v1.2.3] [-arch arm64]
//
// It prints the path of the package it wrote.
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

func main() {
	root := flag.String("root", "../..", "the blmilter repository `DIR`")
	out := flag.String("out", "", "`DIR` to write the package to (default: dist/ in the repository)")
	version := flag.String("version", "", "the `VERSION` to stamp, such as v1.2.3 (default: from git: the tag at HEAD, else a pseudo-version)")
	arch := flag.String("arch", runtime.GOARCH, "the Go `ARCH` to build for")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "deb: no arguments expected")
		os.Exit(2)
	}
	path, err := build(*root, *out, *version, *arch)
	if err != nil {
		fmt.Fprintln(os.Stderr, "deb:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

// build builds the package and returns its path.
func build(root, out, version, arch string) (string, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "blmilter")); err != nil {
		return "", fmt.Errorf("-root %s is not the blmilter repository: %w", root, err)
	}
	if out == "" {
		out = filepath.Join(root, "dist")
	}
	mtime := time.Now().UTC()
	if version == "" {
		var committed time.Time
		version, committed, err = gitVersion(root)
		if err != nil {
			return "", fmt.Errorf("version from git (or give -version): %w", err)
		}
		mtime = committed
	}
	debVersion, err := debianVersion(version)
	if err != nil {
		return "", err
	}

	tmp, err := os.MkdirTemp("", "blmilter-deb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "blmilter")
	if err := goBuild(root, bin, arch, version); err != nil {
		return "", err
	}
	// The manual page comes from the binary's own help; a cross build
	// needs a binary this machine runs to print it.
	helpBin := bin
	if arch != runtime.GOARCH || runtime.GOOS != "linux" {
		helpBin = filepath.Join(tmp, "blmilter-host")
		if err := goBuild(root, helpBin, runtime.GOARCH, version); err != nil {
			return "", err
		}
	}
	man := filepath.Join(tmp, "blmilter.8.gz")
	if err := manPage(helpBin, man); err != nil {
		return "", err
	}

	contents, err := packageContents(root, bin, man)
	if err != nil {
		return "", err
	}
	info := &nfpm.Info{
		Name:          "blmilter",
		Arch:          arch,
		Platform:      "linux",
		Version:       debVersion,
		VersionSchema: "none",
		Section:       "mail",
		Priority:      "optional",
		Maintainer:    "blmilter <postmaster@blmilter.invalid>",
		Homepage:      "https://github.com/blmilter/blmilter",
		Description: "DNS block list milter and Postfix policy server with an IP lookup service\n" +
			"blmilter checks each SMTP client's IP against DNS block lists, DNS allow\n" +
			"lists and the site's own list, and refuses listed clients with a reply\n" +
			"that links to its own IP lookup web service. It runs as a milter for\n" +
			"Postfix and Sendmail and as a Postfix policy server.",
		MTime: mtime,
		Overridables: nfpm.Overridables{
			Contents: contents,
			Suggests: []string{"postfix | sendmail-bin"},
			Scripts: nfpm.Scripts{
				PreInstall:  filepath.Join(root, "contrib/deb/preinst"),
				PostInstall: filepath.Join(root, "contrib/deb/postinst"),
				PreRemove:   filepath.Join(root, "contrib/deb/prerm"),
				PostRemove:  filepath.Join(root, "contrib/deb/postrm"),
			},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("package contents: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(out, deb.Default.ConventionalFileName(info))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return path, nil
}

// packageContents is every file of the package and where it goes.
func packageContents(root, bin, man string) (files.Contents, error) {
	mode := func(m os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Owner: "root", Group: "root", Mode: m}
	}
	src := func(p string) string { return filepath.Join(root, p) }
	c := files.Contents{
		{Source: bin, Destination: "/usr/sbin/blmilter", FileInfo: mode(0o755)},
		{Source: man, Destination: "/usr/share/man/man8/blmilter.8.gz", FileInfo: mode(0o644)},
		{Source: src("contrib/systemd/blmilter.service"), Destination: "/usr/lib/systemd/system/blmilter.service", FileInfo: mode(0o644)},
		{Destination: "/etc/blmilter", Type: files.TypeDir, FileInfo: mode(0o755)},
		// The preinst makes the group before dpkg unpacks this file.
		{Source: src("contrib/deb/blmilter.toml"), Destination: "/etc/blmilter/blmilter.toml", Type: files.TypeConfig,
			FileInfo: &files.ContentFileInfo{Owner: "root", Group: "blmilter", Mode: 0o640}},
		{Source: src("README.md"), Destination: "/usr/share/doc/blmilter/README.md", FileInfo: mode(0o644)},
	}
	// The manuals and what the admin copies from: every file of these
	// directories, so that a new one is packaged without a change here.
	for _, d := range []struct{ from, pattern, to string }{
		{"docs", "*.md", "/usr/share/doc/blmilter"},
		{"examples", "*", "/usr/share/doc/blmilter/examples"},
		{"contrib/postfix", "*", "/usr/share/doc/blmilter/postfix"},
		{"contrib/sendmail", "*", "/usr/share/doc/blmilter/sendmail"},
		{"contrib/prometheus", "*", "/usr/share/doc/blmilter/prometheus"},
	} {
		matches, err := filepath.Glob(filepath.Join(root, d.from, d.pattern))
		if err != nil {
			return nil, err
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("no %s in %s", d.pattern, d.from)
		}
		for _, m := range matches {
			if fi, err := os.Stat(m); err != nil || fi.IsDir() {
				continue
			}
			c = append(c, &files.Content{Source: m, Destination: d.to + "/" + filepath.Base(m), FileInfo: mode(0o644)})
		}
	}
	return c, nil
}

// goBuild builds a static blmilter for linux/arch with the version stamped.
func goBuild(root, out, arch, version string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X main.version="+version, "-o", out, "./cmd/blmilter")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build for linux/%s: %w\n%s", arch, err, b)
	}
	return nil
}

// manPage writes blmilter(8), gzipped, from "blmilter help man".
func manPage(bin, out string) error {
	page, err := exec.Command(bin, "help", "man").Output()
	if err != nil {
		return fmt.Errorf("blmilter help man: %w", err)
	}
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, gzip.BestCompression) // no name, no time: the same bytes each build
	if err != nil {
		return err
	}
	if _, err := zw.Write(page); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, b.Bytes(), 0o644)
}

// gitVersion is the version of the checkout at root, as Go names module
// versions: the tag at HEAD (v1.2.3), else a pseudo-version after the
// latest tag (v1.2.4-0.TIME-REV) or of no tag (v0.0.0-TIME-REV), with
// "+dirty" for uncommitted changes; and the commit's time.
func gitVersion(root string) (string, time.Time, error) {
	git := func(args ...string) (string, error) {
		cmd := exec.Command("git", append([]string{"-C", root}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return strings.TrimSpace(string(b)), nil
	}
	head, err := git("log", "-1", "--format=%H %ct")
	if err != nil {
		return "", time.Time{}, err
	}
	rev, ct, _ := strings.Cut(head, " ")
	secs, err := strconv.ParseInt(ct, 10, 64)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("commit time %q: %w", ct, err)
	}
	when := time.Unix(secs, 0).UTC()
	status, err := git("status", "--porcelain")
	if err != nil {
		return "", time.Time{}, err
	}
	dirty := ""
	if status != "" {
		dirty = "+dirty"
	}
	if tag, err := git("describe", "--tags", "--exact-match", "--match", "v[0-9]*", "HEAD"); err == nil && semverTag.MatchString(tag) {
		return tag + dirty, when, nil
	}
	base := "v0.0.0-"
	if tag, err := git("describe", "--tags", "--abbrev=0", "--match", "v[0-9]*", "HEAD"); err == nil && semverTag.MatchString(tag) {
		base = afterTag(tag)
	}
	return base + when.Format("20060102150405") + "-" + rev[:12] + dirty, when, nil
}

var semverTag = regexp.MustCompile(`^v(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?$`)

// afterTag is the start of a pseudo-version for a commit after tag, as Go
// makes it: v1.2.3 gives "v1.2.4-0.", v1.2.3-rc1 gives "v1.2.3-rc1.0.".
func afterTag(tag string) string {
	m := semverTag.FindStringSubmatch(tag)
	if m[4] != "" {
		return tag + ".0."
	}
	patch, _ := strconv.Atoi(m[3])
	return fmt.Sprintf("v%s.%s.%d-0.", m[1], m[2], patch+1)
}

// debianVersion turns a Go module version into a Debian one that sorts the
// same way: v1.2.3 is 1.2.3, v1.2.3-rc1 is 1.2.3~rc1 (before 1.2.3), and
// v1.2.4-0.20261201150049-3b89d1e869bb is 1.2.4~0.20261201150049.3b89d1e869bb.
func debianVersion(v string) (string, error) {
	s := strings.TrimPrefix(v, "v")
	if s == "" || s[0] < '0' || s[0] > '9' {
		return "", errors.New("version " + strconv.Quote(v) + " does not start with a number: give -version v1.2.3")
	}
	s = strings.Replace(s, "-", "~", 1)
	s = strings.ReplaceAll(s, "-", ".")
	if !debianVersionChars.MatchString(s) {
		return "", fmt.Errorf("version %q makes the Debian version %q, which has characters Debian does not allow", v, s)
	}
	return s, nil
}

var debianVersionChars = regexp.MustCompile(`^[0-9][0-9A-Za-z.+~]*$`)
