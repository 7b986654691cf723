package zone

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/dnsbl"
)

// Defaults for the tuning fields of Options left zero. What the zone
// publishes (Zone: its TTL, SOA timers and TXT template) has no defaults
// here: the caller gives it, from [zone], whose defaults are the config's.
const (
	DefaultUDPSize          = 1232 // DNS flag day 2020: no fragmented answers
	DefaultJournalRecords   = 100000
	DefaultNotifyRetries    = 5
	DefaultNotifyTimeout    = time.Second
	DefaultMaxTCPConns      = 256
	DefaultMaxTCPConnsPerIP = 16
	DefaultTCPIdleTimeout   = 10 * time.Second
)

// DefaultCode is the A record of a listing whose category has no code.
var DefaultCode = netip.AddrFrom4([4]byte{127, 0, 0, 2})

// Zone is what the zone publishes besides its listings. The server and
// Export take the same one.
type Zone struct {
	// Name is the zone's apex, e.g. "bl.example.org." (the trailing dot is
	// optional).
	Name string
	// TTL of the A and TXT records, and of SOA and NS; positive. Negative
	// answers are cached for the SOA minimum instead (RFC 2308).
	TTL time.Duration
	// NS are the zone's name servers, fully qualified, outside the zone
	// (it has no address records to give for them). At least one.
	NS  []string
	SOA SOA
	// Codes gives each category its A record, inside 127.0.0.0/8
	// (RFC 5782 section 2.3). Categories without one answer DefaultCode.
	Codes map[string]netip.Addr
	// TXT is the template of the TXT record: {ip} {category} {reason}
	// {url}. {ip} is the listed address, or the network for a network
	// listing: a wildcard record cannot name each address in it. {url} is
	// PublicURL + "/ip/" + the (first) address. The text is cut to 255
	// bytes, the most one TXT string holds and rbldnsd serves. Required.
	TXT       string
	PublicURL string
}

// SOA holds the zone's SOA fields apart from the serial. The four timers
// must be positive.
type SOA struct {
	MName   string // primary name server [first NS]
	RName   string // the zone's contact as a name [hostmaster.<zone>]
	Refresh time.Duration
	Retry   time.Duration
	Expire  time.Duration
	Minimum time.Duration // also the negative TTL
}

// TSIG is a key that signs transfers and NOTIFY (RFC 8945).
type TSIG struct {
	Name      string // key name, e.g. "xfr.example.org."
	Algorithm string // hmac-sha256 (default), hmac-sha1, hmac-sha224, hmac-sha384, hmac-sha512
	Secret    []byte // the raw key
}

// Options configure a Server. Zone must be complete (see Zone and SOA);
// the zero value of each other field takes the default in brackets.
type Options struct {
	Zone
	// Transfer lists the networks that may transfer the zone (AXFR, IXFR).
	// Empty: nobody.
	Transfer []netip.Prefix
	// Notify are the "host:port" addresses told of every new serial.
	Notify []string
	// TSIG, when set, is required on transfers and signs NOTIFY.
	TSIG *TSIG

	// Serial and Digest are what the zone published last (store.ZoneSerial).
	// The first Update keeps Serial when its content has this Digest.
	Serial uint32
	Digest string
	// OnSerial is called with each new serial and its content's digest
	// before the zone serves it (store.SetZoneSerial). An error is logged;
	// the change is served all the same.
	OnSerial func(serial uint32, digest string) error
	// OnPanic, when set, is called once for every panic recovered while
	// answering a query (for blmilter_panics_total); the Panics counter of
	// Stats counts them too.
	OnPanic func()

	Logger *slog.Logger

	// UDPSize is the largest UDP answer, and the EDNS size advertised
	// [1232]. A client's smaller EDNS size, or 512 without EDNS, wins.
	UDPSize int
	// Workers is the number of goroutines reading each UDP socket
	// [GOMAXPROCS - 1, at least 1]. Each batches its reads and writes, so
	// one keeps up with a core's worth of queries; more readers than
	// cores left over only contend for the socket, and the milter keeps
	// a core of its own.
	Workers int
	// JournalRecords bounds the IXFR journal: the oldest changes are
	// dropped beyond this many records [100000]; a secondary that is
	// further behind gets the whole zone.
	JournalRecords int
	// NotifyRetries and NotifyTimeout: a NOTIFY not acknowledged within
	// the timeout is sent again, with the timeout doubled, this many times
	// [5, 1s] (RFC 1996 section 4.3).
	NotifyRetries int
	NotifyTimeout time.Duration
	// MaxTCPConns and MaxTCPConnsPerIP bound the TCP connections; more are
	// closed at once [256, 16]. TCPIdleTimeout closes an idle one [10s].
	MaxTCPConns      int
	MaxTCPConnsPerIP int
	TCPIdleTimeout   time.Duration

	// Now is the clock, for tests [time.Now].
	Now func() time.Time
}

