package zone

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Export formats.
const (
	// FormatBIND is a master file (RFC 1035 section 5) with the records a
	// transfer carries, for BIND, NSD or Knot as primary.
	FormatBIND = "bind"
	// FormatRbldnsd is an rbldnsd "combined" dataset: $SOA and $NS, then
	// an ip4trie and an ip6trie dataset with each listing's A and TXT. Load
	// it as ZONE:combined:FILE.
	FormatRbldnsd = "rbldnsd"
)

// State is a zone's serial with the digest of the content it published.
type State struct {
	Serial uint32
	Digest string
}

// Export writes the zone with listings in format, for publishing from
// files. prev is what was published last: its serial is kept when the
// content is the same, else the next serial is used (as the server does).
// It returns the state it wrote, for the caller to keep.
//
// The rbldnsd dataset lists every address as the zone does: ip4trie and
// ip6trie pick the longest prefix, as blmilter does (ip4set would return
// every entry of a /24 it expanded a shorter prefix to). Three differences
// remain, none on a name a mail filter asks:
//   - rbldnsd has no names between the addresses, so where the zone says
//     NODATA (a name with names below it) rbldnsd says NXDOMAIN; neither
//     lists it.
//   - rbldnsd answers only full addresses; the zone's wildcards also match
//     other names below them (x.7.2.0.192.<zone> under a /24, say).
//   - rbldnsd answers the IPv6 names of IPv4-mapped addresses (::ffff:a.b.c.d)
//     from its IPv4 data, and 6to4 ones (2002:AABB:CCDD::/48) from both;
//     the zone answers IPv6 names from IPv6 listings only. Filters ask
//     about a mapped client by its IPv4 address (blmilter does); the test
//     points ::ffff:7f00:2 and ::ffff:7f00:1 answer alike in both.
func Export(w io.Writer, format string, z Zone, listings []Listing, prev State) (State, error) {
	z.NS = append([]string(nil), z.NS...)
	if err := z.normalize(); err != nil {
		return State{}, fmt.Errorf("zone export: %w", err)
	}
	tpl := parseTemplate(z.TXT)
	now := time.Now()
	b := z.compile(tpl, listings, now)
	st := State{Serial: prev.Serial, Digest: b.digest}
	if prev.Digest != b.digest || prev.Serial == 0 {
		st.Serial = nextSerial(prev.Serial, now)
	}
	ap := newApex(z.Name)
	sn := z.newSnapshot(&ap, b, st.Serial, nil)
	bw := bufio.NewWriterSize(w, 64*1024)
	var err error
	switch format {
	case FormatBIND:
		err = writeBIND(bw, sn, b.listings)
	case FormatRbldnsd:
		err = writeRbldnsd(bw, sn, z.entries(tpl, listings, now))
	default:
		return State{}, fmt.Errorf("zone export: unknown format %q (want %s or %s)", format, FormatBIND, FormatRbldnsd)
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return State{}, fmt.Errorf("zone export: %w", err)
	}
	return st, nil
}

