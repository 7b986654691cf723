// Package e2e holds blmilter's end-to-end tests: the blmilter binary between
// real mail servers (a private Postfix instance, Sendmail) and test block
// lists served by rbldnsd, driven by real SMTP sessions on loopback; and the
// site's DNS zone (package zone) against real DNS software (kdig, dig, NSD
// and Knot as secondaries, rbldnsd, NSD and Knot serving its exports).
//
// The tests are built only with -tags e2e (make test), and then need root
// and the packages e2e/deps.sh installs: a missing one is a failure, never
// a skip. A plain go test ./... (make unit) leaves them out. The load
// comparison (TestLoad) and the zone's speed comparison (TestZonePerf) run
// one short round; e2e/load.sh and e2e/zoneperf.sh run them at full size.
package e2e
