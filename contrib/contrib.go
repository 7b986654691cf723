// Package contrib holds what installs blmilter and wires it into a mail
// system: the systemd unit, the Postfix and Sendmail snippets, the container
// image's config, the alert rules, and in contrib/deb (a Go module of its
// own) the Debian package's builder, maintainer scripts and test. It has no
// code; its tests check that these files fit together: the Dockerfile with
// the repository and the container's config, the unit with the package.
package contrib
