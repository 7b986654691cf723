// Package config is blmilter's configuration file: the TOML types of every
// section, the one set of defaults, decoding and validation that reports
// every problem at once as "file:line: key: message" with did-you-mean for
// misspelt keys. Nothing else in blmilter reads the file: cmd/blmilter turns
// a Config into each part's own options.
//
// The doc comments of the fields below are the reference: docs/config.md is
// generated from them, the struct tags and Defaults (go generate ./config),
// and a test fails when it is out of date. Every leaf field carries a
// reload tag: "live" when a SIGHUP applies a change, "restart" when the
// running daemon keeps the old value and logs a warning naming the key.
package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/blmilter/blmilter/policy"
)

//go:generate go test -run ^TestReference$ . -args -update

// Duration is a time.Duration written in TOML as a string such as "1.5s".
// Besides Go's units (ns us ms s m h) a whole number of days such as "90d"
// is accepted, because removal windows and decision ages are counted in days.
type Duration struct{ time.Duration }

// D makes a Duration.
func D(d time.Duration) Duration { return Duration{d} }

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

// MarshalText writes the duration in the shortest form UnmarshalText reads
// back: "90d", "1h", "2m", "1.5s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// String is the duration as a config file would write it.
func (d Duration) String() string {
	v := d.Duration
	const day = 24 * time.Hour
	switch {
	case v == 0:
		return "0s"
	case v%day == 0:
		return strconv.FormatInt(int64(v/day), 10) + "d"
	case v%time.Hour == 0:
		return strconv.FormatInt(int64(v/time.Hour), 10) + "h"
	case v%time.Minute == 0:
		return strconv.FormatInt(int64(v/time.Minute), 10) + "m"
	}
	return v.String()
}

// Config is the whole blmilter configuration.
type Config struct {
	Milter  MilterConfig  `toml:"milter"`
	Policyd PolicydConfig `toml:"policyd"`
	Web     WebConfig     `toml:"web"`
	Metrics MetricsConfig `toml:"metrics"`
	Store   StoreConfig   `toml:"store"`
	Zone    ZoneConfig    `toml:"zone"`
	Fleet   FleetConfig   `toml:"fleet"`
	Log     LogConfig     `toml:"log"`
	DNS     DNSConfig     `toml:"dns"`
	Cache   CacheConfig   `toml:"cache"`
	Health  HealthConfig  `toml:"health"`
	Policy  PolicyConfig  `toml:"policy"`
	Traps   TrapsConfig   `toml:"traps"`
	Lists   []ListConfig  `toml:"list"`

	// File is the name the config was parsed from, for messages.
	File string `toml:"-"`
	// lines are the line numbers of the keys in the file, for problems
	// found after parsing (see Errorf).
	lines map[string]int
}

// MilterConfig is the [milter] section: the milter for Postfix
// (smtpd_milters) and Sendmail (INPUT_MAIL_FILTER).
type MilterConfig struct {
	// Where the milter listens, in the forms Postfix and Sendmail use:
	// "inet:127.0.0.1:8895", "inet:8895@127.0.0.1", "inet6:[::1]:8895" or
	// "unix:/run/blmilter/milter.sock". "" turns the milter off.
	Listen string `toml:"listen" reload:"restart"`
	// Octal file mode of a unix socket.
	SocketMode string `toml:"socket_mode" reload:"restart"`
	// Group (name or number) of a unix socket, so that the MTA's user can
	// reach it; "" leaves the group of the blmilter process.
	SocketGroup string `toml:"socket_group" reload:"restart"`
	// Time allowed for each MTA command, from the moment blmilter waits
	// for it until its last byte: idle time and a slow packet alike.
	// Postfix sends nothing while the client sends DATA, so with action =
	// "tag" keep it above the time the slowest clients take for a message.
	ReadTimeout Duration `toml:"read_timeout" reload:"restart"`
	// Time allowed to write one reply to the MTA.
	WriteTimeout Duration `toml:"write_timeout" reload:"restart"`
	// Longest a whole MTA connection may last, however active: above any
	// real SMTP session, including a large message.
	SessionTimeout Duration `toml:"session_timeout" reload:"restart"`
	// Most MTA connections served at once; one more is closed at once and
	// Postfix applies milter_default_action to its session. Above
	// Postfix's default_process_limit (100), one connection per smtpd.
	MaxConnections int `toml:"max_connections" reload:"restart"`
}

