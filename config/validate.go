package config

import (
	"fmt"
	"math"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/blmilter/blmilter/internal/mailbox"
	"github.com/blmilter/blmilter/internal/sockets"
	"github.com/blmilter/blmilter/policy"
)

// Upper bounds. Every number in the file has one, so that a value that
// passes validation can never make blmilter allocate without end, overflow
// or panic.
const (
	maxConnections   = 100_000
	maxCacheSize     = 100_000_000 // IPs; the cache grows as it fills, it does not allocate up front
	maxDecisionRows  = 100_000_000
	maxRemovalQuota  = 1000
	maxLookupRate    = 1_000_000
	maxLookupBurst   = 1_000_000
	maxFailAfter     = 100
	maxMinChecks     = 1_000_000
	maxScore         = 1_000_000 // threshold and the size of any weight
	maxListName      = 64
	maxCategory      = policy.MaxCategoryLen
	minAdminToken    = 32
	maxReplyTemplate = 300
	day              = 24 * time.Hour
)

func listKey(i int, field string) string { return fmt.Sprintf("list[%d].%s", i, field) }

// validate checks every value, fills the per-list defaults and parses the
// networks and codes, reporting each problem with its key.
func (p *parser) validate(c *Config) {
	m := &c.Milter
	p.validateListen("milter.listen", m.Listen, true)
	p.socketMode("milter.socket_mode", m.SocketMode)
	p.socketGroup("milter.socket_group", m.SocketGroup)
	p.duration("milter.read_timeout", m.ReadTimeout, time.Hour)
	p.duration("milter.write_timeout", m.WriteTimeout, time.Hour)
	p.duration("milter.session_timeout", m.SessionTimeout, day)
	p.intRange("milter.max_connections", m.MaxConnections, 1, maxConnections)

	pd := &c.Policyd
	p.validateListen("policyd.listen", pd.Listen, false)
	p.socketMode("policyd.socket_mode", pd.SocketMode)
	p.socketGroup("policyd.socket_group", pd.SocketGroup)
	p.duration("policyd.read_timeout", pd.ReadTimeout, day)
	p.intRange("policyd.max_connections", pd.MaxConnections, 1, maxConnections)

	w := &c.Web
	if w.Listen != "" {
		if _, port, err := net.SplitHostPort(w.Listen); err != nil || port == "" {
			p.addf("web.listen", "must be HOST:PORT such as \"127.0.0.1:8080\", got %q", w.Listen)
		}
	}
	if c.Metrics.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Metrics.Listen); err != nil || port == "" {
			p.addf("metrics.listen", "must be HOST:PORT such as \"127.0.0.1:9110\", got %q", c.Metrics.Listen)
		}
	}
	w.PublicURL = strings.TrimRight(w.PublicURL, "/")
	if w.PublicURL != "" {
		u, err := url.Parse(w.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			p.addf("web.public_url", "must be an http:// or https:// URL without query, such as \"https://lookup.example.org\", got %q", w.PublicURL)
		} else if hasControl(w.PublicURL) || strings.ContainsAny(w.PublicURL, " {}") {
			p.addf("web.public_url", "must not contain spaces, braces or control characters")
		}
	}
	if w.AdminToken != "" {
		switch {
		case len(w.AdminToken) < minAdminToken:
			p.addf("web.admin_token", "is %d characters; use at least %d (for example the output of \"openssl rand -hex 32\")", len(w.AdminToken), minAdminToken)
		case hasControl(w.AdminToken) || strings.ContainsAny(w.AdminToken, " \t"):
			p.addf("web.admin_token", "must not contain spaces or control characters")
		}
	}
	if w.SMTP.Server != "" {
		if _, port, ok := strings.Cut(w.SMTP.Server, ":"); !ok || port == "" {
			p.addf("web.smtp.server", "must be host:port, such as \"smtp.example.org:587\"")
		}
		if w.SMTP.From == "" {
			p.addf("web.smtp.from", "is needed when web.smtp.server is set")
		}
	}
	if w.SMTP.From != "" {
		if _, err := mail.ParseAddress(w.SMTP.From); err != nil {
			p.addf("web.smtp.from", "is not a mail address: %v", err)
		}
	}
	if w.SMTP.Password != "" && w.SMTP.Username == "" {
		p.addf("web.smtp.password", "is set but web.smtp.username is not")
	}
	p.intRange("web.removal_quota", w.RemovalQuota, 0, maxRemovalQuota)
	p.duration("web.removal_window", w.RemovalWindow, 10*365*day)
	p.floatRange("web.lookup_rate", w.LookupRate, false, maxLookupRate, "a positive number of lookups per second")
	p.intRange("web.lookup_burst", w.LookupBurst, 1, maxLookupBurst)
	for i, cat := range w.SelfServiceCategories {
		p.category(fmt.Sprintf("web.self_service_categories[%d]", i), cat)
	}

	if w.OperatorEmail != "" {
		if _, err := mailbox.Parse(w.OperatorEmail); err != nil {
			p.addf("web.operator_email", "%v", err)
		} else if w.SMTP.Server == "" {
			p.addf("web.operator_email", "needs web.smtp.server: the mail goes through that relay")
		}
	}
	if w.DelistDomain != "" {
		w.DelistDomain = strings.TrimSuffix(strings.ToLower(w.DelistDomain), ".")
		if err := checkZone(w.DelistDomain); err != nil {
			p.addf("web.delist_domain", "must be a domain this site receives mail for: %v", err)
		}
	}

	if c.Store.Path == "" {
		p.addf("store.path", "must not be empty")
	}
	p.duration("store.decision_max_age", c.Store.DecisionMaxAge, 10*365*day)
	p.intRange("store.decision_max_rows", c.Store.DecisionMaxRows, 1, maxDecisionRows)
	p.duration("store.evidence_max_age", c.Store.EvidenceMaxAge, 10*365*day)
	p.duration("store.history_max_age", c.Store.HistoryMaxAge, 20*365*day)
	if h := c.Store.HistoryMaxAge.Duration; h > 0 && (h < c.Store.EvidenceMaxAge.Duration || h < w.RemovalWindow.Duration) {
		p.addf("store.history_max_age", "(%s) must be at least store.evidence_max_age (%s) and web.removal_window (%s): the removals it forgets count toward the quota",
			c.Store.HistoryMaxAge, c.Store.EvidenceMaxAge, w.RemovalWindow)
	}

	p.validateTraps(c)

	p.validateZone(&c.Zone)
	p.validateFleet(&c.Fleet)

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
	p.duration("dns.timeout", c.DNS.Timeout, time.Minute)

	ca := &c.Cache
	p.intRange("cache.size", ca.Size, 1, maxCacheSize)
	p.durationFrom("cache.min_ttl", ca.MinTTL, 7*day)
	p.duration("cache.max_ttl", ca.MaxTTL, 7*day)
	if ca.MinTTL.Duration > ca.MaxTTL.Duration {
		p.addf("cache.min_ttl", "(%s) must not be above cache.max_ttl (%s)", ca.MinTTL, ca.MaxTTL)
	}
	p.durationFrom("cache.negative_ttl", ca.NegativeTTL, 7*day)
	p.durationFrom("cache.error_ttl", ca.ErrorTTL, time.Hour)

	h := &c.Health
	p.duration("health.interval", h.Interval, 7*day)
	p.duration("health.timeout", h.Timeout, time.Minute)
	p.duration("health.ratio_window", h.RatioWindow, 7*day)
	p.intRange("health.fail_after", h.FailAfter, 1, maxFailAfter)
	if !(h.MaxHitRatio > 0 && h.MaxHitRatio <= 1) {
		p.addf("health.max_hit_ratio", "must be above 0 and at most 1")
	}
	p.intRange("health.min_checks", h.MinChecks, 1, maxMinChecks)

	pol := &c.Policy
	p.floatRange("policy.threshold", pol.Threshold, false, maxScore, "a positive number")
	switch policy.Action(pol.Action) {
	case policy.ActionReject, policy.ActionTempfail, policy.ActionTag, policy.ActionLog:
	default:
		p.addf("policy.action", "must be reject, tempfail, tag or log, got %q", pol.Action)
	}
	if pol.RejectAt != policy.RejectAtRcpt && pol.RejectAt != policy.RejectAtConnect {
		p.addf("policy.reject_at", "must be rcpt or connect, got %q", pol.RejectAt)
	}
	p.parseAllow(pol)
	p.duration("policy.deadline", pol.Deadline, time.Minute)
	p.template("policy.reject_text", pol.RejectText)
	p.template("policy.tempfail_text", pol.TempfailText)
	p.template("policy.error_text", pol.ErrorText)
	// Beyond Postfix's maximal_queue_lifetime (5 days) no retry is left
	// to deliver.
	p.durationFrom("policy.defer_first", pol.DeferFirst, 5*day)

	if len(c.Lists) == 0 {
		p.addf("", "no [[list]]: name at least one DNS list, file or store list")
	}
	names := map[string]int{}
	for i := range c.Lists {
		p.validateList(c, i, names)
	}
}

