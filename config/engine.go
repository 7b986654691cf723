package config

import (
	"slices"

	"github.com/blmilter/blmilter/policy"
)

// EngineOptions are the policy engine's settings from a validated config:
// [policy], [cache], [dns], [web] public_url and the lists, with the
// networks and answer codes that validation parsed. The engine's
// collaborators (policy.Deps) are the caller's to add.
//
// The engine is the one part whose options come from here rather than
// from cmd/blmilter: validation already builds them (it parses the code
// rules with policy's parser), and the tests of every package build their
// engines through the same path as the daemon.
func (c *Config) EngineOptions() policy.Options {
	p := &c.Policy
	o := policy.Options{
		Threshold:    p.Threshold,
		Action:       policy.Action(p.Action),
		RejectAt:     p.RejectAt,
		Allow:        slices.Clone(p.allow),
		Deadline:     p.Deadline.Duration,
		RejectText:   p.RejectText,
		TempfailText: p.TempfailText,
		ErrorText:    p.ErrorText,
		DeferFirst:   p.DeferFirst.Duration,
		PublicURL:    c.Web.PublicURL,
		Cache: policy.CacheOptions{
			Size:        c.Cache.Size,
			MinTTL:      c.Cache.MinTTL.Duration,
			MaxTTL:      c.Cache.MaxTTL.Duration,
			NegativeTTL: c.Cache.NegativeTTL.Duration,
			ErrorTTL:    c.Cache.ErrorTTL.Duration,
		},
		DNSServers: slices.Clone(c.DNS.Servers),
		DNSTimeout: c.DNS.Timeout.Duration,
		Lists:      make([]policy.List, len(c.Lists)),
	}
	for i := range c.Lists {
		l := &c.Lists[i]
		o.Lists[i] = policy.List{
			Name:     l.Name,
			Kind:     l.Kind(),
			Zone:     l.Zone,
			File:     l.File,
			Weight:   l.Weight,
			Category: l.Category,
			Codes:    slices.Clone(l.rules),
			IPv4:     l.UsesIPv4(),
			IPv6:     l.UsesIPv6(),
			Timeout:  l.Timeout.Duration,
			OnError:  l.OnError,
			DryRun:   l.DryRun,
			Health:   l.HealthChecked(),
		}
	}
	return o
}
