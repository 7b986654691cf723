package policy

import (
	"fmt"
	"github.com/blmilter/blmilter/internal/sockets"
	"math"
	"math/bits"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// maxMilterConnections bounds milter.max_connections: each connection is a
// file descriptor and a goroutine.
const maxMilterConnections = 100_000

// validate checks every value, fills the per-list defaults and parses the
// networks and codes, reporting each problem with its key.
func (p *parser) validate(c *Config) {
	p.validateListen("milter.listen", c.Milter.Listen, true)
	p.socketMode("milter.socket_mode", c.Milter.SocketMode)
	p.positive("milter.read_timeout", c.Milter.ReadTimeout)
	p.positive("milter.write_timeout", c.Milter.WriteTimeout)
	p.positive("milter.session_timeout", c.Milter.SessionTimeout)
	if c.Milter.MaxConnections < 1 || c.Milter.MaxConnections > maxMilterConnections {
		p.addf("milter.max_connections", "must be between 1 and %d", maxMilterConnections)
	}

	p.validateListen("policyd.listen", c.Policyd.Listen, false)
	p.socketMode("policyd.socket_mode", c.Policyd.SocketMode)
	p.positive("policyd.read_timeout", c.Policyd.ReadTimeout)
	if c.Policyd.MaxConnections <= 0 {
		p.addf("policyd.max_connections", "must be at least 1")
	}

	if c.Web.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Web.Listen); err != nil || port == "" {
			p.addf("web.listen", "must be HOST:PORT such as \"127.0.0.1:8080\", got %q", c.Web.Listen)
		}
	}
	if c.Metrics.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Metrics.Listen); err != nil || port == "" {
			p.addf("metrics.listen", "must be HOST:PORT such as \"127.0.0.1:9110\", got %q", c.Metrics.Listen)
		}
	}
	c.Web.PublicURL = strings.TrimRight(c.Web.PublicURL, "/")
	if c.Web.PublicURL != "" {
		u, err := url.Parse(c.Web.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			p.addf("web.public_url", "must be an http:// or https:// URL without query, such as \"https://lookup.example.org\", got %q", c.Web.PublicURL)
		} else if hasControl(c.Web.PublicURL) || strings.ContainsAny(c.Web.PublicURL, " {}") {
			p.addf("web.public_url", "must not contain spaces, braces or control characters")
		}
	}
	if c.Web.SMTP.Server != "" {
		if _, port, ok := strings.Cut(c.Web.SMTP.Server, ":"); !ok || port == "" {
			p.addf("web.smtp.server", "must be host:port, such as \"smtp.example.org:587\"")
		}
		if c.Web.SMTP.From == "" {
			p.addf("web.smtp.from", "is needed when web.smtp.server is set")
		}
	}
	if c.Web.SMTP.From != "" {
		if _, err := mail.ParseAddress(c.Web.SMTP.From); err != nil {
			p.addf("web.smtp.from", "is not a mail address: %v", err)
		}
	}
	if c.Web.SMTP.Password != "" && c.Web.SMTP.Username == "" {
		p.addf("web.smtp.password", "is set but web.smtp.username is not")
	}
	if c.Web.RemovalQuota < 0 {
		p.addf("web.removal_quota", "must not be negative")
	}
	p.positive("web.removal_window", c.Web.RemovalWindow)
	if !(c.Web.LookupRate > 0) || math.IsInf(c.Web.LookupRate, 0) {
		p.addf("web.lookup_rate", "must be a positive number of lookups per second")
	}
	if c.Web.LookupBurst < 1 {
		p.addf("web.lookup_burst", "must be at least 1")
	}
	for i, cat := range c.Web.SelfServiceCategories {
		if !isToken(cat) {
			p.addf(fmt.Sprintf("web.self_service_categories[%d]", i), "category %q must be a non-empty word of letters, digits, '-', '_' or '.'", cat)
		}
	}

	if c.Store.Path == "" {
		p.addf("store.path", "must not be empty")
	}
	p.positive("store.decision_max_age", c.Store.DecisionMaxAge)
	if c.Store.DecisionMaxRows < 1 {
		p.addf("store.decision_max_rows", "must be at least 1")
	}

	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		p.addf("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		p.addf("log.format", "must be text or json, got %q", c.Log.Format)
	}

	for i, s := range c.DNS.Servers {
		if _, err := netip.ParseAddr(s); err == nil {
			continue
		}
		if _, err := netip.ParseAddrPort(s); err == nil {
			continue
		}
		p.addf(fmt.Sprintf("dns.servers[%d]", i), "must be an IP address or IP:port (\"[IPv6]:port\"), got %q", s)
	}
	p.positive("dns.timeout", c.DNS.Timeout)

	if c.Cache.Size < 1 {
		p.addf("cache.size", "must be at least 1")
	}
	p.nonNegative("cache.min_ttl", c.Cache.MinTTL)
	p.positive("cache.max_ttl", c.Cache.MaxTTL)
	if c.Cache.MinTTL.Duration > c.Cache.MaxTTL.Duration {
		p.addf("cache.min_ttl", "(%s) must not be above cache.max_ttl (%s)", c.Cache.MinTTL.Duration, c.Cache.MaxTTL.Duration)
	}
	p.nonNegative("cache.negative_ttl", c.Cache.NegativeTTL)
	p.nonNegative("cache.error_ttl", c.Cache.ErrorTTL)

	p.positive("health.interval", c.Health.Interval)
	p.positive("health.timeout", c.Health.Timeout)
	p.positive("health.ratio_window", c.Health.RatioWindow)
	if c.Health.FailAfter < 1 {
		p.addf("health.fail_after", "must be at least 1")
	}
	if !(c.Health.MaxHitRatio > 0 && c.Health.MaxHitRatio <= 1) {
		p.addf("health.max_hit_ratio", "must be above 0 and at most 1")
	}
	if c.Health.MinChecks < 1 {
		p.addf("health.min_checks", "must be at least 1")
	}

	pol := &c.Policy
	if !(pol.Threshold > 0) || math.IsInf(pol.Threshold, 0) {
		p.addf("policy.threshold", "must be a positive number")
	}
	switch Action(pol.Action) {
	case ActionReject, ActionTempfail, ActionTag, ActionLog:
	default:
		p.addf("policy.action", "must be reject, tempfail, tag or log, got %q", pol.Action)
	}
	if pol.RejectAt != "rcpt" && pol.RejectAt != "connect" {
		p.addf("policy.reject_at", "must be rcpt or connect, got %q", pol.RejectAt)
	}
	p.parseAllow(pol)
	p.positive("policy.deadline", pol.Deadline)
	p.template("policy.reject_text", pol.RejectText)
	p.template("policy.tempfail_text", pol.TempfailText)
	p.template("policy.error_text", pol.ErrorText)

	if len(c.Lists) == 0 {
		p.addf("", "no [[list]]: name at least one DNS list, file or store list")
	}
	names := map[string]int{}
	for i := range c.Lists {
		p.validateList(c, i, names)
	}
}