// normalize fills the defaults and checks the zone; the errors name the
// field.
func (z *Zone) normalize() error {
	var errs []error
	name, err := fqdn(z.Name)
	if err != nil {
		errs = append(errs, fmt.Errorf("zone name: %w", err))
	}
	z.Name = name
	if z.TTL <= 0 {
		errs = append(errs, fmt.Errorf("ttl: must be positive, got %v", z.TTL))
	}
	if len(z.NS) == 0 {
		errs = append(errs, errors.New("ns: at least one name server is needed"))
	}
	for i, ns := range z.NS {
		n, err := fqdn(ns)
		if err != nil {
			errs = append(errs, fmt.Errorf("ns %q: %w", ns, err))
			continue
		}
		if name != "" && dns.IsSubDomain(name, n) {
			errs = append(errs, fmt.Errorf("ns %q: inside the zone, which has no address records for it", ns))
		}
		z.NS[i] = n
	}
	if z.SOA.MName == "" && len(z.NS) > 0 {
		z.SOA.MName = z.NS[0]
	}
	if z.SOA.MName, err = fqdn(z.SOA.MName); err != nil {
		errs = append(errs, fmt.Errorf("soa mname: %w", err))
	}
	if z.SOA.RName == "" && name != "" {
		z.SOA.RName = "hostmaster." + name
	}
	if strings.Contains(z.SOA.RName, "@") {
		// A mail address written as one: hostmaster@example.org.
		local, domain, _ := strings.Cut(z.SOA.RName, "@")
		z.SOA.RName = strings.ReplaceAll(local, ".", `\.`) + "." + domain
	}
	if z.SOA.RName, err = fqdn(z.SOA.RName); err != nil {
		errs = append(errs, fmt.Errorf("soa rname: %w", err))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"refresh", z.SOA.Refresh},
		{"retry", z.SOA.Retry},
		{"expire", z.SOA.Expire},
		{"minimum", z.SOA.Minimum},
	} {
		switch {
		case d.v <= 0:
			errs = append(errs, fmt.Errorf("soa %s: must be positive, got %v", d.name, d.v))
		case d.v > 1<<31*time.Second:
			errs = append(errs, fmt.Errorf("soa %s: %v is too long", d.name, d.v))
		}
	}
	if z.TTL > 1<<31*time.Second {
		errs = append(errs, fmt.Errorf("ttl: %v is too long", z.TTL))
	}
	for cat, code := range z.Codes {
		if err := dnsbl.CheckListingCode(code); err != nil {
			errs = append(errs, fmt.Errorf("codes %s: %w", cat, err))
		}
	}
	z.PublicURL = strings.TrimRight(z.PublicURL, "/")
	if strings.TrimSpace(z.TXT) == "" {
		errs = append(errs, errors.New("txt: a template is needed, such as \"{category}: see {url}\""))
	}
	return errors.Join(errs...)
}