// Bounds of [traps].
const (
	maxTraps    = 10_000
	maxTrapHits = 1000
)

func (p *parser) validateTraps(c *Config) {
	t := &c.Traps
	if len(t.Addresses) > maxTraps {
		p.addf("traps.addresses", "has %d addresses; at most %d", len(t.Addresses), maxTraps)
	}
	for i, a := range t.Addresses {
		key := fmt.Sprintf("traps.addresses[%d]", i)
		a = strings.ToLower(strings.TrimSpace(a))
		t.Addresses[i] = a
		local, domain, ok := strings.Cut(a, "@")
		if !ok || strings.Contains(domain, "@") {
			p.addf(key, "must be an address such as \"spamtrap@example.org\" or a whole domain such as \"@trap.example.org\", got %q", a)
			continue
		}
		if err := checkZone(domain); err != nil {
			p.addf(key, "domain %v", err)
		}
		if local != "" {
			if _, err := mailbox.Parse(a); err != nil {
				p.addf(key, "%v", err)
			}
		}
		if dd := c.Web.DelistDomain; dd != "" && domain == dd && (local == "" || strings.HasPrefix(local, "delist+") || local == "delist") {
			p.addf(key, "collides with the delist addresses of web.delist_domain %q", dd)
		}
	}
	p.intRange("traps.hits", t.Hits, 1, maxTrapHits)
	p.duration("traps.window", t.Window, 365*day)
	p.duration("traps.expires", t.Expires, 10*365*day)
	p.duration("traps.max_expires", t.MaxExpires, 10*365*day)
	if t.MaxExpires.Duration < t.Expires.Duration {
		p.addf("traps.max_expires", "(%s) must be at least traps.expires (%s)", t.MaxExpires, t.Expires)
	}
	p.category("traps.category", t.Category)
	p.intRange("traps.ipv6_prefix", t.IPv6Prefix, 32, 128)
}