func writeBIND(w *bufio.Writer, sn *snapshot, listings int) error {
	apexName := sn.apex.name
	fmt.Fprintf(w, "; %s: the site's list as a DNSBL zone, %d listings, serial %d\n", apexName, listings, sn.serial)
	fmt.Fprintf(w, "$ORIGIN %s\n$TTL %d\n", apexName, sn.ttl)
	soa := sn.soa
	fmt.Fprintf(w, "@\t%d\tIN\tSOA\t%s %s %d %d %d %d %d\n", soa.Hdr.Ttl, soa.Ns, soa.Mbox, soa.Serial, soa.Refresh, soa.Retry, soa.Expire, soa.Minttl)
	for _, ns := range sn.ns {
		fmt.Fprintf(w, "@\t%d\tIN\tNS\t%s\n", ns.Hdr.Ttl, ns.Ns)
	}
	t := sn.b.tree
	var line []byte
	write := func(path []sym, wildcard bool, rd *rdata) {
		line = appendName(line[:0], path, wildcard, "")
		if len(line) == 0 {
			line = append(line, '@')
		} else {
			line = line[:len(line)-1] // relative to $ORIGIN: no trailing dot
		}
		owner := len(line)
		line = append(line, '\t')
		line = strconv.AppendUint(line, uint64(sn.ttl), 10)
		line = append(line, "\tIN\tA\t"...)
		line = netip.AddrFrom4(rd.a).AppendTo(line)
		line = append(line, '\n')
		if rd.txt != "" {
			line = append(line, line[:owner]...)
			line = append(line, '\t')
			line = strconv.AppendUint(line, uint64(sn.ttl), 10)
			line = append(line, "\tIN\tTXT\t\""...)
			line = append(line, escapeTXT(rd.txt)...)
			line = append(line, "\"\n"...)
		}
		w.Write(line)
	}
	t.walk(func(path []sym, n *tnode) bool {
		if n.own >= 0 {
			write(path, false, &t.data[n.own])
		}
		if n.wild >= 0 {
			write(path, true, &t.data[n.wild])
		}
		return true
	})
	return nil
}

func writeRbldnsd(w *bufio.Writer, sn *snapshot, es entrySet) error {
	soa := sn.soa
	fmt.Fprintf(w, "# %s: the site's list as a DNSBL zone, %d listings, serial %d\n", sn.apex.name, es.listings, sn.serial)
	fmt.Fprintf(w, "# load with: rbldnsd ... %s:combined:FILE\n", strings.TrimSuffix(sn.apex.name, "."))
	fmt.Fprintf(w, "$SOA %d %s %s %d %d %d %d %d\n", soa.Hdr.Ttl, soa.Ns, soa.Mbox, soa.Serial, soa.Refresh, soa.Retry, soa.Expire, soa.Minttl)
	fmt.Fprintf(w, "$NS %d", sn.ttl)
	for _, ns := range sn.ns {
		fmt.Fprintf(w, " %s", ns.Ns)
	}
	fmt.Fprintf(w, "\n$TTL %d\n", sn.ttl)
	for _, set := range []struct {
		dataset string
		entries []*enode
	}{{"ip4trie:blmilter-ipv4", es.v4}, {"ip6trie:blmilter-ipv6", es.v6}} {
		fmt.Fprintf(w, "$DATASET %s @\n", set.dataset)
		var line []byte
		for _, e := range set.entries {
			line = line[:0]
			if e.hole {
				line = append(line, '!')
			}
			line = appendRbldnsdPrefix(line, e.prefix)
			if !e.hole {
				line = append(line, " :"...)
				line = netip.AddrFrom4(e.rd.a).AppendTo(line)
				line = append(line, ':')
				// rbldnsd puts the queried address where a template has
				// "$"; "$$" is a dollar sign.
				line = append(line, strings.ReplaceAll(e.rd.txt, "$", "$$")...)
			}
			line = append(line, '\n')
			w.Write(line)
		}
	}
	return nil
}

// appendRbldnsdPrefix writes a prefix as rbldnsd reads it: IPv6 in hex
// groups only (it does not read ::ffff:127.0.0.2), no /32 or /128.
func appendRbldnsdPrefix(b []byte, p netip.Prefix) []byte {
	a := p.Addr()
	if a.Is4() {
		b = a.AppendTo(b)
	} else {
		x := a.As16()
		for i := 0; i < 16; i += 2 {
			if i > 0 {
				b = append(b, ':')
			}
			b = strconv.AppendUint(b, uint64(x[i])<<8|uint64(x[i+1]), 16)
		}
	}
	if !p.IsSingleIP() {
		b = append(b, '/')
		b = strconv.AppendInt(b, int64(p.Bits()), 10)
	}
	return b
}
