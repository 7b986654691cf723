package policy

import (
	"net/netip"
	"time"
)

// Action is what the policy decided to do with a client.
type Action string

const (
	// ActionAccept: nothing to do; the client is not listed (or scored below the threshold).
	ActionAccept Action = "accept"
	// ActionReject: refuse with a 5xx reply (550 5.7.1).
	ActionReject Action = "reject"
	// ActionTempfail: refuse with a 4xx reply (451 4.7.1), from action = "tempfail"
	// or from a list error on a list with on_error = "tempfail".
	ActionTempfail Action = "tempfail"
	// ActionTag: accept and add an X-Blmilter header.
	ActionTag Action = "tag"
	// ActionLog: dry run; the policy would have acted, but only logs.
	ActionLog Action = "log"
)

// Applies reports whether the front end must refuse the client.
func (a Action) Applies() bool { return a == ActionReject || a == ActionTempfail }

// Hit is one list that lists (or, for allow lists, vouches for) the IP.
type Hit struct {
	List     string     // display name, safe for replies
	Category string     // zombie, open-proxy, spam-source, dynamic, local, allow, ...
	Code     netip.Addr // the DNS answer; invalid for file and store lists
	Reason   string     // TXT record or file comment
	Weight   float64    // what it adds to the score (0 when it did not count)
	// ListWeight is what the hit would add if it counted: the weight of its
	// code or list, also for dry-run and degraded lists (shadow statistics).
	ListWeight float64
	DryRun     bool // the list is in dry run: logged, not scored
	Degraded   bool // the list failed its health check: logged, not scored
	Unproven   bool // the list has not yet passed a health check: logged, not scored
}

// ListError is a list that could not answer for this IP. It is never a listing.
type ListError struct {
	List    string
	Err     string // for the log, never for the SMTP client
	OnError string // "ignore" or "tempfail"
}

// Skip says why an IP was not looked up at all.
type Skip string

const (
	SkipNone     Skip = ""
	SkipLoopback Skip = "loopback"
	SkipAllow    Skip = "allow"
	SkipInvalid  Skip = "unknown"
)

// Verdict is the engine's answer for one client IP. A Verdict returned by
// Check may share its slices with the cache: treat it as read-only.
type Verdict struct {
	IP        netip.Addr
	Action    Action
	Score     float64
	Threshold float64
	Hits      []Hit
	Errors    []ListError
	Skipped   Skip
	// Deferred: a reject turned into a tempfail by delist-and-deliver
	// (Options.DeferFirst).
	Deferred bool
	Cached   bool
	Duration time.Duration
}

// Reply is the SMTP reply for a verdict that applies (or the header for tag).
type Reply struct {
	Code     int    // 550 or 451
	Enhanced string // "5.7.1" or "4.7.1"
	Text     string // safe for the MTA: no CR/LF; doubling '%' for Sendmail is up to the milter
	Ref      string // identifies the recorded decision
	Header   string // X-Blmilter header value for tag
}