// isSet reports whether the file gave key; a config built in code gave
// every key.
func (p *parser) isSet(key string) bool { return p.set == nil || p.set[key] }

func (p *parser) validateList(c *Config, i int, names map[string]int) {
	l := &c.Lists[i]
	k := func(field string) string { return listKey(i, field) }

	switch {
	case l.Name == "":
		p.addf(k("name"), "is required: the display name used in replies and logs")
	case hasControl(l.Name) || len(l.Name) > maxListName || strings.ContainsAny(l.Name, "{}"):
		p.addf(k("name"), "must be at most %d printable characters without braces", maxListName)
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

	p.durationFrom(k("timeout"), l.Timeout, time.Minute)
	var set func(string) bool
	if p.set != nil {
		set = func(key string) bool { return p.set[key] }
	}
	listDefaults(c, i, set)
	if p.isSet(k("weight")) {
		p.weight(k("weight"), l.Weight)
	}
	p.category(k("category"), l.Category)
	if !*l.IPv4 && !*l.IPv6 {
		p.addf(k("ipv6"), "ipv4 and ipv6 are both false: the list would never be asked")
	}
	switch l.OnError {
	case policy.OnErrorIgnore, policy.OnErrorTempfail:
	default:
		p.addf(k("on_error"), "must be ignore or tempfail, got %q", l.OnError)
	}

	if kind != policy.KindDNS {
		if p.set != nil && p.set[k("codes")] || p.set == nil && len(l.Codes) > 0 {
			p.addf(k("codes"), "only DNS lists (zone) have answer codes")
		}
		if p.set[k("timeout")] {
			p.addf(k("timeout"), "only DNS lists (zone) have a timeout")
		}
		if p.set[k("health")] || p.set == nil && *l.Health {
			p.addf(k("health"), "only DNS lists (zone) are probed")
		}
		if p.isSet(k("on_error")) && l.OnError != policy.OnErrorIgnore {
			p.addf(k("on_error"), "only DNS lists (zone) can fail to answer")
		}
	}

	p.parseCodes(l, k("codes"))
}

func (p *parser) parseAllow(pol *PolicyConfig) { pol.allow = p.nets("policy.allow", pol.Allow) }

// nets parses each of list as a network (parseNet); a bad one is a
// problem of key[i] and left out.
func (p *parser) nets(key string, list []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range list {
		pfx, err := parseNet(s)
		if err != nil {
			p.addf(fmt.Sprintf("%s[%d]", key, i), "%v", err)
			continue
		}
		out = append(out, pfx)
	}
	return out
}

// parseCodes turns a list's codes table into rules with policy's parser.
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
		r, err := policy.ParseCode(code)
		if err != nil {
			p.addf(ck, "%v", err)
			continue
		}
		r.Weight = l.Weight
		r.Category = l.Category
		switch v := v.(type) {
		case string:
			r.Category = v
		case map[string]any:
			for field, fv := range v {
				switch field {
				case "category":
					s, ok := fv.(string)
					if !ok {
						p.addf(joinKey(ck, field), "must be a string")
						continue
					}
					r.Category = s
				case "weight":
					switch n := fv.(type) {
					case int64:
						r.Weight = float64(n)
					case float64:
						r.Weight = n
					default:
						p.addf(joinKey(ck, field), "must be a number")
						continue
					}
					p.weight(joinKey(ck, field), r.Weight)
				default:
					p.addf(joinKey(ck, field), "unknown key (a code takes category and weight)")
				}
			}
		default:
			p.addf(ck, "must be a category string or { category = \"...\", weight = N }")
			continue
		}
		if !isCategory(r.Category) {
			p.addf(ck, "category %q must be a non-empty word of a-z, 0-9 and '-' (at most %d characters)", r.Category, maxCategory)
		}
		l.rules = append(l.rules, r)
	}
}