// PolicydConfig is the [policyd] section: the Postfix policy delegation
// server (check_policy_service).
type PolicydConfig struct {
	// Where the policy server listens: "127.0.0.1:10045", "inet:127.0.0.1:10045"
	// or "unix:/var/spool/postfix/private/blmilter". "" turns it off.
	Listen string `toml:"listen" reload:"restart"`
	// Octal file mode of a unix socket.
	SocketMode string `toml:"socket_mode" reload:"restart"`
	// Group (name or number) of a unix socket; "" leaves the group of the
	// blmilter process.
	SocketGroup string `toml:"socket_group" reload:"restart"`
	// How long a connection may wait for (or in) a request. Above Postfix's
	// smtpd_policy_service_max_idle (300s), so Postfix closes idle
	// connections first.
	ReadTimeout Duration `toml:"read_timeout" reload:"live"`
	// Most connections served at once; more are closed at once, which
	// Postfix treats as an unavailable policy service. Above Postfix's
	// default_process_limit (100): each smtpd holds at most one connection.
	MaxConnections int `toml:"max_connections" reload:"live"`
}

// WebConfig is the [web] section: the IP lookup service every reply links
// to, its removal requests and the admin API.
type WebConfig struct {
	// Where the lookup service listens, HOST:PORT. "" turns it off.
	Listen string `toml:"listen" reload:"restart"`
	// Base URL of the lookup service as clients reach it, without a
	// trailing slash: the {url} in replies is public_url/ip/IP.
	PublicURL string `toml:"public_url" reload:"live"`
	// Bearer token of the admin API (/admin/api/), at least 32 characters;
	// "" turns the admin API off (404).
	AdminToken string        `toml:"admin_token" reload:"live"`
	SMTP       WebSMTPConfig `toml:"smtp"`
	// Self-service removals allowed per IP within removal_window.
	RemovalQuota int `toml:"removal_quota" reload:"live"`
	// The window removal_quota counts over.
	RemovalWindow Duration `toml:"removal_window" reload:"live"`
	// Lookups per second allowed to one client (an IPv4 address or an
	// IPv6 /64).
	LookupRate float64 `toml:"lookup_rate" reload:"live"`
	// Lookups one client may make at once before lookup_rate applies.
	LookupBurst int `toml:"lookup_burst" reload:"live"`
	// Categories of the site's own list that a requester may remove
	// without an operator, after confirming by mail.
	SelfServiceCategories []string `toml:"self_service_categories" reload:"live"`
	// Address that gets a mail when a removal request waits for an
	// operator; needs web.smtp.server. "" sends none (the metric
	// blmilter_removal_requests_waiting still counts them).
	OperatorEmail string `toml:"operator_email" reload:"live"`
	// A domain this site receives mail for, through the MTA blmilter
	// filters: the status page of a listing its owner may remove offers
	// delist+TOKEN@ this domain, and mail from the listed address to it
	// removes the listing (proof of control). The MTA must accept
	// delist+anything@ this domain as a recipient (recipient_delimiter =
	// + and a delist mailbox or alias, which may discard). "" turns proof
	// of control off.
	DelistDomain string `toml:"delist_domain" reload:"live"`
}

// WebSMTPConfig is the [web.smtp] section: the relay for the confirmation
// mails of removal requests.
type WebSMTPConfig struct {
	// Relay as host:port; "" means removal requests wait for an operator
	// without a confirmation mail.
	Server string `toml:"server" reload:"live"`
	// Sender address of the confirmation mails; needed when server is set.
	From string `toml:"from" reload:"live"`
	// User name for SMTP authentication; "" sends without.
	Username string `toml:"username" reload:"live"`
	// Password for SMTP authentication.
	Password string `toml:"password" reload:"live"`
	// Whether to require STARTTLS before authenticating and sending.
	StartTLS bool `toml:"starttls" reload:"live"`
}