func (p *parser) validateList(c *Config, i int, names map[string]int) {
	l := &c.Lists[i]
	k := func(field string) string { return fmt.Sprintf("list[%d].%s", i, field) }

	switch {
	case l.Name == "":
		p.addf(k("name"), "is required: the display name used in replies and logs")
	case hasControl(l.Name) || len(l.Name) > 64 || strings.ContainsAny(l.Name, "{}"):
		p.addf(k("name"), "must be at most 64 printable characters without braces")
	default:
		if j, dup := names[l.Name]; dup {
			p.addf(k("name"), "%q is already the name of list[%d]", l.Name, j)
		} else {
			names[l.Name] = i
		}
	}

	kinds := 0
	if l.Zone != "" {
		kinds++
	}
	if l.File != "" {
		kinds++
	}
	if l.Store {
		kinds++
	}
	if kinds != 1 {
		p.addf(fmt.Sprintf("list[%d]", i), "needs exactly one of zone (a DNS list), file (a local list) or store = true")
	}
	kind := l.Kind()

	if l.Zone != "" {
		l.Zone = strings.TrimSuffix(strings.ToLower(l.Zone), ".")
		if err := checkZone(l.Zone); err != nil {
			p.addf(k("zone"), "%v", err)
		}
	}

	if !p.set[k("weight")] {
		l.Weight = c.Policy.Threshold
	} else if math.IsNaN(l.Weight) || math.IsInf(l.Weight, 0) {
		p.addf(k("weight"), "must be a finite number")
	}

	if l.Category == "" && !p.set[k("category")] {
		if kind == KindDNS {
			l.Category = "listed"
		} else {
			l.Category = "local"
		}
	}
	if !isToken(l.Category) {
		p.addf(k("category"), "%q must be a non-empty word of letters, digits, '-', '_' or '.'", l.Category)
	}

	if l.IPv4 == nil {
		l.IPv4 = ptr(true)
	}
	if l.IPv6 == nil {
		l.IPv6 = ptr(true)
	}
	if !*l.IPv4 && !*l.IPv6 {
		p.addf(k("ipv6"), "ipv4 and ipv6 are both false: the list would never be asked")
	}

	p.nonNegative(k("timeout"), l.Timeout)
	if l.Timeout.Duration == 0 {
		l.Timeout = c.DNS.Timeout
	}
	switch l.OnError {
	case "":
		l.OnError = "ignore"
	case "ignore", "tempfail":
	default:
		p.addf(k("on_error"), "must be ignore or tempfail, got %q", l.OnError)
	}

	if kind != KindDNS {
		if p.set[k("codes")] {
			p.addf(k("codes"), "only DNS lists (zone) have answer codes")
		}
		if p.set[k("timeout")] {
			p.addf(k("timeout"), "only DNS lists (zone) have a timeout")
		}
		if p.set[k("health")] {
			p.addf(k("health"), "only DNS lists (zone) are probed")
		}
		if p.set[k("on_error")] && l.OnError != "ignore" {
			p.addf(k("on_error"), "only DNS lists (zone) can fail to answer")
		}
		if l.Health == nil {
			l.Health = ptr(false)
		}
	} else if l.Health == nil {
		l.Health = ptr(true)
	}

	p.parseCodes(l, k("codes"))
}

