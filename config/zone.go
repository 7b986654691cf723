package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/blmilter/blmilter/dnsbl"
)

// Bounds of the [zone] and [fleet] keys.
const (
	maxZoneTTL     = 7 * day
	maxSOARefresh  = 7 * day
	maxSOAExpire   = 365 * day
	maxSOAMinimum  = day
	maxZoneTXT     = 255
	maxFleetNode   = 32
	maxZoneListens = 64
)

// Enabled reports whether the config names a zone (to serve, or only to
// export).
func (z *ZoneConfig) Enabled() bool { return z.Name != "" }

// Served reports whether the daemon serves the zone.
func (z *ZoneConfig) Served() bool { return z.Name != "" && len(z.Listen) > 0 }

// CodeAddrs are the codes as addresses, parsed by validation.
func (z *ZoneConfig) CodeAddrs() map[string]netip.Addr {
	out := make(map[string]netip.Addr, len(z.codes))
	for k, v := range z.codes {
		out[k] = v
	}
	return out
}

// TransferNets are the transfer networks, parsed by validation.
func (z *ZoneConfig) TransferNets() []netip.Prefix { return slices.Clone(z.transfer) }

// NotifyAddrs are the notify targets as IP:PORT, port 53 filled in.
func (z *ZoneConfig) NotifyAddrs() []string { return slices.Clone(z.notify) }

// zoneTXTPlaceholders are what the zone's TXT template may use.
var zoneTXTPlaceholders = []string{"{ip}", "{category}", "{reason}", "{url}"}

