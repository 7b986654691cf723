#!/usr/bin/env bash
# Speed of blmilter's DNS zone server against rbldnsd (see TestZonePerf in
# zoneperf_test.go): the same 100,000 listings (mostly single IPv4
# addresses, /24s, shorter networks and some IPv6), served by rbldnsd from
# the zone's rbldnsd export and by the zone package (e2e/zoneserve), both
# on loopback; dnsperf asks each in turn with the same queries, half of
# them for listed addresses, and a table of the medians is printed.
#
#   e2e/zoneperf.sh                  # defaults: 100000 listings, 3 rounds of 10 s, dnsperf -c 8 -q 100
#   BLMILTER_ZONEPERF_SECONDS=30 BLMILTER_ZONEPERF_ROUNDS=5 e2e/zoneperf.sh
#   BLMILTER_ZONEPERF_REPORT=/tmp/zoneperf.txt e2e/zoneperf.sh   # also write the table there
#
# Needs root and the packages e2e/deps.sh installs. Every dnsperf run is
# bounded in time, and every server it started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/deps.sh
BLMILTER_ZONEPERF_N=${BLMILTER_ZONEPERF_N:-100000} BLMILTER_ZONEPERF_SECONDS=${BLMILTER_ZONEPERF_SECONDS:-10} \
	BLMILTER_ZONEPERF_ROUNDS=${BLMILTER_ZONEPERF_ROUNDS:-3} \
	go test -tags e2e -count=1 -v -timeout 30m -run '^TestZonePerf$' ./e2e "$@" |
	grep -E '^(=== RUN|--- |PASS|FAIL|ok )|zoneperf_test.go|^ +(server|rbldnsd|blmilter|[0-9]+ listings)'
