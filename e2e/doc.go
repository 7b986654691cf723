// Package e2e holds blmilter's end-to-end tests: the blmilter binary between
// real mail servers (a private Postfix instance, Sendmail) and test block
// lists served by rbldnsd, driven by real SMTP sessions on loopback.
//
// The tests need root and the packages e2e/deps.sh installs. Without them
// they skip with a message; with BLMILTER_E2E=require or CI=true they fail
// instead. BLMILTER_E2E=skip skips them always. BLMILTER_LOAD=1 adds the
// load comparison (TestLoad).
package e2e
