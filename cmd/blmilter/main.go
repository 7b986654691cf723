// Command blmilter keeps mail from listed SMTP clients out of Postfix and
// Sendmail: a milter and a Postfix policy server in front of the MTA that
// check each client IP against DNS block lists and local lists, and the
// IP lookup web service that every reply links to.
//
// Usage:
//
//	blmilter [-config FILE] [command] [flags] [args]
//
// Run "blmilter help" for the commands, "blmilter help COMMAND" for one and
// "blmilter help config" for the configuration reference.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// command is one subcommand; commands are a table, each with its own help.
//
// Every command takes -config; commands that work on the store take -db
// too (see storeCommand). Flags may come before, between and after the
// arguments; "--" ends them. Exit codes: 0 done, 1 the command failed (or
// found problems, as config check does), 2 a command line mistake.
type command struct {
	name     string // "serve", "config check", "list add": one or more words
	args     string // synopsis of the arguments, such as "IP..."
	synopsis string // one line for the command list
	help     string // the full help text
	store    storeAccess
	// setup declares the command's flags on fs and returns what runs it
	// with the other arguments. Help calls setup only to list the flags.
	setup func(fs *flag.FlagSet) func(c *cmdCtx, args []string) error
}

var commands []*command

func addCommands(cs ...*command) { commands = append(commands, cs...) }

func init() {
	addCommands(serveCommand, checkCommand, configCheckCommand, statsCommand, versionCommand, helpCommand)
	addCommands(storeCommands...)
}

// cmdCtx is what a running command gets: its output and the flags every
// command shares.
type cmdCtx struct {
	cmd        *command
	stdout     io.Writer
	stderr     io.Writer
	configPath string // -config; "" means the embedded default (or, for store commands, the system config)
	dbPath     string // -db, for store commands
	create     bool   // -create, for commands that may create the store
}

// usageError is a command line mistake: the usage is printed with it, and
// blmilter exits 2.
type usageError string

func (e usageError) Error() string { return string(e) }

// exitCode ends the program with the code after the command printed its
// own findings (as config check does).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	global := flag.NewFlagSet("blmilter", flag.ContinueOnError)
	global.SetOutput(stderr)
	configPath := global.String("config", "", "config `FILE` (default: the embedded default config)")
	global.Usage = func() { printOverview(stderr) }
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	args = global.Args()
	if len(args) == 0 {
		args = []string{"serve"}
	}
	if args[0] == "-h" || args[0] == "--help" {
		args = []string{"help"}
	}
	cmd, rest := findCommand(args)
	if cmd == nil && len(args) > 1 && (args[1] == "-h" || args[1] == "--help") && len(group(args[0])) > 0 {
		cmd, rest = helpCommand, args[:1] // "list -h": the list commands' help
	}
	if cmd == nil {
		return unknownCommand(args, stderr)
	}
	c := &cmdCtx{cmd: cmd, stdout: stdout, stderr: stderr, configPath: *configPath}
	fs := c.flagSet(stderr)
	runCmd := cmd.setup(fs)
	rest, err := parseInterspersed(fs, rest)
	if err == nil {
		err = runCmd(c, rest)
	}
	var ue usageError
	var code exitCode
	var fe flagError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "blmilter %s: %s\n\n", cmd.name, ue)
		printCommandHelp(stderr, cmd)
		return 2
	case errors.As(err, &fe):
		// The flag package printed the problem and the usage.
		return 2
	default:
		fmt.Fprintf(stderr, "blmilter %s: %v\n", cmd.name, err)
		return 1
	}
}

// flagSet is the command's flag set with the flags every command (or every
// store command) shares, bound to c.
func (c *cmdCtx) flagSet(out io.Writer) *flag.FlagSet {
	cmd := c.cmd
	fs := flag.NewFlagSet("blmilter "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() { printCommandHelp(out, cmd) }
	configHelp := "config `FILE` (default: the embedded default config)"
	if cmd.store != storeNone {
		configHelp = "config `FILE` whose [store] path to use (default: " + systemConfig + " when it exists)"
		fs.StringVar(&c.dbPath, "db", "", "store database `PATH` (default: the [store] path of the config)")
		if cmd.store == storeCreate {
			fs.BoolVar(&c.create, "create", false, "create the database if it does not exist")
		}
	}
	fs.StringVar(&c.configPath, "config", c.configPath, configHelp)
	return fs
}

// flagError is a flag the flag package rejected; it printed the problem
// and the usage already.
type flagError struct{ error }

// parseInterspersed parses flags anywhere among the arguments ("check
// 192.0.2.1 -json") and returns the other arguments; "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if len(args) > 0 && args[0] == "--" {
			return append(rest, args[1:]...), nil
		}
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, flagError{err}
		}
		args = fs.Args()
		if len(args) == 0 {
			return rest, nil
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
}

// findCommand matches the longest command name at the start of args.
func findCommand(args []string) (*command, []string) {
	var best *command
	bestWords := 0
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(words) > len(args) || len(words) <= bestWords {
			continue
		}
		if slices.Equal(words, args[:len(words)]) {
			best, bestWords = c, len(words)
		}
	}
	if best == nil {
		return nil, nil
	}
	return best, args[bestWords:]
}

// group returns the commands whose name starts with word ("list" gives
// "list add", "list remove", "list show").
func group(word string) []*command {
	var out []*command
	for _, c := range commands {
		if first, _, ok := strings.Cut(c.name, " "); ok && first == word {
			out = append(out, c)
		}
	}
	return out
}

