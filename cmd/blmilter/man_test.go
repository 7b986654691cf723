package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The manual page describes every command and every flag, and groff reads
// it without a warning.
func TestManPage(t *testing.T) {
	code, page, errs := runCLI("help", "man")
	if code != 0 {
		t.Fatalf("help man: exit %d: %s", code, errs)
	}
	for _, cmd := range commands {
		if !strings.Contains(page, `.SS "blmilter `+roffQuoted(strings.TrimSpace(cmd.name+" "+cmd.args))+`"`) {
			t.Errorf("no section for %q", cmd.name)
		}
		fs := (&cmdCtx{cmd: cmd}).flagSet(&bytes.Buffer{})
		cmd.setup(fs)
		fs.VisitAll(func(f *flag.Flag) {
			if !strings.Contains(page, `\-`+roffText(f.Name)) {
				t.Errorf("%s: flag -%s missing", cmd.name, f.Name)
			}
		})
	}
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, "'") || (strings.HasPrefix(line, ".") && !manRequest(line)) {
			t.Errorf("text line read as a request: %q", line)
		}
	}

	groff, err := exec.LookPath("groff")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("groff is needed (e2e/deps.sh installs groff-base)")
		}
		t.Skip("groff not installed: the page is not rendered")
	}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = strings.NewReader(page)
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("groff -man -ww: %v\n%s", err, out)
	}
}

func manRequest(line string) bool {
	for _, r := range []string{".TH ", ".SH ", ".SS ", ".PP", ".TP", ".B ", ".BI ", ".BR ", ".I ", ".IR ", ".RB ", ".RI ", ".nf", ".fi"} {
		if strings.HasPrefix(line, r) {
			return true
		}
	}
	return false
}

func TestRoffEscapes(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"-json", `\-json`},
		{`C:\path`, `C:\epath`},
		{".starts with a dot", `\&.starts with a dot`},
		{"'quoted'", `\&'quoted'`},
	} {
		if got := roffLine(tc.in); got != tc.want {
			t.Errorf("roffLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
