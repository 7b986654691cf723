package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written in TOML as a string such as "1.5s".
// Besides Go's units (ns us ms s m h) a whole number of days such as "90d"
// is accepted, because removal windows and decision ages are counted in days.
type Duration struct{ time.Duration }

// UnmarshalText parses "1.5s", "2m", "90d".
func (d *Duration) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	if n, ok := strings.CutSuffix(s, "d"); ok && n != "" {
		days, err := strconv.ParseFloat(n, 64)
		if err != nil || days < 0 || days > 100*365 {
			return fmt.Errorf("invalid duration %q: use a number of days such as \"90d\" or units such as \"1.5s\", \"2m\", \"1h\"", s)
		}
		d.Duration = time.Duration(days * float64(24*time.Hour))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: use units such as \"1.5s\", \"2m\", \"1h\" or days such as \"90d\"", s)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration the way Go prints it ("1m30s").
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Config is the whole blmilter configuration. The struct tags are the TOML
// keys; the comments give each key's default, which Parse fills in for every
// key the file leaves out.
type Config struct {
	Milter  MilterConfig  `toml:"milter"`
	Policyd PolicydConfig `toml:"policyd"`
	Web     WebConfig     `toml:"web"`
	Metrics MetricsConfig `toml:"metrics"`
	Store   StoreConfig   `toml:"store"`
	Log     LogConfig     `toml:"log"`
	DNS     DNSConfig     `toml:"dns"`
	Cache   CacheConfig   `toml:"cache"`
	Health  HealthConfig  `toml:"health"`
	Policy  PolicyConfig  `toml:"policy"`
	Lists   []ListConfig  `toml:"list"` // at least one

	// File is the name the config was parsed from, for messages.
	File string `toml:"-"`
}

// MilterConfig is the [milter] section.
type MilterConfig struct {
	Listen         string   `toml:"listen"`          // default "inet:127.0.0.1:8895"; or "unix:/run/blmilter/milter.sock"; "" disables
	SocketMode     string   `toml:"socket_mode"`     // octal mode for a unix socket, default "0660"
	ReadTimeout    Duration `toml:"read_timeout"`    // default 2m: time allowed for each MTA command, idle time included
	WriteTimeout   Duration `toml:"write_timeout"`   // default 10s
	MaxConnections int      `toml:"max_connections"` // default 500: above Postfix's default_process_limit (100), one connection per smtpd
	SessionTimeout Duration `toml:"session_timeout"` // default 30m: a whole MTA connection, however busy
}

// PolicydConfig is the [policyd] section: the Postfix policy delegation server.
type PolicydConfig struct {
	Listen         string   `toml:"listen"`          // default "" (off); "127.0.0.1:10045" or "unix:/path"
	SocketMode     string   `toml:"socket_mode"`     // default "0660"
	ReadTimeout    Duration `toml:"read_timeout"`    // default 330s: above Postfix's smtpd_policy_service_max_idle (300s), so Postfix closes idle connections first
	MaxConnections int      `toml:"max_connections"` // default 200: above Postfix's default_process_limit (100), one connection per smtpd
}

// WebConfig is the [web] section: the IP lookup service.
type WebConfig struct {
	Listen     string        `toml:"listen"`      // default "127.0.0.1:8080"; "" disables the web service
	PublicURL  string        `toml:"public_url"`  // default "http://127.0.0.1:8080"; base of the link in replies: {url} = public_url/ip/IP
	AdminToken string        `toml:"admin_token"` // default "": admin pages off
	SMTP       WebSMTPConfig `toml:"smtp"`
	// Self-service removal: at most RemovalQuota removals per IP within RemovalWindow.
	RemovalQuota          int      `toml:"removal_quota"`           // default 2
	RemovalWindow         Duration `toml:"removal_window"`          // default 90d
	LookupRate            float64  `toml:"lookup_rate"`             // lookups per second per client, default 1
	LookupBurst           int      `toml:"lookup_burst"`            // default 10
	SelfServiceCategories []string `toml:"self_service_categories"` // default ["local", "spam-source", "zombie", "open-proxy", "dynamic"]
}