// MetricsConfig is the [metrics] section: Prometheus metrics.
type MetricsConfig struct {
	// Where /metrics is served, HOST:PORT; "" serves it on [web] listen.
	Listen string `toml:"listen" reload:"restart"`
}

// StoreConfig is the [store] section: the SQLite file with the site's own
// list, removal requests and recent decisions.
type StoreConfig struct {
	// The database file; relative to the daemon's working directory. The
	// list and requests commands use it too.
	Path string `toml:"path" reload:"restart"`
	// Whether serve refuses to start when the store cannot be opened (a
	// lock held by another process, a read-only file, a disk fault).
	// false: it starts without the site's own list, says so on /healthz
	// (503) and blmilter_store_up, and keeps trying to open the store
	// (backing off up to a minute); the list is used the moment it opens.
	Required bool `toml:"required" reload:"restart"`
	// Recorded decisions older than this are deleted.
	DecisionMaxAge Duration `toml:"decision_max_age" reload:"live"`
	// At most this many recorded decisions are kept; the oldest go first.
	DecisionMaxRows int `toml:"decision_max_rows" reload:"live"`
	// How long each spam trap hit is kept in detail (time, HELO, sender,
	// trap, queue id, reverse DNS); older hits are summarised into
	// per-day counts of the address.
	EvidenceMaxAge Duration `toml:"evidence_max_age" reload:"live"`
	// How long an address's history is kept: the per-day summaries of
	// trap hits and refusals, the listing events, decided removal
	// requests, and ended listings (a listing forgotten so starts again at
	// the first level of escalation). At least evidence_max_age and
	// web.removal_window.
	HistoryMaxAge Duration `toml:"history_max_age" reload:"live"`
}

// ZoneConfig is the [zone] section: the site's own list published as an
// authoritative DNS block list zone (RFC 5782), which other mail servers,
// the other blmilter nodes of a fleet and secondaries (NSD, Knot, BIND)
// ask or transfer. It is served when name and listen are set, from the
// store; every change to the list, an expiry included, is served within
// 2 s. With a name alone, "blmilter zone export" writes it for rbldnsd or
// a primary name server.
type ZoneConfig struct {
	// The zone's apex, such as "bl.example.org"; "" turns the zone off.
	Name string `toml:"name" reload:"restart"`
	// Addresses the zone is served on, each over UDP and TCP, as IP:PORT
	// ("[::1]:53" for IPv6). In production a public address, port 53. Empty:
	// not served (export only).
	Listen []string `toml:"listen" reload:"restart"`
	// TTL of the A and TXT answers; a name that is not listed is cached for
	// soa.minimum instead. Mail servers see a removal at most this late.
	TTL Duration `toml:"ttl" reload:"live"`
	// The zone's name servers, fully qualified and outside the zone; at
	// least one.
	NS  []string      `toml:"ns" reload:"live"`
	SOA ZoneSOAConfig `toml:"soa"`
	// The A record of each category's listings, inside 127.0.0.0/8 (not
	// 127.0.0.1, not 127.255.255.0/24). A category without one answers
	// 127.0.0.2. The [[list]] codes of the nodes that ask the zone map
	// them back.
	Codes map[string]string `toml:"codes" reload:"live"`
	// The TXT answer. Placeholders: {ip} (the listed address or network),
	// {category}, {reason}, {url} ([web] public_url/ip/IP). Cut to 255 bytes.
	TXT string `toml:"txt" reload:"live"`
	// Networks (or addresses) that may transfer the zone (AXFR, IXFR); empty:
	// nobody.
	Transfer []string `toml:"transfer" reload:"live"`
	// Secondaries told of every change by NOTIFY, as IP:PORT (port 53 when
	// left out).
	Notify []string       `toml:"notify" reload:"live"`
	TSIG   ZoneTSIGConfig `toml:"tsig"`

	// parsed by validation
	codes    map[string]netip.Addr
	transfer []netip.Prefix
	notify   []string
}

