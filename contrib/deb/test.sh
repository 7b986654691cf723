#!/usr/bin/env bash
# Builds blmilter's Debian package, installs it with dpkg as an admin would,
# checks what it installed, reinstalls it over an edited config, removes it,
# and purges it, checking at each step what is there and what is gone.
#
# It changes the machine it runs on (a package, a system user): run it as
# root on a CI or throwaway machine. It refuses to run where blmilter is
# already installed or a user or group blmilter already exists, and purges
# what it installed when it stops, pass or fail.
#
#   contrib/deb/test.sh [PACKAGE.deb]     (default: build one with make deb)
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
	echo "contrib/deb/test.sh: FAIL: $*" >&2
	exit 1
}
step() { echo "== $*"; }

# output_has PATTERN COMMAND...: COMMAND succeeds and prints a line matching
# PATTERN. The output is read whole first: under pipefail, `cmd | grep -q`
# fails when grep stops reading early and cmd dies of SIGPIPE.
output_has() {
	local pattern=$1 out
	shift
	out=$("$@") || return 1
	grep -q -- "$pattern" <<<"$out"
}

[[ $(id -u) -eq 0 ]] || fail "needs root (it installs a package)"
command -v dpkg >/dev/null || fail "needs dpkg"
if dpkg-query -W -f='${Status}' blmilter 2>/dev/null | grep -q 'install ok'; then
	fail "blmilter is already installed here; this test installs and purges its own"
fi
if getent passwd blmilter >/dev/null || getent group blmilter >/dev/null; then
	fail "a user or group blmilter exists already; the purge would remove it"
fi

