package main

import (
	"os/exec"
	"strings"
	"testing"
)

// Debian versions sort as the Go versions they come from: a pseudo-version
// before the release it leads to, a prerelease before its release.
func TestDebianVersion(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"v1.2.3", "1.2.3"},
		{"v1.2.3+dirty", "1.2.3+dirty"},
		{"v1.2.3-rc1", "1.2.3~rc1"},
		{"v0.0.0-20261201150049-3b89d1e869bb", "0.0.0~20261201150049.3b89d1e869bb"},
		{"v1.2.4-0.20261201150049-3b89d1e869bb+dirty", "1.2.4~0.20261201150049.3b89d1e869bb+dirty"},
		{"v1.2.3-rc1.0.20261201150049-3b89d1e869bb", "1.2.3~rc1.0.20261201150049.3b89d1e869bb"},
	} {
		got, err := debianVersion(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("debianVersion(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "devel", "vnext", "v1.2.3_x"} {
		if got, err := debianVersion(bad); err == nil {
			t.Errorf("debianVersion(%q) = %q, want an error", bad, got)
		}
	}

	dpkg, err := exec.LookPath("dpkg")
	if err != nil {
		t.Skip("no dpkg to compare versions with")
	}
	// Each is older than the next, for Go and for dpkg.
	order := []string{"v0.0.0-20261201150049-3b89d1e869bb", "v1.2.3-rc1", "v1.2.3-rc1.0.20261201150049-3b89d1e869bb", "v1.2.3", "v1.2.4-0.20261201150049-3b89d1e869bb", "v1.2.4"}
	for i := 1; i < len(order); i++ {
		a, _ := debianVersion(order[i-1])
		b, _ := debianVersion(order[i])
		if err := exec.Command(dpkg, "--compare-versions", a, "lt", b).Run(); err != nil {
			t.Errorf("dpkg: %s is not older than %s", a, b)
		}
	}
}

func TestAfterTag(t *testing.T) {
	for _, tc := range []struct{ tag, want string }{
		{"v1.2.3", "v1.2.4-0."},
		{"v0.9.0", "v0.9.1-0."},
		{"v1.2.3-rc1", "v1.2.3-rc1.0."},
	} {
		if got := afterTag(tc.tag); got != tc.want {
			t.Errorf("afterTag(%q) = %q, want %q", tc.tag, got, tc.want)
		}
	}
}

// The package holds what the admin needs, each file where Debian expects it.
func TestPackageContents(t *testing.T) {
	c, err := packageContents("../..", "/nonexistent/blmilter", "/nonexistent/blmilter.8.gz")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, f := range c {
		have[f.Destination] = f.Type
	}
	for dst, typ := range map[string]string{
		"/usr/sbin/blmilter":                             "",
		"/usr/share/man/man8/blmilter.8.gz":              "",
		"/usr/lib/systemd/system/blmilter.service":       "",
		"/etc/blmilter/blmilter.toml":                    "config",
		"/usr/share/doc/blmilter/README.md":              "",
		"/usr/share/doc/blmilter/config.md":              "",
		"/usr/share/doc/blmilter/postfix/main.cf.milter": "",
		"/usr/share/doc/blmilter/postfix/main.cf.policy": "",
		"/usr/share/doc/blmilter/sendmail/blmilter.mc":   "",
		"/usr/share/doc/blmilter/examples/minimal.toml":  "",
		"/usr/share/doc/blmilter/prometheus/alerts.yml":  "",
	} {
		got, ok := have[dst]
		if !ok {
			t.Errorf("%s is not in the package", dst)
		} else if got != typ {
			t.Errorf("%s has type %q, want %q", dst, got, typ)
		}
	}
	for dst := range have {
		if strings.Contains(dst, "/local/") {
			t.Errorf("%s: a package installs nothing under /usr/local", dst)
		}
	}
}