// WebSMTPConfig is [web.smtp]: the relay for confirmation mails.
type WebSMTPConfig struct {
	Server   string `toml:"server"`   // default "": host:port; "" means removal requests wait for an operator without mail
	From     string `toml:"from"`     // required when server is set
	Username string `toml:"username"` // default "": no authentication
	Password string `toml:"password"`
	StartTLS bool   `toml:"starttls"` // default true
}

// MetricsConfig is the [metrics] section.
type MetricsConfig struct {
	Listen string `toml:"listen"` // default "": /metrics is served on [web] listen
}

// StoreConfig is the [store] section: the site's own list, removal requests, recent decisions.
type StoreConfig struct {
	Path            string   `toml:"path"`              // default "blmilter.db" in the working directory
	DecisionMaxAge  Duration `toml:"decision_max_age"`  // default 30d
	DecisionMaxRows int      `toml:"decision_max_rows"` // default 100000
}

// LogConfig is the [log] section.
type LogConfig struct {
	Level  string `toml:"level"`  // debug | info | warn | error; default info
	Format string `toml:"format"` // text | json; default text
	File   string `toml:"file"`   // default "": logs to stderr
}

// DNSConfig is the [dns] section.
type DNSConfig struct {
	Servers []string `toml:"servers"` // IP or IP:port (port 53 if left out); default []: the servers of /etc/resolv.conf
	Timeout Duration `toml:"timeout"` // per query, default 1.5s
}

// CacheConfig is the [cache] section.
type CacheConfig struct {
	Size        int      `toml:"size"`         // IPs kept, default 200000
	MinTTL      Duration `toml:"min_ttl"`      // a listing's DNS TTL is raised to at least this, default 1m
	MaxTTL      Duration `toml:"max_ttl"`      // and lowered to at most this, default 1h
	NegativeTTL Duration `toml:"negative_ttl"` // how long "not listed" is kept, default 5m
	ErrorTTL    Duration `toml:"error_ttl"`    // an answer with a list error is kept at most this, default 10s; 0: not kept
}

// HealthConfig is the [health] section: the periodic RFC 5782 probes of DNS lists.
type HealthConfig struct {
	Interval    Duration `toml:"interval"`      // between probe rounds (with jitter), default 5m
	Timeout     Duration `toml:"timeout"`       // per probe query, default 2s
	FailAfter   int      `toml:"fail_after"`    // failed rounds (timeouts, SERVFAIL) before a list is degraded, default 2
	MaxHitRatio float64  `toml:"max_hit_ratio"` // a list listing more than this share of checks is degraded, default 0.9
	MinChecks   int      `toml:"min_checks"`    // checks needed before the ratio counts, default 200
	RatioWindow Duration `toml:"ratio_window"`  // the window the ratio is taken over, default 10m
}

// PolicyConfig is the [policy] section.
type PolicyConfig struct {
	Threshold    float64  `toml:"threshold"`     // default 3: a score at or above it triggers action
	Action       string   `toml:"action"`        // reject | tempfail | tag | log; default reject
	RejectAt     string   `toml:"reject_at"`     // rcpt | connect; default rcpt
	Allow        []string `toml:"allow"`         // networks never looked up, default []
	Deadline     Duration `toml:"deadline"`      // one deadline for a whole check, default 2s
	RejectText   string   `toml:"reject_text"`   // default DefaultRejectText
	TempfailText string   `toml:"tempfail_text"` // default DefaultTempfailText
	ErrorText    string   `toml:"error_text"`    // reply when a list with on_error = "tempfail" failed; default DefaultErrorText

	allow []netip.Prefix // parsed from Allow
}

// AllowPrefixes returns the parsed allow networks.
func (p *PolicyConfig) AllowPrefixes() []netip.Prefix { return p.allow }

// List kinds, as ListKind and ListInfo.Kind report them.
const (
	KindDNS   = "dns"
	KindFile  = "file"
	KindStore = "store"
)