// validateZone checks [zone]; with no name every other key must be left as
// it is, so a zone half configured is never silently off. A name without
// listen addresses is a zone to export only.
func (p *parser) validateZone(z *ZoneConfig) {
	z.codes, z.transfer, z.notify = nil, nil, nil
	z.Name = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(z.Name)), ".")
	if z.Name == "" {
		if len(z.Listen) > 0 || len(z.NS) > 0 || len(z.Transfer) > 0 || len(z.Notify) > 0 || z.TSIG.Name != "" || z.TSIG.SecretFile != "" {
			p.addf("zone.name", "is needed: other [zone] keys are set, and the zone is served only when it has a name")
		}
		return
	}
	if err := checkZone(z.Name); err != nil {
		p.addf("zone.name", "%v", err)
	}
	if len(z.Listen) > maxZoneListens {
		p.addf("zone.listen", "at most %d addresses", maxZoneListens)
	}
	seen := map[netip.AddrPort]bool{}
	for i, a := range z.Listen {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			p.addf(fmt.Sprintf("zone.listen[%d]", i), "must be IP:PORT such as \"192.0.2.53:53\" or \"[2001:db8::53]:53\", got %q", a)
			continue
		}
		if seen[ap] {
			p.addf(fmt.Sprintf("zone.listen[%d]", i), "%s is named twice", a)
		}
		seen[ap] = true
	}
	p.duration("zone.ttl", z.TTL, maxZoneTTL)
	if len(z.NS) == 0 {
		p.addf("zone.ns", "needs at least one name server, such as [\"ns1.example.org.\"]")
	}
	for i, ns := range z.NS {
		key := fmt.Sprintf("zone.ns[%d]", i)
		name, ok := domainName(ns)
		switch {
		case !ok:
			p.addf(key, "%q is not a domain name", ns)
		case dns.IsSubDomain(z.Name+".", name):
			p.addf(key, "%q is inside the zone, which has no address records to give for it", ns)
		}
	}
	s := &z.SOA
	if _, ok := domainName(s.MName); s.MName != "" && !ok {
		p.addf("zone.soa.mname", "%q is not a domain name", s.MName)
	}
	if s.RName != "" {
		rname := s.RName
		if local, domain, isMail := strings.Cut(rname, "@"); isMail {
			if local == "" {
				rname = ""
			} else {
				rname = "x." + domain
			}
		}
		if _, ok := domainName(rname); !ok {
			p.addf("zone.soa.rname", "must be a name such as \"hostmaster.example.org.\" or a mail address, got %q", s.RName)
		}
	}
	p.duration("zone.soa.refresh", s.Refresh, maxSOARefresh)
	p.duration("zone.soa.retry", s.Retry, maxSOARefresh)
	p.duration("zone.soa.expire", s.Expire, maxSOAExpire)
	p.duration("zone.soa.minimum", s.Minimum, maxSOAMinimum)
	if s.Expire.Duration < s.Refresh.Duration {
		p.addf("zone.soa.expire", "(%s) must not be below zone.soa.refresh (%s): secondaries would drop the zone between checks", s.Expire, s.Refresh)
	}

	z.codes = map[string]netip.Addr{}
	cats := make([]string, 0, len(z.Codes))
	for c := range z.Codes {
		cats = append(cats, c)
	}
	slices.Sort(cats)
	for _, cat := range cats {
		key := joinKey("zone.codes", cat)
		if !isCategory(cat) {
			p.addf(key, "category %q must be a non-empty word of a-z, 0-9 and '-' (at most %d characters)", cat, maxCategory)
			continue
		}
		a, err := netip.ParseAddr(z.Codes[cat])
		if err != nil {
			p.addf(key, "must be an address such as \"127.0.0.4\", got %q", z.Codes[cat])
			continue
		}
		if err := dnsbl.CheckListingCode(a); err != nil {
			p.addf(key, "%v", err)
			continue
		}
		z.codes[cat] = a
	}

	p.checkTemplate("zone.txt", z.TXT, zoneTXTPlaceholders, maxZoneTXT, "is %d bytes; a TXT string holds at most %d")

	z.transfer = p.nets("zone.transfer", z.Transfer)
	for i, s := range z.Notify {
		key := fmt.Sprintf("zone.notify[%d]", i)
		if a, err := netip.ParseAddr(s); err == nil {
			z.notify = append(z.notify, netip.AddrPortFrom(a.Unmap(), 53).String())
			continue
		}
		ap, err := netip.ParseAddrPort(s)
		if err != nil || ap.Port() == 0 {
			p.addf(key, "must be an IP address or IP:PORT such as \"192.0.2.53:53\", got %q", s)
			continue
		}
		z.notify = append(z.notify, ap.String())
	}

	k := &z.TSIG
	switch {
	case k.Name == "" && k.SecretFile != "":
		p.addf("zone.tsig.name", "is needed with zone.tsig.secret_file: the key's name, as the secondaries know it")
	case k.Name != "":
		if _, ok := domainName(k.Name); !ok {
			p.addf("zone.tsig.name", "%q is not a key name such as \"xfr.example.org.\"", k.Name)
		}
		if k.SecretFile == "" {
			p.addf("zone.tsig.secret_file", "is needed with zone.tsig.name: the file holding the key's secret")
		}
		switch strings.TrimSuffix(strings.ToLower(k.Algorithm), ".") {
		case "hmac-sha256", "hmac-sha1", "hmac-sha224", "hmac-sha384", "hmac-sha512":
		default:
			p.addf("zone.tsig.algorithm", "must be hmac-sha256, hmac-sha1, hmac-sha224, hmac-sha384 or hmac-sha512, got %q", k.Algorithm)
		}
	}
}

// domainName checks a domain name and returns it fully qualified.
func domainName(s string) (string, bool) {
	s = strings.TrimSpace(s)
	if s == "" || s == "." {
		return "", false
	}
	s = dns.CanonicalName(s)
	if _, ok := dns.IsDomainName(s); !ok || strings.ContainsAny(s, " \t\\\"") {
		return "", false
	}
	return s, true
}

// validateFleet checks [fleet]; the key files are read where the daemon
// starts, which reports a bad one with its key and line.
func (p *parser) validateFleet(f *FleetConfig) {
	if len(f.PreviousKeyFiles) > 0 && f.KeyFile == "" {
		p.addf("fleet.previous_key_files", "needs fleet.key_file: previous keys are only accepted beside the current one")
	}
	if len(f.Node) > maxFleetNode {
		p.addf("fleet.node", "is %d characters; at most %d fit in a reference", len(f.Node), maxFleetNode)
	}
	for _, r := range f.Node {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			p.addf("fleet.node", "must be a name of letters, digits, '.', '-' and '_' such as \"mx2\", got %q", f.Node)
			break
		}
	}
}
