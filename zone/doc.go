// Package zone publishes the site's own list as an authoritative DNS block
// list zone (RFC 5782): it answers queries over UDP and TCP, hands the zone
// to secondaries by AXFR (RFC 5936) and IXFR (RFC 1995), tells them about
// changes with NOTIFY (RFC 1996), optionally under TSIG (RFC 8945), and
// writes the zone out for rbldnsd or as a master file (Export).
//
// # One zone, two views
//
// The zone is built as the records a plain secondary would hold: an IPv4
// listing becomes octet-aligned names under the zone (a /32 is
// d.c.b.a.<zone>, a /24 the wildcard *.c.b.a.<zone>, a /20 sixteen such
// wildcards), an IPv6 listing nibble-aligned ones. The server answers from
// that very tree, with the rules of RFC 1034 section 4.3.2 and RFC 4592 for
// wildcards, so blmilter and any secondary that transferred the zone give
// the same answer to every name, not only to the addresses.
//
// Wildcards alone would answer wrongly in two ways, and the tree adds names
// to prevent both:
//
//   - A more specific listing under a wildcard creates a name that hides the
//     wildcard below it (RFC 4592 section 2.2.2: the closest encloser is then
//     that name). The tree gives such names their own wildcard, or their own
//     records, wherever the enclosing listing must still apply.
//   - IPv4 and IPv6 names share labels: 1.2.3.0/24 is *.3.2.1.<zone>, and the
//     same wildcard would match every IPv6 name under 123x::/16. Under a
//     wildcard whose labels are all digits the tree adds the sixteen nibble
//     names one level down (with the listing's records where they are IPv4
//     addresses too), which stops the wildcard there; IPv6 wildcards are
//     never placed above the fourth label, where they would match IPv4
//     names. An IPv4 name that is also the start of a listed IPv6 network
//     therefore exists: unlisted, it gets NODATA rather than NXDOMAIN, as
//     RFC 8020 requires of a name with names below it.
//
// A name with A and TXT records is listed; the A record is the category's
// code and the TXT record the operator's template. The RFC 5782 test points
// are built in: 127.0.0.2 and ::ffff:7f00:2 are listed, 127.0.0.1 and
// ::ffff:7f00:1 never are, whatever the list holds. IPv6 names answer from
// IPv6 listings: the names of IPv4-mapped addresses hold the test points
// only (filters ask about a mapped client by its IPv4 address).
//
// # Changes
//
// Update replaces the listings as a whole. The server builds the new tree,
// compares it with the one it serves, and only when they differ bumps the
// serial (RFC 1982 arithmetic; never below the clock, so a restart with a
// lost serial still moves forward), records the difference in a bounded
// IXFR journal, reports the serial for safekeeping and sends NOTIFY. A
// listing's expiry is honoured by the server itself, at the second.
package zone
