package config

import (
	"time"

	"github.com/blmilter/blmilter/policy"
)

// Default reply texts. Placeholders: {ip} {list} {category} {url} {ref}.
const (
	DefaultRejectText   = "Service unavailable; client [{ip}] listed by {list} ({category}); see {url}"
	DefaultTempfailText = "Service temporarily unavailable; client [{ip}] listed by {list} ({category}); see {url}"
	DefaultErrorText    = "Temporary problem checking client [{ip}]; try again later"
)

// Defaults is the configuration before a file is applied: every key's
// default except the lists, which a file must name. It is the one place
// blmilter's defaults are written; the packages that run take every value
// from the caller.
func Defaults() Config {
	return Config{
		Milter: MilterConfig{
			Listen:         "inet:127.0.0.1:8895",
			SocketMode:     "0660",
			ReadTimeout:    D(2 * time.Minute),
			WriteTimeout:   D(10 * time.Second),
			SessionTimeout: D(30 * time.Minute),
			MaxConnections: 500,
		},
		Policyd: PolicydConfig{
			SocketMode:     "0660",
			ReadTimeout:    D(330 * time.Second),
			MaxConnections: 200,
		},
		Web: WebConfig{
			Listen:                "127.0.0.1:8080",
			PublicURL:             "http://127.0.0.1:8080",
			SMTP:                  WebSMTPConfig{StartTLS: true},
			RemovalQuota:          2,
			RemovalWindow:         D(90 * 24 * time.Hour),
			LookupRate:            1,
			LookupBurst:           10,
			SelfServiceCategories: []string{"local", "spam-source", "zombie", "open-proxy", "dynamic"},
		},
		Store: StoreConfig{
			Path:            "blmilter.db",
			Required:        true,
			DecisionMaxAge:  D(30 * 24 * time.Hour),
			DecisionMaxRows: 100000,
			EvidenceMaxAge:  D(90 * 24 * time.Hour),
			HistoryMaxAge:   D(730 * 24 * time.Hour),
		},
		Zone: ZoneConfig{
			Listen: []string{},
			TTL:    D(5 * time.Minute),
			NS:     []string{},
			SOA: ZoneSOAConfig{
				Refresh: D(time.Hour),
				Retry:   D(10 * time.Minute),
				Expire:  D(7 * 24 * time.Hour),
				Minimum: D(5 * time.Minute),
			},
			Codes: map[string]string{
				"spam-source": "127.0.0.2",
				"local":       "127.0.0.3",
				"zombie":      "127.0.0.4",
				"open-proxy":  "127.0.0.9",
				"dynamic":     "127.0.0.10",
			},
			TXT:      "{category}: see {url}",
			Transfer: []string{},
			Notify:   []string{},
			TSIG:     ZoneTSIGConfig{Algorithm: "hmac-sha256"},
		},
		Fleet: FleetConfig{PreviousKeyFiles: []string{}},
		Log:   LogConfig{Level: "info", Format: "text"},
		DNS:   DNSConfig{Servers: []string{}, Timeout: D(1500 * time.Millisecond)},
		Cache: CacheConfig{
			Size:        200000,
			MinTTL:      D(time.Minute),
			MaxTTL:      D(time.Hour),
			NegativeTTL: D(5 * time.Minute),
			ErrorTTL:    D(10 * time.Second),
		},
		Health: HealthConfig{
			Interval:    D(5 * time.Minute),
			Timeout:     D(2 * time.Second),
			FailAfter:   2,
			MaxHitRatio: 0.9,
			MinChecks:   200,
			RatioWindow: D(10 * time.Minute),
		},
		Policy: PolicyConfig{
			Threshold:    3,
			Action:       string(policy.ActionReject),
			RejectAt:     policy.RejectAtRcpt,
			Allow:        []string{},
			Deadline:     D(2 * time.Second),
			RejectText:   DefaultRejectText,
			TempfailText: DefaultTempfailText,
			ErrorText:    DefaultErrorText,
		},
		Traps: TrapsConfig{
			Addresses:  []string{},
			Hits:       1,
			Window:     D(24 * time.Hour),
			Expires:    D(7 * 24 * time.Hour),
			MaxExpires: D(90 * 24 * time.Hour),
			Category:   "spam-source",
			IPv6Prefix: 64,
		},
	}
}

// listDefaults fills what a [[list]] leaves out; set tells the keys the
// file gave (nil for a config built in code, whose lists are complete but
// for the zero values filled here).
func listDefaults(c *Config, i int, set func(key string) bool) {
	l := &c.Lists[i]
	k := func(field string) string { return listKey(i, field) }
	if set != nil && !set(k("weight")) {
		l.Weight = c.Policy.Threshold
	}
	if l.Category == "" && (set == nil || !set(k("category"))) {
		if l.Kind() == policy.KindDNS {
			l.Category = "listed"
		} else {
			l.Category = "local"
		}
	}
	if l.IPv4 == nil {
		l.IPv4 = ptr(true)
	}
	if l.IPv6 == nil {
		l.IPv6 = ptr(true)
	}
	if l.Timeout.Duration == 0 {
		l.Timeout = c.DNS.Timeout
	}
	if l.OnError == "" {
		l.OnError = policy.OnErrorIgnore
	}
	if l.Health == nil {
		l.Health = ptr(l.Kind() == policy.KindDNS)
	}
}

func ptr[T any](v T) *T { return &v }