func (p *parser) parseAllow(pol *PolicyConfig) {
	pol.allow = nil
	for i, s := range pol.Allow {
		pfx, err := parseNet(s)
		if err != nil {
			p.addf(fmt.Sprintf("policy.allow[%d]", i), "%v", err)
			continue
		}
		pol.allow = append(pol.allow, pfx)
	}
}

// parseCodes turns a list's codes table into rules, most specific first.
func (p *parser) parseCodes(l *ListConfig, key string) {
	l.rules = nil
	codeKeys := make([]string, 0, len(l.Codes))
	for code := range l.Codes {
		codeKeys = append(codeKeys, code)
	}
	slices.Sort(codeKeys)
	for _, code := range codeKeys {
		v := l.Codes[code]
		ck := joinKey(key, code)
		r, err := parseCodeKey(code)
		if err != nil {
			p.addf(ck, "%v", err)
			continue
		}
		r.weight = l.Weight
		r.category = l.Category
		switch v := v.(type) {
		case string:
			r.category = v
		case map[string]any:
			for field, fv := range v {
				switch field {
				case "category":
					s, ok := fv.(string)
					if !ok {
						p.addf(joinKey(ck, field), "must be a string")
						continue
					}
					r.category = s
				case "weight":
					switch n := fv.(type) {
					case int64:
						r.weight = float64(n)
					case float64:
						r.weight = n
					default:
						p.addf(joinKey(ck, field), "must be a number")
						continue
					}
					if math.IsNaN(r.weight) || math.IsInf(r.weight, 0) {
						p.addf(joinKey(ck, field), "must be a finite number")
					}
				default:
					p.addf(joinKey(ck, field), "unknown key (a code takes category and weight)")
				}
			}
		default:
			p.addf(ck, "must be a category string or { category = \"...\", weight = N }")
			continue
		}
		if !isToken(r.category) {
			p.addf(ck, "category %q must be a non-empty word of letters, digits, '-', '_' or '.'", r.category)
		}
		l.rules = append(l.rules, r)
	}
	sortRules(l.rules)
}

