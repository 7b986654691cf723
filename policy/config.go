package policy

import (
	"net/netip"
	"time"
)

// Duration is a time.Duration written in TOML as a string such as "1.5s".
type Duration struct{ time.Duration }

// Config is the whole blmilter configuration. The struct tags are the TOML
// keys; the README's config reference documents each with its default.
type Config struct {
	Milter  MilterConfig  `toml:"milter"`
	Policyd PolicydConfig `toml:"policyd"`
	Web     WebConfig     `toml:"web"`
	Metrics MetricsConfig `toml:"metrics"`
	Store   StoreConfig   `toml:"store"`
	Log     LogConfig     `toml:"log"`
	DNS     DNSConfig     `toml:"dns"`
	Cache   CacheConfig   `toml:"cache"`
	Policy  PolicyConfig  `toml:"policy"`
	Lists   []ListConfig  `toml:"list"`
}

// MilterConfig is the [milter] section.
type MilterConfig struct {
	Listen       string   `toml:"listen"`        // "inet:127.0.0.1:8895" or "unix:/run/blmilter/milter.sock"; "" disables
	SocketMode   string   `toml:"socket_mode"`   // octal mode for a unix socket, default "0660"
	ReadTimeout  Duration `toml:"read_timeout"`  // default 2m: idle time allowed between MTA commands
	WriteTimeout Duration `toml:"write_timeout"` // default 10s
}

// PolicydConfig is the [policyd] section: the Postfix policy delegation server.
type PolicydConfig struct {
	Listen         string   `toml:"listen"` // "127.0.0.1:10045" or "unix:/path"; "" disables
	SocketMode     string   `toml:"socket_mode"`
	ReadTimeout    Duration `toml:"read_timeout"` // default 5m (Postfix keeps connections open)
	MaxConnections int      `toml:"max_connections"`
}

// WebConfig is the [web] section: the IP lookup service.
type WebConfig struct {
	Listen     string        `toml:"listen"`     // "" disables the web service
	PublicURL  string        `toml:"public_url"` // base of the link in replies: {url} = public_url/ip/IP
	AdminToken string        `toml:"admin_token"`
	SMTP       WebSMTPConfig `toml:"smtp"`
	// Self-service removal: at most RemovalQuota removals per IP within RemovalWindow.
	RemovalQuota          int      `toml:"removal_quota"`
	RemovalWindow         Duration `toml:"removal_window"`
	LookupRate            float64  `toml:"lookup_rate"` // lookups per second per client
	LookupBurst           int      `toml:"lookup_burst"`
	SelfServiceCategories []string `toml:"self_service_categories"`
}

// WebSMTPConfig is [web.smtp]: the relay for confirmation mails.
type WebSMTPConfig struct {
	Server   string `toml:"server"` // host:port; "" means removal requests wait for an operator without mail
	From     string `toml:"from"`
	Username string `toml:"username"`
	Password string `toml:"password"`
	StartTLS bool   `toml:"starttls"`
}

// MetricsConfig is the [metrics] section.
type MetricsConfig struct {
	Listen string `toml:"listen"` // "" serves /metrics on [web] listen
}

// StoreConfig is the [store] section: the site's own list, removal requests, recent decisions.
type StoreConfig struct {
	Path            string   `toml:"path"` // default "blmilter.db" in the working directory
	DecisionMaxAge  Duration `toml:"decision_max_age"`
	DecisionMaxRows int      `toml:"decision_max_rows"`
}

// LogConfig is the [log] section.
type LogConfig struct {
	Level  string `toml:"level"`  // debug | info | warn | error
	Format string `toml:"format"` // text | json
	File   string `toml:"file"`   // "" logs to stderr
}

// DNSConfig is the [dns] section.
type DNSConfig struct {
	Servers []string `toml:"servers"` // host or host:port; empty: /etc/resolv.conf
	Timeout Duration `toml:"timeout"` // per query, default 1.5s
}

// CacheConfig is the [cache] section.
type CacheConfig struct {
	Size        int      `toml:"size"`
	MinTTL      Duration `toml:"min_ttl"`
	MaxTTL      Duration `toml:"max_ttl"`
	NegativeTTL Duration `toml:"negative_ttl"`
	ErrorTTL    Duration `toml:"error_ttl"`
}

// PolicyConfig is the [policy] section.
type PolicyConfig struct {
	Threshold    float64  `toml:"threshold"`
	Action       string   `toml:"action"`    // reject | tempfail | tag | log
	RejectAt     string   `toml:"reject_at"` // rcpt | connect
	Allow        []string `toml:"allow"`     // networks never looked up
	Deadline     Duration `toml:"deadline"`  // one deadline for a whole check, default 2s
	RejectText   string   `toml:"reject_text"`
	TempfailText string   `toml:"tempfail_text"`
	ErrorText    string   `toml:"error_text"` // reply when a list with on_error = "tempfail" failed

	allow []netip.Prefix // parsed from Allow
}

// ListConfig is one [[list]]: a DNS list (zone), a local file (file) or the store (store = true).
type ListConfig struct {
	Name     string         `toml:"name"`
	Zone     string         `toml:"zone"`
	File     string         `toml:"file"`
	Store    bool           `toml:"store"`
	Weight   float64        `toml:"weight"`
	Category string         `toml:"category"`
	Codes    map[string]any `toml:"codes"` // "127.0.0.2" = "spam-source" or { category = "zombie", weight = 4 }
	IPv4     *bool          `toml:"ipv4"`
	IPv6     *bool          `toml:"ipv6"`
	Timeout  Duration       `toml:"timeout"`
	OnError  string         `toml:"on_error"` // ignore | tempfail
	DryRun   bool           `toml:"dry_run"`
	Health   *bool          `toml:"health"`
}