// ZoneSOAConfig is the [zone.soa] section: the SOA record's fields but the
// serial, which grows with every change and is kept in the store.
type ZoneSOAConfig struct {
	// The primary name server; "" is the first of zone.ns.
	MName string `toml:"mname" reload:"live"`
	// The zone's contact as a name ("hostmaster.example.org.") or a mail
	// address; "" is hostmaster.<zone>.
	RName string `toml:"rname" reload:"live"`
	// How often secondaries check the serial (NOTIFY tells them sooner).
	Refresh Duration `toml:"refresh" reload:"live"`
	// How soon a secondary retries a failed check.
	Retry Duration `toml:"retry" reload:"live"`
	// How long a secondary serves the zone without reaching this server.
	Expire Duration `toml:"expire" reload:"live"`
	// How long resolvers keep "not listed" (the negative TTL).
	Minimum Duration `toml:"minimum" reload:"live"`
}

// ZoneTSIGConfig is the [zone.tsig] section: the key that signs transfers
// and NOTIFY (RFC 8945). With it, transfers must be signed, besides coming
// from a transfer network.
type ZoneTSIGConfig struct {
	// The key's name, as the secondaries know it, such as "xfr.example.org.";
	// "" turns TSIG off.
	Name string `toml:"name" reload:"restart"`
	// hmac-sha256, hmac-sha1, hmac-sha224, hmac-sha384 or hmac-sha512.
	Algorithm string `toml:"algorithm" reload:"restart"`
	// File holding the secret: what tsig-keygen or keymgr writes (a key
	// clause with secret "…"), or the base64 secret alone on a line (head -c
	// 32 /dev/urandom | base64). Relative to the config file.
	SecretFile string `toml:"secret_file" reload:"restart"`
}

// FleetConfig is the [fleet] section: what the blmilter nodes of a site
// share so that a bounce from any of them opens its decision on the lookup
// service of another, with no shared database.
type FleetConfig struct {
	// File holding the key the fleet shares, as base64 text (head -c 32
	// /dev/urandom | base64 > fleet.key), the same on every node; relative
	// to the config file. With it each reply's {ref} is the decision itself
	// (time, address, the lists that hit with their codes and categories,
	// score, action), signed, and {url} carries it as ?ref=; the lookup page
	// shows such a decision when it verifies, and refuses it otherwise.
	// "": refs are short ids of the decisions this node's store keeps.
	KeyFile string `toml:"key_file" reload:"live"`
	// Files of keys the lookup page still accepts, for a change of key:
	// give the old key's file here while the nodes move to the new one.
	PreviousKeyFiles []string `toml:"previous_key_files" reload:"live"`
	// This node's name in its signed refs (at most 32 characters), shown on
	// the lookup page; "" leaves it out.
	Node string `toml:"node" reload:"live"`
}

// LogConfig is the [log] section: what blmilter logs, and where. Every
// decision is one line.
type LogConfig struct {
	// Lowest level logged: debug, info, warn or error.
	Level string `toml:"level" reload:"live"`
	// Line format: text (logfmt) or json.
	Format string `toml:"format" reload:"restart"`
	// Log file, reopened on SIGUSR1 (for logrotate); "" logs to stderr.
	File string `toml:"file" reload:"restart"`
}

// DNSConfig is the [dns] section: the resolvers that DNS lists, health
// probes and the lookup page's reverse DNS ask.
type DNSConfig struct {
	// Resolvers as IP or IP:port (port 53 when left out; "[IPv6]:port").
	// Empty: the servers of /etc/resolv.conf. Use a resolver of your own:
	// large public resolvers are refused by most lists.
	Servers []string `toml:"servers" reload:"live"`
	// Time allowed for one DNS query; a list's own timeout may differ.
	Timeout Duration `toml:"timeout" reload:"live"`
}