work=$(mktemp -d)
cleanup() {
	if dpkg-query -W -f='${Status}' blmilter 2>/dev/null | grep -qv 'not-installed'; then
		dpkg --purge blmilter >/dev/null 2>&1 || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

deb=${1:-}
if [[ -z $deb ]]; then
	step "build (make deb)"
	deb=$(go -C contrib/deb run . -root "$PWD" -out "$work" | tail -n 1)
fi
[[ -f $deb ]] || fail "no package at $deb"
version=$(dpkg-deb -f "$deb" Version)
echo "$deb: version $version"

step "dpkg -i"
dpkg -i "$deb"

step "the binary: static, version stamped"
[[ -x /usr/sbin/blmilter ]] || fail "/usr/sbin/blmilter missing"
out=$(blmilter version)
echo "$out"
[[ $out == "blmilter v"* ]] || fail "blmilter version says $out"
output_has 'CGO_ENABLED=0' go version -m /usr/sbin/blmilter || fail "the binary was built with cgo"
if ldd /usr/sbin/blmilter >/dev/null 2>&1; then
	fail "the binary is dynamically linked: $(ldd /usr/sbin/blmilter)"
fi

step "the config: a conffile that passes config check"
blmilter config check /etc/blmilter/blmilter.toml
output_has '^ /etc/blmilter/blmilter.toml ' dpkg-query -W -f='${Conffiles}\n' blmilter || fail "blmilter.toml is not a conffile"
[[ $(stat -c '%U:%G %a' /etc/blmilter/blmilter.toml) == "root:blmilter 640" ]] ||
	fail "/etc/blmilter/blmilter.toml is $(stat -c '%U:%G %a' /etc/blmilter/blmilter.toml), want root:blmilter 640"

step "the system user and the state directory"
output_has ':/var/lib/blmilter:/usr/sbin/nologin$' getent passwd blmilter || fail "user blmilter: $(getent passwd blmilter)"
[[ $(id -gn blmilter) == blmilter ]] || fail "blmilter's group is $(id -gn blmilter)"
[[ $(stat -c '%U:%G %a' /var/lib/blmilter) == "blmilter:blmilter 750" ]] ||
	fail "/var/lib/blmilter is $(stat -c '%U:%G %a' /var/lib/blmilter), want blmilter:blmilter 750"
# The user the service runs as reads the config and writes the store the
# config names; root reads it back with the same discovery.
runuser -u blmilter -- blmilter list add 192.0.2.7 -create -reason "package test"
output_has '192.0.2.7' blmilter list show 192.0.2.7 || fail "list show does not find the listing"
[[ $(stat -c '%U' /var/lib/blmilter/blmilter.db) == blmilter ]] || fail "the store is not blmilter's"

step "systemd: the unit installed and enabled, nothing started"
[[ -f /usr/lib/systemd/system/blmilter.service ]] || fail "no unit"
grep -q '^ExecStart=/usr/sbin/blmilter serve -config /etc/blmilter/blmilter.toml$' /usr/lib/systemd/system/blmilter.service ||
	fail "the unit does not start /usr/sbin/blmilter with /etc/blmilter/blmilter.toml"
grep -q '^User=blmilter$' /usr/lib/systemd/system/blmilter.service || fail "the unit does not run as blmilter"
if command -v systemd-analyze >/dev/null; then
	# Offline: unknown keys, a missing ExecStart binary and bad values are
	# reported without a running systemd.
	warnings=$(systemd-analyze verify /usr/lib/systemd/system/blmilter.service 2>&1) || fail "systemd-analyze verify: $warnings"
	[[ -z $warnings ]] || fail "systemd-analyze verify: $warnings"
fi
if command -v deb-systemd-helper >/dev/null; then
	[[ -L /etc/systemd/system/multi-user.target.wants/blmilter.service ]] || fail "the unit is not enabled"
fi
if [[ ! -d /run/systemd/system ]] && pgrep -u blmilter >/dev/null; then
	fail "a blmilter process runs without systemd: $(pgrep -a -u blmilter)"
fi

step "the manual page and the docs"
[[ -f /usr/share/man/man8/blmilter.8.gz ]] || fail "no manual page"
if command -v groff >/dev/null; then
	warnings=$(zcat /usr/share/man/man8/blmilter.8.gz | groff -man -Tutf8 -ww -z 2>&1)
	[[ -z $warnings ]] || fail "groff: $warnings"
fi
output_has '^\.SS "blmilter config check' zcat /usr/share/man/man8/blmilter.8.gz || fail "the manual page lacks config check"
for f in README.md config.md postfix/main.cf.milter postfix/main.cf.policy sendmail/blmilter.mc examples/minimal.toml; do
	[[ -f /usr/share/doc/blmilter/$f ]] || fail "/usr/share/doc/blmilter/$f missing"
done

step "dpkg -i again over an edited config: the edit, its mode and the store stay"
echo '# edited by the admin' >>/etc/blmilter/blmilter.toml
dpkg -i "$deb"
grep -q '^# edited by the admin$' /etc/blmilter/blmilter.toml || fail "the admin's edit was lost"
[[ $(stat -c '%U:%G %a' /etc/blmilter/blmilter.toml) == "root:blmilter 640" ]] || fail "the config's mode changed"
output_has '192.0.2.7' blmilter list show 192.0.2.7 || fail "the upgrade lost the store"

step "dpkg -r: the program goes, the config, the store and the user stay"
dpkg -r blmilter
[[ ! -e /usr/sbin/blmilter ]] || fail "/usr/sbin/blmilter left after remove"
[[ -f /etc/blmilter/blmilter.toml && -f /var/lib/blmilter/blmilter.db ]] || fail "remove took the config or the store"
getent passwd blmilter >/dev/null || fail "remove took the user"

step "dpkg --purge: nothing is left"
dpkg --purge blmilter
left=()
for p in /usr/sbin/blmilter /etc/blmilter /var/lib/blmilter /usr/lib/systemd/system/blmilter.service \
	/usr/share/doc/blmilter /usr/share/man/man8/blmilter.8.gz /etc/systemd/system/blmilter.service \
	/etc/systemd/system/multi-user.target.wants/blmilter.service; do
	if [[ -e $p || -L $p ]]; then
		left+=("$p")
	fi
done
for d in /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked; do
	if [[ -d $d ]]; then
		while IFS= read -r f; do left+=("$f"); done < <(find "$d" -name '*blmilter*')
	fi
done
getent passwd blmilter >/dev/null && left+=("user blmilter")
getent group blmilter >/dev/null && left+=("group blmilter")
dpkg-query -W -f='${Status}' blmilter 2>/dev/null | grep -qv 'not-installed' && left+=("dpkg status: $(dpkg-query -W -f='${Status}' blmilter)")
((${#left[@]} == 0)) || fail "left after purge: ${left[*]}"

echo "contrib/deb/test.sh: ok: $deb installs, upgrades over an edited config, and removes and purges cleanly"
