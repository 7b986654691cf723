// Command blmilter keeps mail from listed SMTP clients out of Postfix and
// Sendmail: a milter and a Postfix policy server in front of the MTA that
// check each client IP against DNS block lists and local lists, and the
// IP lookup web service that every reply links to.
//
// Usage:
//
//	blmilter [-config FILE] [command] [flags] [args]
//
// Run "blmilter help" for the commands and "blmilter help COMMAND" for one.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/blmilter/blmilter/policy"
)

// command is one subcommand. Files that add commands register them with
// addCommands from an init function.
type command struct {
	name     string // "serve", "config check": one or more words
	args     string // synopsis of the arguments, such as "IP..."
	synopsis string // one line for the command list
	help     string // the full help text
	// run declares its flags on c.flags, calls c.parse before doing
	// anything (help runs it with -h to list the flags), then does the
	// work. A usageError prints the usage and exits 2, an exitCode exits
	// with that code, other errors print "blmilter NAME: err" and exit 1.
	run func(c *cmdCtx, args []string) error
	// selfHelp commands print their own usage when run with -h (to
	// c.stderr); "help NAME" shows that instead of help and c.flags.
	selfHelp bool
}

var commands []*command

func addCommands(cs ...*command) { commands = append(commands, cs...) }

func init() {
	addCommands(serveCommand, checkCommand, configCheckCommand, versionCommand, listCommand, requestsCommand, statsCommand)
}

// The site's own list and its removal requests (store_cmds.go) keep their
// verbs, flags and usage texts; these adapt them to the command table.
var (
	listCommand = &command{
		name:     "list",
		args:     "add|remove|show IP-or-CIDR...",
		synopsis: "manage the site's own list",
		selfHelp: true,
		run: func(c *cmdCtx, args []string) error {
			return storeExit(storeRunList(withConfig(args, c.configPath), c.stdout, c.stderr))
		},
	}
	requestsCommand = &command{
		name:     "requests",
		args:     "list|approve|deny [ID...]",
		synopsis: "show and decide removal requests",
		selfHelp: true,
		run: func(c *cmdCtx, args []string) error {
			return storeExit(storeRunRequests(withConfig(args, c.configPath), c.stdout, c.stderr))
		},
	}
)

// withConfig passes the global -config on to a store command's verb.
func withConfig(args []string, configPath string) []string {
	if configPath == "" || len(args) == 0 || strings.HasPrefix(args[0], "-") || args[0] == "help" {
		return args
	}
	return append([]string{args[0], "-config", configPath}, args[1:]...)
}

func storeExit(code int) error {
	if code != 0 {
		return exitCode(code)
	}
	return nil
}

// cmdCtx is what a running command gets.
type cmdCtx struct {
	cmd        *command
	flags      *flag.FlagSet
	stdout     io.Writer
	stderr     io.Writer
	configPath string // -config; "" means the embedded default
}

// parse parses the command's flags and returns the other arguments. Flags
// may come after arguments too ("check 192.0.2.1 --json"); "--" ends them.
func (c *cmdCtx) parse(args []string) ([]string, error) {
	var rest []string
	for {
		if len(args) > 0 && args[0] == "--" {
			return append(rest, args[1:]...), nil
		}
		if err := c.flags.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, flagError{err}
		}
		args = c.flags.Args()
		if len(args) == 0 {
			return rest, nil
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
}

// flagError is a flag the flag package rejected; it printed the problem
// and the usage already.
type flagError struct{ error }

// loadConfig reads -config, or returns the embedded default without one.
func (c *cmdCtx) loadConfig() (*policy.Config, error) {
	return loadConfig(c.configPath)
}

func loadConfig(path string) (*policy.Config, error) {
	if path == "" {
		return policy.Default(), nil
	}
	return policy.LoadFile(path)
}

// usageError is a command line mistake: the usage is printed with it.
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
	global.Usage = func() { printOverview(stderr, global) }
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
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		return runHelp(args[1:], stdout, stderr, global)
	}
	cmd, rest := findCommand(args)
	if cmd == nil {
		fmt.Fprintf(stderr, "blmilter: unknown command %q\n\n", strings.Join(args, " "))
		printOverview(stderr, global)
		return 2
	}
	c := &cmdCtx{cmd: cmd, stdout: stdout, stderr: stderr, configPath: *configPath}
	c.flags = flag.NewFlagSet("blmilter "+cmd.name, flag.ContinueOnError)
	c.flags.SetOutput(stderr)
	c.flags.StringVar(&c.configPath, "config", c.configPath, "config `FILE` (default: the embedded default config)")
	c.flags.Usage = func() { printCommandHelp(stderr, cmd, c.flags) }
	err := cmd.run(c, rest)
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
		printCommandHelp(stderr, cmd, c.flags)
		return 2
	case errors.As(err, &fe):
		return 2
	default:
		fmt.Fprintf(stderr, "blmilter %s: %v\n", cmd.name, err)
		return 1
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
		match := true
		for i, w := range words {
			if args[i] != w {
				match = false
				break
			}
		}
		if match {
			best, bestWords = c, len(words)
		}
	}
	if best == nil {
		return nil, nil
	}
	return best, args[bestWords:]
}