// CacheConfig is the [cache] section: the lookup cache of DNS answers per
// client IP, which honours the lists' TTLs.
type CacheConfig struct {
	// Client IPs kept.
	Size int `toml:"size" reload:"live"`
	// A listing's DNS TTL is raised to at least this.
	MinTTL Duration `toml:"min_ttl" reload:"live"`
	// A listing's DNS TTL is lowered to at most this.
	MaxTTL Duration `toml:"max_ttl" reload:"live"`
	// How long "not listed" is kept.
	NegativeTTL Duration `toml:"negative_ttl" reload:"live"`
	// An answer with a list error is kept at most this long; 0 keeps none.
	ErrorTTL Duration `toml:"error_ttl" reload:"live"`
}

// HealthConfig is the [health] section: the RFC 5782 probes that degrade a
// DNS list which stops answering honestly, so it never refuses mail.
type HealthConfig struct {
	// Time between probe rounds (with jitter).
	Interval Duration `toml:"interval" reload:"restart"`
	// Time allowed for one probe query.
	Timeout Duration `toml:"timeout" reload:"restart"`
	// Failed rounds (timeouts, SERVFAIL) before a list is degraded.
	FailAfter int `toml:"fail_after" reload:"restart"`
	// A list that lists more than this share of real checks is degraded:
	// it is answering everything.
	MaxHitRatio float64 `toml:"max_hit_ratio" reload:"restart"`
	// Checks needed in ratio_window before max_hit_ratio counts.
	MinChecks int `toml:"min_checks" reload:"restart"`
	// The window the hit ratio is taken over.
	RatioWindow Duration `toml:"ratio_window" reload:"restart"`
}

// PolicyConfig is the [policy] section: how hits are scored and what a
// score at or above the threshold does.
type PolicyConfig struct {
	// A score at or above it triggers action.
	Threshold float64 `toml:"threshold" reload:"live"`
	// What a score at or above the threshold does: reject (550 5.7.1),
	// tempfail (451 4.7.1), tag (add an X-Blmilter header and accept) or
	// log (dry run: only the log line says what would have happened).
	Action string `toml:"action" reload:"live"`
	// When the verdict is applied: rcpt (mail to postmaster@ and abuse@
	// is still accepted, and the reply text reaches the sender) or connect.
	RejectAt string `toml:"reject_at" reload:"live"`
	// Networks (or addresses) never looked up, such as your own.
	Allow []string `toml:"allow" reload:"live"`
	// One deadline for a whole check: a slow list never holds a session
	// longer.
	Deadline Duration `toml:"deadline" reload:"live"`
	// Reply to a refused client. Placeholders: {ip} {list} {category}
	// {url} {ref}. {url} is [web] public_url/ip/IP; with [fleet] key_file it
	// ends in ?ref= and the signed decision, as does {ref}.
	RejectText string `toml:"reject_text" reload:"live"`
	// Reply when the action is tempfail.
	TempfailText string `toml:"tempfail_text" reload:"live"`
	// Reply when a list with on_error = "tempfail" failed to answer.
	ErrorText string `toml:"error_text" reload:"live"`
	// Delist-and-deliver: a client refused only by a listing of the
	// site's own list that its owner may remove (see
	// web.self_service_categories) gets tempfail_text (451 4.7.1) instead
	// of a 550 for this long after its first refusal, so the sending
	// server keeps the mail queued and delivers it on its own once the
	// listing is removed. "0s" turns it off.
	DeferFirst Duration `toml:"defer_first" reload:"live"`

	allow []netip.Prefix // parsed from Allow by validation
}

// TrapsConfig is the [traps] section: spam trap addresses. A client that
// sends to them is listed on the site's own list, which the lookup service
// explains with the evidence (never the trap addresses). Allowed networks,
// authenticated and loopback clients, and clients an allow list scores
// below the threshold are never listed.
type TrapsConfig struct {
	// Trap addresses: "spamtrap@example.org", or "@trap.example.org" for
	// every address of a domain. A trap recipient is refused with 550
	// 5.1.1, as a dead address is; the session's other recipients are
	// judged as before. The MTA must accept these recipients itself, so
	// that blmilter sees them (valid mailboxes, or a catch-all for a trap
	// domain). Empty: no traps.
	Addresses []string `toml:"addresses" reload:"live"`
	// Trap hits within window that list the client.
	Hits int `toml:"hits" reload:"live"`
	// The window the hits are counted in.
	Window Duration `toml:"window" reload:"live"`
	// How long a trap listing lasts, counted from the last hit: every new
	// hit extends it.
	Expires Duration `toml:"expires" reload:"live"`
	// Each relisting after a listing period ended (removed or expired)
	// doubles expires, up to this.
	MaxExpires Duration `toml:"max_expires" reload:"live"`
	// Category of trap listings.
	Category string `toml:"category" reload:"live"`
	// An IPv6 client is listed as its network of this length (a host
	// usually holds a whole /64).
	IPv6Prefix int `toml:"ipv6_prefix" reload:"live"`
}