func (p *parser) duration(key string, d Duration, hi time.Duration) {
	switch {
	case d.Duration <= 0:
		p.addf(key, "must be a positive duration such as \"1.5s\"")
	case d.Duration > hi:
		p.addf(key, "must be at most %s, got %s", D(hi), d)
	}
}

// durationFrom is duration for a key where 0 means something.
func (p *parser) durationFrom(key string, d Duration, hi time.Duration) {
	switch {
	case d.Duration < 0:
		p.addf(key, "must not be negative")
	case d.Duration > hi:
		p.addf(key, "must be at most %s, got %s", D(hi), d)
	}
}

func (p *parser) intRange(key string, n, lo, hi int) {
	switch {
	case n < lo && lo == 0:
		p.addf(key, "must not be negative")
	case n < lo:
		p.addf(key, "must be at least %d", lo)
	case n > hi:
		p.addf(key, "must be at most %d, got %d", hi, n)
	}
}

// floatRange checks 0 < f <= hi (0 <= f with zero).
func (p *parser) floatRange(key string, f float64, zero bool, hi float64, what string) {
	switch {
	case math.IsNaN(f) || f < 0 || f == 0 && !zero:
		p.addf(key, "must be %s", what)
	case f > hi:
		p.addf(key, "must be at most %g, got %g", hi, f)
	}
}

func (p *parser) weight(key string, w float64) {
	if math.IsNaN(w) || math.IsInf(w, 0) {
		p.addf(key, "must be a finite number")
	} else if math.Abs(w) > maxScore {
		p.addf(key, "must be between %d and %d, got %g", -maxScore, maxScore, w)
	}
}

func (p *parser) category(key, cat string) {
	if !isCategory(cat) {
		p.addf(key, "category %q must be a non-empty word of a-z, 0-9 and '-' (at most %d characters)", cat, maxCategory)
	}
}

func (p *parser) socketMode(key, s string) {
	if m, err := strconv.ParseUint(s, 8, 32); err != nil || m > 0o777 {
		p.addf(key, "must be an octal file mode such as \"0660\", got %q", s)
	}
}

// socketGroup checks the syntax of a group name or number; whether the
// group exists is checked where the socket is made.
func (p *parser) socketGroup(key, s string) {
	if s == "" {
		return
	}
	if _, err := strconv.ParseUint(s, 10, 32); err == nil {
		return
	}
	ok := len(s) <= 32
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r == '_':
		case i > 0 && (r >= '0' && r <= '9' || r == '-' || r >= 'A' && r <= 'Z' || r == '.'):
		case i > 0 && i == len(s)-1 && r == '$':
		default:
			ok = false
		}
	}
	if !ok {
		p.addf(key, "must be a group name such as \"postfix\" or a group number, got %q", s)
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

// template checks a reply template.
func (p *parser) template(key, s string) {
	p.checkTemplate(key, s, placeholders, maxReplyTemplate, "is %d characters; keep it under %d so the SMTP line stays short")
}

// checkTemplate checks a text with {placeholders}: not empty, one line of
// printable characters, at most maxLen bytes (tooLong says why, given
// the length and maxLen), and no placeholder but known.
func (p *parser) checkTemplate(key, s string, known []string, maxLen int, tooLong string) {
	if strings.TrimSpace(s) == "" {
		p.addf(key, "must not be empty")
		return
	}
	if hasControl(s) {
		p.addf(key, "must not contain line breaks or control characters")
	}
	if len(s) > maxLen {
		p.addf(key, tooLong, len(s), maxLen)
	}
	rest := s
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			return
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			p.addf(key, "has an unclosed '{'")
			return
		}
		if ph := rest[i : i+j+1]; !slices.Contains(known, ph) {
			p.addf(key, "unknown placeholder %s; use %s", ph, strings.Join(known, " "))
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

// isCategory: a category is one word of a-z, 0-9 and '-' (policy.IsCategory).
func isCategory(s string) bool { return policy.IsCategory(s) }

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
