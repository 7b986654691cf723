// Package testengine builds a policy engine from a config file's text
// against the in-process DNS server (internal/dnstest), through the same
// path as the daemon: config.Parse, then Config.EngineOptions.
package testengine

import (
	"testing"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/internal/dnstest"
	"github.com/blmilter/blmilter/policy"
)

// Config parses toml, a config file's text, as blmilter would. With dns,
// the [dns] servers are that server, whatever the text says.
func Config(t testing.TB, dns *dnstest.Server, toml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(toml), "test.toml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if dns != nil {
		cfg.DNS.Servers = []string{dns.Addr}
	}
	return cfg
}

// New builds a policy engine from toml (see Config) with deps, and
// closes it when the test ends.
func New(t testing.TB, dns *dnstest.Server, toml string, deps policy.Deps) *policy.Engine {
	t.Helper()
	return From(t, Config(t, dns, toml), deps)
}

// From builds a policy engine from a parsed config, as the daemon
// does, and closes it when the test ends.
func From(t testing.TB, cfg *config.Config, deps policy.Deps) *policy.Engine {
	t.Helper()
	opts := cfg.EngineOptions()
	opts.Deps = deps
	e, err := policy.NewEngine(opts)
	if err != nil {
		t.Fatalf("engine: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}