// ListConfig is one [[list]] section: a DNS list (zone), a local list file
// (file) or the site's own list (store = true). At least one is needed.
type ListConfig struct {
	// Display name, unique: used in replies and logs, never the zone.
	Name string `toml:"name" reload:"live"`
	// A DNS list's zone; never shown to SMTP clients (it may hold a key).
	Zone string `toml:"zone" reload:"live"`
	// A local list file: one IP or CIDR a line, then an optional category
	// and an optional "# comment" (shown as the reason). Relative to the
	// config file; re-read when it changes.
	File string `toml:"file" reload:"live"`
	// true: the site's own list in [store].
	Store bool `toml:"store" reload:"live"`
	// What a hit adds to the score; negative for allow lists. Default: the
	// policy threshold, so one hit decides.
	Weight float64 `toml:"weight" reload:"live"`
	// Category of a hit, one word of a-z, 0-9 and '-'. Default: "listed"
	// for DNS lists, "local" for file and store lists.
	Category string `toml:"category" reload:"live"`
	// A DNS list's answer codes: "127.0.0.2" = "spam-source", or a range
	// "127.0.0.4-127.0.0.7", a network "127.0.1.0/24" or a bitmask "&4",
	// each mapped to a category or to { category = "zombie", weight = 4 }.
	// A code no entry names counts with the list's category and weight.
	Codes map[string]any `toml:"codes" reload:"live"`
	// Whether the list is asked about IPv4 clients.
	IPv4 *bool `toml:"ipv4" reload:"live"`
	// Whether the list is asked about IPv6 clients.
	IPv6 *bool `toml:"ipv6" reload:"live"`
	// Time allowed for one query of a DNS list. Default: [dns] timeout.
	Timeout Duration `toml:"timeout" reload:"live"`
	// What a DNS list that fails to answer does: ignore (the client is
	// judged without it) or tempfail (451 unless the score decided).
	OnError string `toml:"on_error" reload:"live"`
	// Hits are logged but not scored: try a list before it counts.
	DryRun bool `toml:"dry_run" reload:"live"`
	// Whether a DNS list is probed with the RFC 5782 test points and
	// degraded when it fails them.
	Health *bool `toml:"health" reload:"live"`

	rules []policy.CodeRule // parsed from Codes by validation
}

// Kind is policy.KindDNS, policy.KindFile or policy.KindStore.
func (l *ListConfig) Kind() string {
	switch {
	case l.File != "":
		return policy.KindFile
	case l.Store:
		return policy.KindStore
	default:
		return policy.KindDNS
	}
}

// UsesIPv4 reports whether the list is asked about IPv4 clients.
func (l *ListConfig) UsesIPv4() bool { return l.IPv4 == nil || *l.IPv4 }

// UsesIPv6 reports whether the list is asked about IPv6 clients.
func (l *ListConfig) UsesIPv6() bool { return l.IPv6 == nil || *l.IPv6 }

// HealthChecked reports whether the list is probed with the RFC 5782 test points.
func (l *ListConfig) HealthChecked() bool {
	return l.Kind() == policy.KindDNS && (l.Health == nil || *l.Health)
}

// StoreListed reports whether a [[list]] with store = true uses the site's
// own list to refuse mail.
func (c *Config) StoreListed() bool {
	for i := range c.Lists {
		if c.Lists[i].Store {
			return true
		}
	}
	return false
}