// prepare parses the networks and codes of a config that did not come
// from Parse (built or changed in code), and rejects the values that
// would make the engine misbehave rather than fail.
func (c *Config) prepare() error {
	p := &parser{lines: map[string]int{}, set: map[string]bool{}}
	p.parseAllow(&c.Policy)
	if !(c.Policy.Threshold > 0) {
		p.addf("policy.threshold", "must be a positive number")
	}
	if c.Policy.Deadline.Duration <= 0 {
		p.addf("policy.deadline", "must be a positive duration")
	}
	switch Action(c.Policy.Action) {
	case ActionReject, ActionTempfail, ActionTag, ActionLog:
	default:
		p.addf("policy.action", "must be reject, tempfail, tag or log, got %q", c.Policy.Action)
	}
	for i := range c.Lists {
		p.parseCodes(&c.Lists[i], fmt.Sprintf("list[%d].codes", i))
	}
	if len(p.problems) > 0 {
		return &ConfigError{File: c.File, Problems: p.problems}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

func (p *parser) positive(key string, d Duration) {
	if d.Duration <= 0 {
		p.addf(key, "must be a positive duration such as \"1.5s\"")
	}
}

func (p *parser) nonNegative(key string, d Duration) {
	if d.Duration < 0 {
		p.addf(key, "must not be negative")
	}
}

func (p *parser) socketMode(key, s string) {
	if s == "" {
		return
	}
	if m, err := strconv.ParseUint(s, 8, 32); err != nil || m > 0o777 {
		p.addf(key, "must be an octal file mode such as \"0660\", got %q", s)
	}
}

func (p *parser) validateListen(key, s string, milter bool) {
	if s == "" {
		return
	}
	// The same parsers the servers use, so a config that passes is one
	// they can listen on.
	parse := sockets.ParsePolicySpec
	if milter {
		parse = sockets.ParseMilterSpec
	}
	if _, _, err := parse(s); err != nil {
		p.addf(key, "%v", err)
	}
}

// placeholders the reply templates may use.
var placeholders = []string{"{ip}", "{list}", "{category}", "{url}", "{ref}"}

func (p *parser) template(key, s string) {
	if strings.TrimSpace(s) == "" {
		p.addf(key, "must not be empty")
		return
	}
	if hasControl(s) {
		p.addf(key, "must not contain line breaks or control characters")
	}
	if len(s) > 300 {
		p.addf(key, "is %d characters; keep it under 300 so the SMTP line stays short", len(s))
	}
	rest := s
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			p.addf(key, "has an unclosed '{'")
			break
		}
		ph := rest[i : i+j+1]
		if !slices.Contains(placeholders, ph) {
			p.addf(key, "unknown placeholder %s; use %s", ph, strings.Join(placeholders, " "))
		}
		rest = rest[i+j+1:]
	}
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// isToken: a category is one word, so it reads well in replies, logs and URLs.
func isToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

func parseNet(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a network such as \"10.0.0.0/8\": %w", s, err)
		}
		if pfx.Addr().Is4In6() {
			pfx = netip.PrefixFrom(pfx.Addr().Unmap(), max(pfx.Bits()-96, 0))
		}
		return pfx.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or network: %w", s, err)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func checkZone(z string) error {
	if z == "" || len(z) > 200 {
		return fmt.Errorf("must be a DNS zone such as \"zen.spamhaus.org\"")
	}
	for _, label := range strings.Split(z, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q is not a DNS zone: empty or too long label", z)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("%q is not a DNS zone: character %q", z, r)
			}
		}
	}
	if !strings.Contains(z, ".") {
		return fmt.Errorf("%q is not a DNS zone: it needs at least two labels", z)
	}
	return nil
}

// codeRule maps DNS list answers to a category and weight.
type codeRule struct {
	key      string
	lo, hi   netip.Addr // exact, range and CIDR rules
	mask     byte       // bitmask rules: last octet AND mask != 0
	span     uint64     // addresses covered, for ordering; bitmask rules sort last
	category string
	weight   float64
}

var (
	loopback8  = netip.MustParsePrefix("127.0.0.0/8")
	errorCodes = netip.MustParsePrefix("127.255.255.0/24")
)

