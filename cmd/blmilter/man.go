package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// writeManPage writes blmilter(8) in roff, made from the same command table
// and help texts as "blmilter help", so the manual page cannot say anything
// the help does not. The Debian package installs it; "blmilter help man"
// prints it.
func writeManPage(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH BLMILTER 8 \"\" \"blmilter %s\" \"System Manager's Manual\"\n", roffText(versionString()))
	b.WriteString(`.SH NAME
blmilter \- DNS block list milter and Postfix policy server, with an IP lookup service
.SH SYNOPSIS
.B blmilter
.RB [ \-config
.IR FILE ]
.RI [ command ]
.RI [ flags ]
.RI [ args ]
.SH DESCRIPTION
blmilter checks each SMTP client's IP address against DNS block lists, DNS
allow lists and the site's own lists, scores the answers with a TOML policy,
and refuses a listed client with a reply that links to its own IP lookup
service. It runs as a milter for Postfix
.RB ( smtpd_milters )
and Sendmail
.RB ( INPUT_MAIL_FILTER ),
as a Postfix policy server
.RB ( check_policy_service ),
and serves the lookup pages and a JSON API over HTTP.
.PP
With no command, blmilter serves. Every command takes
.B \-config
.IR FILE ;
the commands that work on the site's own list take
.B \-db
.I PATH
too. Flags may come before, between and after the arguments;
.B \-\-
ends them.
.SH COMMANDS
`)
	cs := slices.Clone(commands)
	slices.SortStableFunc(cs, func(a, b *command) int { return strings.Compare(a.name, b.name) })
	for _, cmd := range cs {
		writeManCommand(&b, cmd)
	}
	b.WriteString(`.SH EXIT STATUS
0 done, 1 the command failed (or found problems, as
.B config check
does), 2 a command line mistake.
.SH FILES
.TP
.I /etc/blmilter/blmilter.toml
The configuration the packaged service runs with, and where the
.B list
and
.B requests
commands look for the store when neither
.B \-db
nor
.B \-config
is given.
.B "blmilter help config"
describes every key.
.TP
.I /var/lib/blmilter/blmilter.db
The site's own list, removal requests and recent decisions (SQLite), as the
packaged configuration sets
.BR "[store] path" .
.TP
.I /usr/share/doc/blmilter/
The manuals, example configurations, and the Postfix and Sendmail snippets.
.SH SEE ALSO
.BR postconf (5),
.BR sendmail (8),
.BR systemctl (1)
`)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeManCommand writes one command: its synopsis, its help text and its
// flags.
func writeManCommand(b *strings.Builder, cmd *command) {
	fmt.Fprintf(b, ".SS \"blmilter %s\"\n", roffQuoted(strings.TrimSpace(cmd.name+" "+cmd.args)))
	writeManText(b, cmd.help)
	c := &cmdCtx{cmd: cmd}
	fs := c.flagSet(io.Discard)
	cmd.setup(fs)
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		b.WriteString(".TP\n")
		if arg != "" {
			fmt.Fprintf(b, ".BI \\-%s \" %s\"\n", roffText(f.Name), roffQuoted(arg)) // -name in bold, ARG in italics
		} else {
			fmt.Fprintf(b, ".B \\-%s\n", roffText(f.Name))
		}
		if !slices.Contains([]string{"", "false", "0", "0s"}, f.DefValue) {
			usage += " (default " + f.DefValue + ")"
		}
		b.WriteString(roffLine(usage) + "\n")
	})
}

// writeManText writes a help text: paragraphs of running text are filled,
// paragraphs with indented lines (tables of signals, examples) are kept as
// they are.
func writeManText(b *strings.Builder, text string) {
	for i, para := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if i > 0 {
			b.WriteString(".PP\n")
		}
		lines := strings.Split(para, "\n")
		indented := slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, " ") })
		if indented {
			b.WriteString(".nf\n")
		}
		for _, l := range lines {
			b.WriteString(roffLine(l) + "\n")
		}
		if indented {
			b.WriteString(".fi\n")
		}
	}
}

// roffText escapes s for roff: backslashes and dashes.
func roffText(s string) string {
	return strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
}

// roffLine is s as a line of roff text: one starting with a dot or an
// apostrophe would be read as a request.
func roffLine(s string) string {
	s = roffText(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// roffQuoted is s inside a double-quoted macro argument.
func roffQuoted(s string) string {
	return strings.ReplaceAll(roffText(s), `"`, `""`)
}
