// Package dnsbl asks one DNS list about one IP address.
//
// A DNS block list (RFC 5782) publishes an address as a name under its zone:
// 127.0.0.2 in zen.example is asked as "2.0.0.127.zen.example." (reversed
// octets; IPv6 as 32 reversed nibbles). NXDOMAIN means not listed. An A
// record inside 127.0.0.0/8 means listed, and the address itself (the
// "return code") says why; a TXT record on the same name carries a human
// readable reason. Lookup turns one such answer into a Result and never
// mistakes a failure for a listing: an answer in 127.255.255.0/24 (the codes
// lists such as Spamhaus send to refuse a resolver), an answer outside
// 127.0.0.0/8 (typically a resolver that rewrites NXDOMAIN), SERVFAIL,
// REFUSED and timeouts are list errors, which the caller must never turn
// into a reject on its own.
//
// Queries go over miekg/dns to the configured recursive resolvers (or those
// of /etc/resolv.conf), with recursion desired, over UDP and again over TCP
// when the answer is truncated. A timeout, SERVFAIL, REFUSED or network
// error moves on to the next server; an answer that does not match the
// question is rejected. One timeout bounds the whole lookup, retries and
// TXT included, so a dead list costs a mail session a known time.
//
// A Lookup with NoTXT sends one A query and nothing else; Reason fetches a
// listing's TXT text on its own, so a caller can decide on the A answer
// and ask for the text later. Start asks several lists at once (a Batch):
// their queries leave together, on one socket and with one system call
// where the system allows, and the caller's goroutine takes the answers
// as they come, without a goroutine per list; Reasons does the same for
// texts. UDP goes through a few long-lived sockets per server, rotated now
// and then, with a random ID per query and the answer matched to its
// question; the same question asked again while it is in flight, by any
// Resolver with the same servers, waits for the one packet already sent
// (transport.go says how answers are matched). Queries and answers are
// packed and parsed by hand (wire.go): only the few fields a lookup reads.
//
// The package knows nothing of caching, scoring or categories, and does
// not log: a Result carries the codes, the TTL and the error so that the
// callers can decide and say.
package dnsbl

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// Status is the outcome of one lookup.
type Status uint8

const (
	NotListed Status = iota // NXDOMAIN, or no A record
	Listed                  // at least one A record in 127.0.0.0/8 outside 127.255.255.0/24, and no error code
	Error                   // the list gave no usable answer; see Result.Err
)

func (s Status) String() string {
	switch s {
	case NotListed:
		return "clean"
	case Listed:
		return "listed"
	case Error:
		return "error"
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// Errors a Result.Err wraps; test with errors.Is. The texts never contain
// the zone or query name, because zones may carry an account key (Spamhaus
// DQS) and these texts may be shown on the public lookup page.
var (
	// ErrResolverBlocked: the list answered with a code in
	// 127.255.255.0/24, by which it says it will not answer this resolver
	// (public or open resolver, query limit exceeded, misspelt zone).
	ErrResolverBlocked = errors.New("dnsbl: list refuses this resolver")
	// ErrNotLoopback: an A record outside 127.0.0.0/8. No list answers
	// that; a resolver that rewrites NXDOMAIN to an advertising host does.
	ErrNotLoopback = errors.New("dnsbl: answer outside 127.0.0.0/8")
	ErrServFail    = errors.New("dnsbl: server failure (SERVFAIL)")
	ErrRefused     = errors.New("dnsbl: query refused (REFUSED)")
	ErrTimeout     = errors.New("dnsbl: timeout")
	// ErrMismatch: the answer is not for the question asked (other name,
	// type or class, or records for another name); it is not used.
	ErrMismatch = errors.New("dnsbl: answer does not match the question")
)

// Query is one question to one list.
type Query struct {
	Zone string     // the list's zone, e.g. "zen.spamhaus.org"
	IP   netip.Addr // the address asked about; IPv4-mapped IPv6 is unmapped
	// Timeout bounds the whole lookup (A query, retries, TXT query);
	// 0 uses the resolver's timeout. The context may end it earlier.
	Timeout time.Duration
	NoTXT   bool // do not fetch the TXT reason of a listing
	// KeepMapped asks an IPv4-mapped IPv6 address as IPv6 nibbles instead
	// of as IPv4. Only the list health probes want this: RFC 5782
	// section 5 makes ::ffff:127.0.0.2 (listed) and ::ffff:127.0.0.1 (not
	// listed) the test points of lists that take IPv6.
	KeepMapped bool
}

// Result is the answer of one list about one address.
type Result struct {
	Status Status
	// Codes are the A records in 127.0.0.0/8 outside 127.255.255.0/24,
	// sorted and without duplicates; set only when Status is Listed.
	Codes []netip.Addr
	// Reason is the list's TXT text for a listing (records joined by a
	// space), made printable; empty when not fetched or not available.
	Reason string
	// TTL is how long the answer may be reused: the lowest TTL of the A
	// records, or for NXDOMAIN and NODATA the negative TTL of the SOA in
	// the answer (RFC 2308: the lower of its TTL and its minimum), else 0.
	// It is 0 for errors: callers apply their own error TTL.
	TTL      time.Duration
	Err      error         // set when Status is Error
	Duration time.Duration // how long the lookup took
}

// CheckListingCode says why a list must not publish the A record a as a
// listing code (RFC 5782 section 2.3), nil when it may: outside
// 127.0.0.0/8 a client takes it for a resolver that rewrites NXDOMAIN, in
// 127.255.255.0/24 for a refusal of its resolver, and 127.0.0.1 is the
// test point that is never listed (127.0.0.0 is no code either).
// blmilter's zone server and its config check both ask it.
func CheckListingCode(a netip.Addr) error {
	a = a.Unmap()
	if !a.Is4() || a.As4()[0] != 127 {
		return fmt.Errorf("%v is not in 127.0.0.0/8, where DNS list answers are", a)
	}
	b := a.As4()
	switch {
	case b[1] == 0 && b[2] == 0 && b[3] <= 1:
		return fmt.Errorf("%v is not a listing code: 127.0.0.1 is the RFC 5782 test point that is never listed", a)
	case b[1] == 255 && b[2] == 255:
		return fmt.Errorf("%v is in 127.255.255.0/24, which clients take for a refusal of their resolver", a)
	}
	return nil
}