// parseCodeKey parses "127.0.0.2", "127.0.0.4-127.0.0.7", "127.0.0.0/24" or "&4".
func parseCodeKey(s string) (codeRule, error) {
	r := codeRule{key: s}
	inRange := func(a netip.Addr) error {
		if !a.Is4() || !loopback8.Contains(a) {
			return fmt.Errorf("%s is outside 127.0.0.0/8, where list answers are", a)
		}
		if errorCodes.Contains(a) {
			return fmt.Errorf("%s is in 127.255.255.0/24, which lists use for errors (never a listing)", a)
		}
		return nil
	}
	switch {
	case strings.HasPrefix(s, "&"):
		n, err := strconv.ParseUint(strings.TrimSpace(s[1:]), 0, 8)
		if err != nil || n == 0 {
			return r, fmt.Errorf("bitmask %q must be &N with N from 1 to 255", s)
		}
		r.mask = byte(n)
		r.span = math.MaxUint64 - 256 + uint64(bits.OnesCount8(r.mask))
		return r, nil
	case strings.Contains(s, "/"):
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return r, fmt.Errorf("%q is not a network: %w", s, err)
		}
		if !pfx.Addr().Is4() || pfx.Bits() < 8 || !loopback8.Contains(pfx.Addr()) {
			return r, fmt.Errorf("network %s must lie inside 127.0.0.0/8", s)
		}
		pfx = pfx.Masked()
		r.lo = pfx.Addr()
		r.span = 1 << (32 - pfx.Bits())
		r.hi = addOffset(r.lo, uint32(r.span-1))
		return r, nil
	case strings.Contains(s, "-"):
		a, b, _ := strings.Cut(s, "-")
		lo, err1 := netip.ParseAddr(strings.TrimSpace(a))
		hi, err2 := netip.ParseAddr(strings.TrimSpace(b))
		if err1 != nil || err2 != nil {
			return r, fmt.Errorf("range %q must be two addresses such as \"127.0.0.4-127.0.0.7\"", s)
		}
		if err := inRange(lo); err != nil {
			return r, err
		}
		if err := inRange(hi); err != nil {
			return r, err
		}
		if hi.Less(lo) {
			return r, fmt.Errorf("range %q ends before it starts", s)
		}
		r.lo, r.hi = lo, hi
		r.span = uint64(u32(hi)-u32(lo)) + 1
		return r, nil
	default:
		a, err := netip.ParseAddr(s)
		if err != nil {
			return r, fmt.Errorf("%q is not an answer code: use an address, a range a-b, a network a/n or a bitmask &N", s)
		}
		if err := inRange(a); err != nil {
			return r, err
		}
		r.lo, r.hi, r.span = a, a, 1
		return r, nil
	}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addOffset(a netip.Addr, n uint32) netip.Addr {
	v := u32(a) + n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (r *codeRule) matches(code netip.Addr) bool {
	code = code.Unmap()
	if !code.Is4() {
		return false
	}
	if r.mask != 0 {
		return code.As4()[3]&r.mask != 0
	}
	return !code.Less(r.lo) && !r.hi.Less(code)
}

// sortRules puts the most specific rules first: exact codes, then ranges and
// networks by size, then bitmasks by the number of bits.
func sortRules(rules []codeRule) {
	slices.SortFunc(rules, func(a, b codeRule) int {
		if a.span != b.span {
			if a.span < b.span {
				return -1
			}
			return 1
		}
		return strings.Compare(a.key, b.key)
	})
}

// codeMatch is the outcome of mapping a list's answer codes.
type codeMatch struct {
	code     netip.Addr
	category string
	weight   float64
}

// match maps a list's answer codes to one category and weight. Each code
// takes the most specific rule that matches it (exact, then the smallest
// range or network, then bitmasks); of several codes, the one with the
// largest absolute weight names the hit. A code no rule matches is still a
// listing, with the list's own category and weight: the list said
// "listed", and a new code a list starts to use should not silently let
// clients in. An admin who wants a code ignored maps it to weight 0.
func (l *ListConfig) match(codes []netip.Addr) codeMatch {
	var best codeMatch
	for i, c := range codes {
		m := codeMatch{code: c, category: l.Category, weight: l.Weight}
		for ri := range l.rules {
			if r := &l.rules[ri]; r.matches(c) {
				m.category, m.weight = r.category, r.weight
				break
			}
		}
		if i == 0 || math.Abs(m.weight) > math.Abs(best.weight) {
			best = m
		}
	}
	if len(codes) == 0 {
		best = codeMatch{category: l.Category, weight: l.Weight}
	}
	return best
}