func runHelp(args []string, stdout, stderr io.Writer, global *flag.FlagSet) int {
	if len(args) == 0 {
		printOverview(stdout, global)
		return 0
	}
	cmd, rest := findCommand(args)
	if cmd == nil || len(rest) > 0 {
		fmt.Fprintf(stderr, "blmilter help: unknown command %q\n", strings.Join(args, " "))
		return 2
	}
	if cmd.selfHelp {
		cmd.run(&cmdCtx{cmd: cmd, flags: flag.NewFlagSet(cmd.name, flag.ContinueOnError), stdout: stdout, stderr: stdout}, []string{"-h"})
		return 0
	}
	fs := flag.NewFlagSet("blmilter "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("config", "", "config `FILE` (default: the embedded default config)")
	// Let the command declare its flags without running it: run with -h.
	c := &cmdCtx{cmd: cmd, flags: fs, stdout: io.Discard, stderr: io.Discard}
	cmd.run(c, []string{"-h"})
	printCommandHelp(stdout, cmd, fs)
	return 0
}

func printOverview(w io.Writer, global *flag.FlagSet) {
	fmt.Fprint(w, "usage: blmilter [-config FILE] [command] [flags] [args]\n\n")
	fmt.Fprint(w, "blmilter checks SMTP clients against DNS block lists and local lists,\nfor Postfix and Sendmail (milter) and Postfix (policy server).\n\ncommands:\n")
	cs := append([]*command(nil), commands...)
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	width := 0
	for _, c := range cs {
		width = max(width, len(c.name)+1+len(c.args))
	}
	for _, c := range cs {
		fmt.Fprintf(w, "  %-*s  %s\n", width, strings.TrimSpace(c.name+" "+c.args), c.synopsis)
	}
	fmt.Fprint(w, "\nWith no command, blmilter serves. \"blmilter help COMMAND\" describes one command.\n\nglobal flags:\n")
	global.SetOutput(w)
	global.PrintDefaults()
}

func printCommandHelp(w io.Writer, cmd *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: blmilter %s [flags] %s\n\n", cmd.name, cmd.args)
	fmt.Fprintln(w, strings.TrimSpace(cmd.help))
	fmt.Fprint(w, "\nflags:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

var versionCommand = &command{
	name:     "version",
	synopsis: "print the version",
	help:     "Prints blmilter's version and the Go version it was built with.",
	run: func(c *cmdCtx, args []string) error {
		args, err := c.parse(args)
		if err != nil {
			return err
		}
		if len(args) > 0 {
			return usageError("no arguments expected")
		}
		fmt.Fprintln(c.stdout, versionString())
		return nil
	},
}

// version is set at build time with -ldflags "-X main.version=1.2.3";
// otherwise the module version or VCS revision from the build info is used.
var version = ""

func versionString() string {
	v := version
	goVersion := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		if v == "" {
			var rev, modified string
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					if s.Value == "true" {
						modified = "+dirty"
					}
				}
			}
			if len(rev) > 12 {
				rev = rev[:12]
			}
			if rev != "" {
				v = "devel-" + rev + modified
			}
		}
	}
	if v == "" {
		v = "devel"
	}
	return strings.TrimSpace("blmilter " + v + " " + goVersion)
}
