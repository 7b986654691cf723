package policy

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/blmilter/blmilter/signedref"
)

// Options are an engine's settings. NewEngine takes them as they are: the
// caller has validated them (cmd/blmilter builds them from a checked
// config file), so every value is in range and every list complete.
type Options struct {
	// Deps are the collaborators the engine reports to and asks.
	Deps

	// Threshold: a score at or above it triggers Action.
	Threshold float64
	Action    Action
	// RejectAt is RejectAtRcpt or RejectAtConnect: the SMTP stage at which
	// the front ends apply a verdict.
	RejectAt string
	// Allow are networks never looked up.
	Allow []netip.Prefix
	// Deadline bounds one whole check.
	Deadline time.Duration
	// Reply templates, with the placeholders {ip} {list} {category} {url} {ref}.
	RejectText   string
	TempfailText string
	ErrorText    string // when a list with OnError "tempfail" failed
	// DeferFirst: a client refused only by a listing of the site's own
	// list that its owner may remove (StoreList implementing Deferrer
	// says which) gets TempfailText instead of a reject for this long
	// after its first refusal (delist-and-deliver). 0: off.
	DeferFirst time.Duration
	// PublicURL is the lookup service's base URL: {url} is PublicURL/ip/IP.
	// Empty leaves {url} empty.
	PublicURL string
	// RefKey, the key a fleet shares, makes each reply's ref the decision
	// itself, signed (package signedref), and {url} carries it:
	// PublicURL/ip/IP?ref=REF. Nil: the ref is a short id of the decision
	// as the Recorder keeps it, and {url} is the plain link.
	RefKey *signedref.Key
	// Node names this blmilter in signed refs; "" leaves the name out.
	Node string

	Cache CacheOptions
	// DNSServers are "IP" or "IP:port"; none means the system's resolvers.
	DNSServers []string
	DNSTimeout time.Duration

	// Lists in the order replies and logs name them.
	Lists []List
}

// Deps are an engine's collaborators; all are optional.
type Deps struct {
	Logger    *slog.Logger
	StoreList StoreList // needed by lists of kind KindStore; without it they are skipped
	Recorder  Recorder
	// Observers see every DNS answer and every verdict: the metrics and the
	// health monitor's hit-ratio alarm.
	Observers []Observer
	// Health gives each probed DNS list its starting state; without it
	// every list starts healthy (one-off commands and tests).
	Health HealthSource
	// OnPanic, when set, is told of each panic the engine recovered from
	// in its DNS work: a check's lookups (a list error for each list not
	// yet answered) or a background fetch of listing texts (the decision
	// is recorded without them). For blmilter_panics_total.
	OnPanic func()
}

// CacheOptions bound how long DNS answers are kept.
type CacheOptions struct {
	Size        int           // IPs kept
	MinTTL      time.Duration // a listing's DNS TTL is raised to at least this
	MaxTTL      time.Duration // and lowered to at most this
	NegativeTTL time.Duration // how long "not listed" is kept
	ErrorTTL    time.Duration // an answer with a list error is kept at most this; 0: not kept
}

// The stages at which a verdict is applied (Options.RejectAt).
const (
	RejectAtRcpt    = "rcpt"
	RejectAtConnect = "connect"
)

// What a list error does (List.OnError).
const (
	OnErrorIgnore   = "ignore"
	OnErrorTempfail = "tempfail"
)

// List kinds, as List.Kind and ListInfo.Kind report them.
const (
	KindDNS   = "dns"
	KindFile  = "file"
	KindStore = "store"
)

// List is one list the engine asks: a DNS list, a local file or the
// site's own list in the store.
type List struct {
	Name string // display name, unique; used in replies and logs
	Kind string // KindDNS, KindFile or KindStore
	Zone string // KindDNS: the zone; never shown to SMTP clients
	File string // KindFile: the list file

	Weight   float64 // what a hit adds to the score; negative for allow lists
	Category string  // of a hit no code rule names
	// Codes map a DNS list's answer codes to categories and weights; a
	// code no rule matches is a hit with Category and Weight.
	Codes []CodeRule

	IPv4, IPv6 bool          // which clients the list is asked about
	Timeout    time.Duration // KindDNS: per query
	OnError    string        // KindDNS: OnErrorIgnore or OnErrorTempfail
	DryRun     bool          // hits are logged but not scored
	Health     bool          // KindDNS: probed with the RFC 5782 test points
}