func unknownCommand(args []string, stderr io.Writer) int {
	if g := group(args[0]); len(g) > 0 {
		if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
			fmt.Fprintf(stderr, "blmilter %s: unknown command %q\n\n", args[0], args[1])
		}
		for i, c := range g {
			if i == 0 {
				fmt.Fprint(stderr, "usage: ")
			} else {
				fmt.Fprint(stderr, "       ")
			}
			fmt.Fprintf(stderr, "blmilter %s [flags] %s\n", c.name, c.args)
		}
		fmt.Fprintf(stderr, "\n\"blmilter help %s COMMAND\" describes one.\n", args[0])
		return 2
	}
	fmt.Fprintf(stderr, "blmilter: unknown command %q\n\n", strings.Join(args, " "))
	printOverview(stderr)
	return 2
}

var helpCommand = &command{
	name:     "help",
	args:     "[COMMAND | config | man]",
	synopsis: "describe the commands, one command, or every config key",
	help: `Without an argument, lists the commands. With a command, describes it and
its flags. "blmilter help config" prints the configuration reference: every
key with its type, default, meaning and whether a reload applies it.
"blmilter help man" prints the commands as a manual page (roff), as the
Debian package installs it for "man blmilter".`,
	setup: func(fs *flag.FlagSet) func(c *cmdCtx, args []string) error {
		return func(c *cmdCtx, args []string) error {
			switch {
			case len(args) == 0:
				printOverview(c.stdout)
				return nil
			case len(args) == 1 && args[0] == "config":
				_, err := io.WriteString(c.stdout, configReference())
				return err
			case len(args) == 1 && args[0] == "man":
				return writeManPage(c.stdout)
			}
			cmd, rest := findCommand(args)
			if cmd == nil && len(args) == 1 && len(group(args[0])) > 0 {
				for _, g := range group(args[0]) {
					printCommandHelp(c.stdout, g)
					fmt.Fprintln(c.stdout)
				}
				return nil
			}
			if cmd == nil || len(rest) > 0 {
				return usageError(fmt.Sprintf("unknown command %q", strings.Join(args, " ")))
			}
			printCommandHelp(c.stdout, cmd)
			return nil
		}
	},
}

func printOverview(w io.Writer) {
	fmt.Fprint(w, "usage: blmilter [-config FILE] [command] [flags] [args]\n\n")
	fmt.Fprint(w, "blmilter checks SMTP clients against DNS block lists and local lists,\nfor Postfix and Sendmail (milter) and Postfix (policy server).\n\ncommands:\n")
	cs := slices.Clone(commands)
	slices.SortStableFunc(cs, func(a, b *command) int { return strings.Compare(a.name, b.name) })
	width := 0
	for _, c := range cs {
		width = max(width, len(strings.TrimSpace(c.name+" "+c.args)))
	}
	for _, c := range cs {
		fmt.Fprintf(w, "  %-*s  %s\n", width, strings.TrimSpace(c.name+" "+c.args), c.synopsis)
	}
	fmt.Fprint(w, `
With no command, blmilter serves. "blmilter help COMMAND" describes one
command, "blmilter help config" every config key. Every command takes
-config FILE; list and requests take -db PATH too.
Exit status: 0 done, 1 failed, 2 command line mistake.
`)
}

func printCommandHelp(w io.Writer, cmd *command) {
	fmt.Fprintf(w, "usage: blmilter %s [flags] %s\n\n", cmd.name, cmd.args)
	fmt.Fprintln(w, strings.TrimSpace(cmd.help))
	c := &cmdCtx{cmd: cmd}
	fs := c.flagSet(w)
	cmd.setup(fs)
	fmt.Fprint(w, "\nflags:\n")
	fs.PrintDefaults()
}

// noArgs is the setup of a command without flags or arguments of its own.
func noArgs(run func(c *cmdCtx) error) func(fs *flag.FlagSet) func(c *cmdCtx, args []string) error {
	return func(*flag.FlagSet) func(c *cmdCtx, args []string) error {
		return func(c *cmdCtx, args []string) error {
			if len(args) > 0 {
				return usageError("no arguments expected")
			}
			return run(c)
		}
	}
}

var versionCommand = &command{
	name:     "version",
	synopsis: "print the version",
	help: `Prints blmilter's version, the Go version it was built with and the
platform. The version is the one the build was given (the Debian package
stamps it), else the module version "go install ...@VERSION" records, else
a pseudo-version made from the revision and time of the checkout it was
built from, with "+dirty" when that checkout had changes.`,
	setup: noArgs(func(c *cmdCtx) error {
		fmt.Fprintf(c.stdout, "blmilter %s (%s, %s/%s)\n", versionString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	}),
}

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the build info says which version this is.
var version = ""

// versionString is the version blmilter reports: in "blmilter version", in
// the start-up log line and in the blmilter_build_info metric.
func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return buildVersion(bi)
}

// buildVersion is the module version "go install ...@v1.2.3" records (or
// the pseudo-version Go 1.24 and later record for a build in a checkout);
// else, from an older toolchain's VCS stamp, a pseudo-version of the same
// shape, v0.0.0-TIME-REVISION, with "+dirty" for uncommitted changes; else
// "devel".
func buildVersion(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, when, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
				when = t.UTC().Format("20060102150405")
			}
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if when == "" {
		return "devel-" + rev + dirty
	}
	return "v0.0.0-" + when + "-" + rev + dirty
}
