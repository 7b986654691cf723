package main

// The one place where the config file meets the parts that run: each
// function turns the config into one part's own options, as each CoreDNS
// plugin's setup.go does for its plugin. The parts never see the config,
// and none keeps a default of its own for a config key. (The policy
// engine's options come from config.EngineOptions: validation builds them,
// and the tests of every package build their engines the same way.)

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/blmilter/blmilter/config"
	"github.com/blmilter/blmilter/health"
	"github.com/blmilter/blmilter/logging"
	"github.com/blmilter/blmilter/milter"
	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/policyd"
	"github.com/blmilter/blmilter/store"
	"github.com/blmilter/blmilter/traps"
	"github.com/blmilter/blmilter/web"
)

// loadConfig reads path, or returns the embedded default without one.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Default(), nil
	}
	return config.LoadFile(path)
}

// newEngine builds the policy engine of cfg, with the fleet's key. A list
// or key file that cannot be read comes back as a config problem naming
// its key and line.
func newEngine(cfg *config.Config, deps policy.Deps) (*policy.Engine, error) {
	opts := cfg.EngineOptions()
	opts.Deps = deps
	key, err := fleetKey(cfg)
	if err != nil {
		return nil, err
	}
	opts.RefKey, opts.Node = key, cfg.Fleet.Node
	e, err := policy.NewEngine(opts)
	if err == nil {
		return e, nil
	}
	var problems []config.Problem
	for _, err := range unjoin(err) {
		var fe *policy.FileError
		if !errors.As(err, &fe) {
			return nil, err
		}
		ce := cfg.Errorf(fmt.Sprintf("list[%d].file", fe.Index), "%v", fe.Err)
		problems = append(problems, ce.Problems...)
	}
	return nil, &config.Error{File: cfg.File, Problems: problems}
}

// unjoin splits an errors.Join.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func milterOptions(cfg *config.Config, logger *slog.Logger) milter.Options {
	m := &cfg.Milter
	return milter.Options{
		Logger:         logger,
		ReadTimeout:    m.ReadTimeout.Duration,
		WriteTimeout:   m.WriteTimeout.Duration,
		SessionTimeout: m.SessionTimeout.Duration,
		MaxConnections: m.MaxConnections,
	}
}

func policydOptions(cfg *config.Config, logger *slog.Logger) policyd.Options {
	return policyd.Options{
		Logger:         logger,
		ReadTimeout:    cfg.Policyd.ReadTimeout.Duration,
		MaxConnections: cfg.Policyd.MaxConnections,
	}
}

func webSettings(cfg *config.Config) *web.Settings {
	w := &cfg.Web
	return &web.Settings{
		PublicURL:  w.PublicURL,
		AdminToken: w.AdminToken,
		SMTP: web.SMTP{
			Server:   w.SMTP.Server,
			From:     w.SMTP.From,
			Username: w.SMTP.Username,
			Password: w.SMTP.Password,
			StartTLS: w.SMTP.StartTLS,
		},
		RemovalQuota:          w.RemovalQuota,
		RemovalWindow:         w.RemovalWindow.Duration,
		LookupRate:            w.LookupRate,
		LookupBurst:           w.LookupBurst,
		SelfServiceCategories: w.SelfServiceCategories,
		DNSServers:            cfg.DNS.Servers,
		DNSTimeout:            cfg.DNS.Timeout.Duration,
		OperatorEmail:         w.OperatorEmail,
		DelistDomain:          w.DelistDomain,
		DelistTTL:             delistTTL,
		DeferFirst:            cfg.Policy.DeferFirst.Duration,
	}
}

// delistTTL is how long a delist address offered on a status page works.
const delistTTL = 24 * time.Hour

// selfService is the rule of removals without an operator: confirmed
// requests, proofs of control and delist-and-deliver follow it.
func selfService(cfg *config.Config) store.SelfService {
	w := &cfg.Web
	return store.SelfService{Categories: w.SelfServiceCategories, Quota: w.RemovalQuota, Window: w.RemovalWindow.Duration}
}

func retention(cfg *config.Config) store.Retention {
	return store.Retention{EvidenceMaxAge: cfg.Store.EvidenceMaxAge.Duration, HistoryMaxAge: cfg.Store.HistoryMaxAge.Duration}
}

// trapsOptions are the spam traps and delist addresses of [traps] and [web].
func trapsOptions(cfg *config.Config, st *store.Store, logger *slog.Logger, obs traps.Observer) traps.Options {
	t := &cfg.Traps
	o := traps.Options{
		Addresses: t.Addresses,
		Rules: store.TrapRules{
			Hits: t.Hits, Window: t.Window.Duration, Expires: t.Expires.Duration, MaxExpires: t.MaxExpires.Duration,
			Category: t.Category, IPv6Prefix: t.IPv6Prefix,
		},
		DelistDomain: cfg.Web.DelistDomain,
		SelfService:  selfService(cfg),
		Logger:       logger,
		Observer:     obs,
	}
	if st != nil {
		o.Store = st
	}
	return o
}

func storeOptions(cfg *config.Config, logger *slog.Logger) store.Options {
	return store.Options{
		Logger:          logger,
		DecisionMaxAge:  cfg.Store.DecisionMaxAge.Duration,
		DecisionMaxRows: cfg.Store.DecisionMaxRows,
		Retention:       retention(cfg),
	}
}

func logOptions(cfg *config.Config) logging.Options {
	return logging.Options{Level: logLevel(cfg), Format: cfg.Log.Format, File: cfg.Log.File}
}

func logLevel(cfg *config.Config) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(cfg.Log.Level)); err != nil {
		// Validation allows only the four names UnmarshalText reads.
		panic(fmt.Sprintf("log.level %q passed validation: %v", cfg.Log.Level, err))
	}
	return l
}

func healthOptions(cfg *config.Config, logger *slog.Logger) health.Options {
	h := &cfg.Health
	return health.Options{
		Interval:    h.Interval.Duration,
		Timeout:     h.Timeout.Duration,
		FailAfter:   h.FailAfter,
		MaxHitRatio: h.MaxHitRatio,
		MinChecks:   h.MinChecks,
		RatioWindow: h.RatioWindow.Duration,
		Logger:      logger,
	}
}

// socketMode parses an octal file mode such as "0660" (validated).
func socketMode(s string) os.FileMode {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		panic(fmt.Sprintf("socket mode %q passed validation: %v", s, err))
	}
	return os.FileMode(m)
}
