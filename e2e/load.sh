#!/usr/bin/env bash
# Load comparison (see TestLoad in load_test.go), all in one run:
#   through real Postfix instances, sessions/s for Postfix without milter,
#   with a no-op milter, with blmilter as milter (warm cache), with blmilter
#   as policy server and without policy service (ratios c/b and d/e), with
#   policyd-weight as policy server on the same lists (j; ratio d/j), and
#   blmilter against rspamd (RBL module only, same lists) with a cold cache
#   (every session a new client, with a message): f/g;
#   at the milter protocol, blmload playing the MTA, blmilter against
#   rspamd, cold: h/i (target >= 1.3); and the latency row l, one of the
#   three lists answering after 250 ms: p50/p99 of a session.
#
#   e2e/load.sh                      # 3000 sessions x 16 workers x 5 rounds
#   BLMILTER_LOAD_N=10000 BLMILTER_LOAD_C=32 BLMILTER_LOAD_ROUNDS=3 e2e/load.sh
#   BLMILTER_LOAD_REPORT=/tmp/load.txt e2e/load.sh   # also write the summary there
#
# Needs root and the packages e2e/deps.sh installs. Every run is bounded
# (sessions per round and 90 s per blmload run; the cold rows need
# 2 x N x ROUNDS new addresses of 65,536) and stops every service it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/deps.sh
BLMILTER_LOAD_N=${BLMILTER_LOAD_N:-3000} BLMILTER_LOAD_ROUNDS=${BLMILTER_LOAD_ROUNDS:-5} \
	go test -tags e2e -count=1 -v -timeout 30m -run '^TestLoad$' ./e2e "$@" |
	grep -E '^(=== RUN|--- |PASS|FAIL|ok )|load_test.go|^ +\(|c/b|h/i|one list at|CPU time per session'
