#!/usr/bin/env bash
# Installs what the end-to-end tests in e2e/ (and web/'s browser test) need, from Debian's packages:
#   postfix      a private Postfix instance (no system instance is configured)
#   rbldnsd      serves the test block lists on loopback, and the site's zone exported for it
#   nsd knot     secondaries of blmilter's DNS zone, and primaries of its master-file export
#   knot-dnsutils  kdig, to ask the zone server as an operator would
#   dnsperf      the zone server's speed against rbldnsd's (e2e/zoneperf.sh)
#   swaks dnsutils  for poking at the setup by hand (dig, swaks)
#   chromium     headless browser for the lookup site's page tests (web/)
#   rspamd       the load comparison's other milter, with only its RBL module on the test lists
#   policyd-weight  the load comparison's other policy server (Perl), its DNS list checks only;
#                the package also creates its system user polw, which the tests run it as
#   groff-base   renders the manual page (cmd/blmilter) to check it
#   sendmail     the sendmail binary from sendmail-bin, unpacked into
#                /opt/blmilter-e2e/sendmail: Debian's postfix and sendmail-bin
#                packages conflict (both are "the" MTA), so sendmail is not
#                installed as a package; its libraries and sendmail-cf (m4) are.
#
# Idempotent: runs `apt-get update` only when something is missing.
# When it cannot install (not root, no apt-get) it says what is missing and
# exits non-zero: the tests built with -tags e2e need all of it (make unit
# runs the tests that do not).
set -euo pipefail

SENDMAIL_DIR=${BLMILTER_E2E_SENDMAIL_DIR:-/opt/blmilter-e2e/sendmail}
PKGS=(postfix rbldnsd nsd knot knot-dnsutils dnsperf swaks dnsutils m4 sendmail-cf procps iproute2 util-linux chromium rspamd policyd-weight groff-base
	libdb5.3 libldap-2.5-0 liblockfile1 libnsl2 libsasl2-2 libssl3 libwrap0)

skip() {
	echo "e2e/deps.sh: cannot install: $*" >&2
	exit 1
}

missing=()
for p in "${PKGS[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
need_sendmail=0
[[ -x "$SENDMAIL_DIR/usr/libexec/sendmail/sendmail" || -x /usr/libexec/sendmail/sendmail ]] || need_sendmail=1

if ((${#missing[@]} == 0 && need_sendmail == 0)); then
	echo "e2e/deps.sh: all present"
	exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
	skip "not root; missing packages: ${missing[*]:-none}; sendmail binary missing: $need_sendmail"
fi
if ! command -v apt-get >/dev/null; then
	skip "no apt-get; missing packages: ${missing[*]:-none}; sendmail binary missing: $need_sendmail"
fi

export DEBIAN_FRONTEND=noninteractive
# "No configuration": the package creates no /etc/postfix/main.cf and starts
# no system instance on port 25; the tests run their own instance.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections

if ! apt-get update -qq; then
	skip "apt-get update failed; missing packages: ${missing[*]:-none}"
fi
if ((${#missing[@]} > 0)); then
	# No service starts from a package here (rspamd would start a system
	# instance on its default ports): the tests run their own instances.
	# policy-rc.d is Debian's switch for that; one already there is kept.
	own_policy=0
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 0755 /usr/sbin/policy-rc.d
		own_policy=1
	fi
	status=0
	apt-get install -y -qq --no-install-recommends "${missing[@]}" || status=$?
	if ((own_policy)); then
		rm -f /usr/sbin/policy-rc.d
	fi
	if ((status != 0)); then
		skip "apt-get install failed for: ${missing[*]}"
	fi
fi

if ((need_sendmail)); then
	tmp=$(mktemp -d)
	chmod 0777 "$tmp" # apt-get download runs as _apt
	trap 'rm -rf "$tmp"' EXIT
	if ! (cd "$tmp" && apt-get download -qq sendmail-bin); then
		skip "apt-get download sendmail-bin failed"
	fi
	mkdir -p "$SENDMAIL_DIR"
	dpkg-deb -x "$tmp"/sendmail-bin_*.deb "$SENDMAIL_DIR"
	sm="$SENDMAIL_DIR/usr/libexec/sendmail/sendmail"
	if [[ ! -x "$sm" ]]; then
		skip "sendmail-bin did not contain $sm"
	fi
	if ldd "$sm" | grep 'not found' >&2; then
		skip "sendmail's libraries are missing"
	fi
	echo "e2e/deps.sh: sendmail unpacked into $SENDMAIL_DIR"
fi

# A system Postfix must not hold port 25 or the tests' ports; the package
# does not start one with "No configuration", but an older install might.
if [[ -f /etc/postfix/main.cf ]] && command -v postfix >/dev/null; then
	postfix status >/dev/null 2>&1 && echo "e2e/deps.sh: note: a system Postfix is running; the tests use their own instance on other ports"
fi
echo "e2e/deps.sh: done"