// fqdn checks a domain name and returns it lower case with the trailing dot.
func fqdn(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty")
	}
	s = dns.CanonicalName(s)
	if _, ok := dns.IsDomainName(s); !ok || s == "." {
		return "", fmt.Errorf("%q is not a domain name", s)
	}
	return s, nil
}

func (o *Options) normalize() error {
	errs := []error{o.Zone.normalize()}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.UDPSize <= 0 {
		o.UDPSize = DefaultUDPSize
	}
	o.UDPSize = min(max(o.UDPSize, 512), 65535-28)
	if o.Workers <= 0 {
		o.Workers = max(1, runtime.GOMAXPROCS(0)-1)
	}
	if o.JournalRecords <= 0 {
		o.JournalRecords = DefaultJournalRecords
	}
	if o.NotifyRetries <= 0 {
		o.NotifyRetries = DefaultNotifyRetries
	}
	if o.NotifyTimeout <= 0 {
		o.NotifyTimeout = DefaultNotifyTimeout
	}
	if o.MaxTCPConns <= 0 {
		o.MaxTCPConns = DefaultMaxTCPConns
	}
	if o.MaxTCPConnsPerIP <= 0 {
		o.MaxTCPConnsPerIP = DefaultMaxTCPConnsPerIP
	}
	if o.TCPIdleTimeout <= 0 {
		o.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	for i, p := range o.Transfer {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("transfer: invalid network %v", p))
		}
		o.Transfer[i] = p.Masked()
	}
	errs = append(errs, o.normalizeNotify())
	if o.TSIG != nil {
		if err := o.TSIG.normalize(); err != nil {
			errs = append(errs, fmt.Errorf("tsig: %w", err))
		}
	}
	return errors.Join(errs...)
}

// normalizeNotify checks the notify addresses.
func (o *Options) normalizeNotify() error {
	var errs []error
	for _, a := range o.Notify {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("notify %q: %w", a, err))
		}
	}
	return errors.Join(errs...)
}

func (k *TSIG) normalize() error {
	name, err := fqdn(k.Name)
	if err != nil {
		return fmt.Errorf("name: %w", err)
	}
	k.Name = name
	if k.Algorithm == "" {
		k.Algorithm = dns.HmacSHA256
	}
	k.Algorithm = dns.CanonicalName(k.Algorithm)
	switch k.Algorithm {
	case dns.HmacSHA1, dns.HmacSHA224, dns.HmacSHA256, dns.HmacSHA384, dns.HmacSHA512:
	default:
		return fmt.Errorf("algorithm %q: want hmac-sha256, hmac-sha1, hmac-sha224, hmac-sha384 or hmac-sha512", strings.TrimSuffix(k.Algorithm, "."))
	}
	if len(k.Secret) < 16 {
		return fmt.Errorf("secret: %d bytes, want at least 16", len(k.Secret))
	}
	return nil
}

// Listing is one entry of the list as the zone publishes it.
type Listing struct {
	Prefix   netip.Prefix // IPv4-mapped IPv6 prefixes of /96 and longer count as IPv4
	Category string       // picks the A record (Zone.Codes)
	Reason   string       // {reason} in the TXT template
	Expires  time.Time    // zero: never; from then on it is not served
}

// ParseTSIGSecret reads a TSIG key file: the secret as base64 text (as
// `head -c 32 /dev/urandom | base64` writes it), or a key clause of BIND,
// tsig-keygen or Knot (`secret "…";` or `secret: …`).
func ParseTSIGSecret(file []byte) ([]byte, error) {
	text := strings.TrimSpace(string(file))
	if i := strings.Index(text, "secret"); i >= 0 {
		rest := strings.TrimLeft(text[i+len("secret"):], " \t:")
		rest = strings.TrimPrefix(rest, `"`)
		end := strings.IndexAny(rest, "\";\n")
		if end < 0 {
			end = len(rest)
		}
		text = strings.TrimSpace(rest[:end])
	}
	if text == "" {
		return nil, errors.New("no secret in the key file")
	}
	secret, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("the secret is not base64: %w", err)
	}
	return secret, nil
}