// ListConfig is one [[list]]: a DNS list (zone), a local file (file) or the store (store = true).
type ListConfig struct {
	Name     string         `toml:"name"`     // required, unique; the display name used in replies and logs
	Zone     string         `toml:"zone"`     // a DNS list's zone; never shown to SMTP clients
	File     string         `toml:"file"`     // a local list file: one IP or CIDR a line, optional category and # comment
	Store    bool           `toml:"store"`    // the site's own list in [store]
	Weight   float64        `toml:"weight"`   // default: the policy threshold (one hit decides); negative for allow lists
	Category string         `toml:"category"` // default "listed" for DNS lists, "local" for file and store lists
	Codes    map[string]any `toml:"codes"`    // "127.0.0.2" = "spam-source" or { category = "zombie", weight = 4 }
	IPv4     *bool          `toml:"ipv4"`     // default true
	IPv6     *bool          `toml:"ipv6"`     // default true
	Timeout  Duration       `toml:"timeout"`  // default [dns] timeout
	OnError  string         `toml:"on_error"` // ignore | tempfail; default ignore
	DryRun   bool           `toml:"dry_run"`  // default false: hits are logged but not scored when true
	Health   *bool          `toml:"health"`   // RFC 5782 probes for DNS lists, default true

	rules []codeRule // parsed from Codes, most specific first
}

// Kind is KindDNS, KindFile or KindStore.
func (l *ListConfig) Kind() string {
	switch {
	case l.File != "":
		return KindFile
	case l.Store:
		return KindStore
	default:
		return KindDNS
	}
}

// UsesIPv4 reports whether the list is asked about IPv4 clients.
func (l *ListConfig) UsesIPv4() bool { return l.IPv4 == nil || *l.IPv4 }

// UsesIPv6 reports whether the list is asked about IPv6 clients.
func (l *ListConfig) UsesIPv6() bool { return l.IPv6 == nil || *l.IPv6 }

// HealthChecked reports whether the list is probed with the RFC 5782 test points.
func (l *ListConfig) HealthChecked() bool {
	return l.Kind() == KindDNS && (l.Health == nil || *l.Health)
}

// Default reply texts. Placeholders: {ip} {list} {category} {url} {ref}.
const (
	DefaultRejectText   = "Service unavailable; client [{ip}] listed by {list} ({category}); see {url}"
	DefaultTempfailText = "Service temporarily unavailable; client [{ip}] listed by {list} ({category}); see {url}"
	DefaultErrorText    = "Temporary problem checking client [{ip}]; try again later"
)

// defaults is the configuration before a file is applied: every key's
// default except the lists, which a file must name.
func defaults() Config {
	return Config{
		Milter: MilterConfig{
			Listen:         "inet:127.0.0.1:8895",
			SocketMode:     "0660",
			ReadTimeout:    Duration{2 * time.Minute},
			WriteTimeout:   Duration{10 * time.Second},
			MaxConnections: 500,
			SessionTimeout: Duration{30 * time.Minute},
		},
		Policyd: PolicydConfig{
			SocketMode:     "0660",
			ReadTimeout:    Duration{330 * time.Second},
			MaxConnections: 200,
		},
		Web: WebConfig{
			Listen:                "127.0.0.1:8080",
			PublicURL:             "http://127.0.0.1:8080",
			SMTP:                  WebSMTPConfig{StartTLS: true},
			RemovalQuota:          2,
			RemovalWindow:         Duration{90 * 24 * time.Hour},
			LookupRate:            1,
			LookupBurst:           10,
			SelfServiceCategories: []string{"local", "spam-source", "zombie", "open-proxy", "dynamic"},
		},
		Store: StoreConfig{
			Path:            "blmilter.db",
			DecisionMaxAge:  Duration{30 * 24 * time.Hour},
			DecisionMaxRows: 100000,
		},
		Log: LogConfig{Level: "info", Format: "text"},
		DNS: DNSConfig{Timeout: Duration{1500 * time.Millisecond}},
		Cache: CacheConfig{
			Size:        200000,
			MinTTL:      Duration{time.Minute},
			MaxTTL:      Duration{time.Hour},
			NegativeTTL: Duration{5 * time.Minute},
			ErrorTTL:    Duration{10 * time.Second},
		},
		Health: HealthConfig{
			Interval:    Duration{5 * time.Minute},
			Timeout:     Duration{2 * time.Second},
			FailAfter:   2,
			MaxHitRatio: 0.9,
			MinChecks:   200,
			RatioWindow: Duration{10 * time.Minute},
		},
		Policy: PolicyConfig{
			Threshold:    3,
			Action:       string(ActionReject),
			RejectAt:     "rcpt",
			Deadline:     Duration{2 * time.Second},
			RejectText:   DefaultRejectText,
			TempfailText: DefaultTempfailText,
			ErrorText:    DefaultErrorText,
		},
	}
}
