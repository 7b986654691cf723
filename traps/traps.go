// Package traps is the mail path's side of the evidence that fills the
// site's own list, shared by the milter and the policy server at RCPT:
//
//   - a spam trap recipient is refused as a dead address (550 5.1.1) and
//     the hit is recorded with what the session showed; enough hits list
//     the client (store.RecordTrapHit);
//   - a one-time delist address, delist+TOKEN@<delist domain>, from the
//     listed client is a proof of control that removes its listing
//     (store.ProveControl), and the message is discarded.
//
// A trap address is never shown: not in a reply, not on a page, not in a
// log line at info level.
package traps

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

// Store is what the traps need of the site's store.
type Store interface {
	RecordTrapHit(ctx context.Context, h store.TrapHit, r store.TrapRules) (store.TrapOutcome, error)
	ProveControl(ctx context.Context, token string, ip netip.Addr, ev store.ControlEvidence, rule store.SelfService) (store.ProofResult, error)
}

// Observer is told each hit and proof, for the metrics.
type Observer interface {
	TrapHit(o store.TrapOutcome, listable bool)
	DelistProof(r store.ProofResult)
}

// Options are the traps' settings; cmd/blmilter fills them from [traps],
// [web] delist_domain and the [web] self-service settings.
type Options struct {
	// Addresses are trap addresses in lower case: "user@domain", or
	// "@domain" for a whole domain.
	Addresses []string
	Rules     store.TrapRules
	// DelistDomain is the domain of delist+TOKEN addresses; "" turns proof
	// of control off.
	DelistDomain string
	SelfService  store.SelfService
	Store        Store
	Logger       *slog.Logger
	Observer     Observer // may be nil
	// Timeout bounds one store write on the mail path.
	Timeout time.Duration
}

// Traps answers the front ends about recipients. It is immutable: a reload
// builds a new one.
type Traps struct {
	opts    Options
	exact   map[string]bool // "user@domain"
	domains map[string]bool // "domain"
	log     *slog.Logger
}

// New builds the traps. Without addresses and without a delist domain,
// or without a store, it returns nil: every recipient is ordinary.
func New(opts Options) *Traps {
	if opts.Store == nil || (len(opts.Addresses) == 0 && opts.DelistDomain == "") {
		return nil
	}
	t := &Traps{opts: opts, exact: map[string]bool{}, domains: map[string]bool{}, log: opts.Logger}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.opts.Timeout <= 0 {
		t.opts.Timeout = 5 * time.Second
	}
	t.opts.DelistDomain = strings.ToLower(opts.DelistDomain)
	for _, a := range opts.Addresses {
		a = strings.ToLower(a)
		if d, ok := strings.CutPrefix(a, "@"); ok {
			t.domains[d] = true
		} else {
			t.exact[a] = true
		}
	}
	return t
}

// DelistDomain is the domain of the delist addresses; "" when proof of
// control is off or t is nil.
func (t *Traps) DelistDomain() string {
	if t == nil {
		return ""
	}
	return t.opts.DelistDomain
}

// Kind is what a recipient is to the traps.
type Kind int

const (
	Ordinary Kind = iota
	Trap
	Delist
)

// Classify says what rcpt (as MAIL and RCPT carry it, with or without
// angle brackets) is; for Delist it returns the token. A nil Traps knows
// only ordinary recipients.
func (t *Traps) Classify(rcpt string) (Kind, string) {
	if t == nil {
		return Ordinary, ""
	}
	addr := strings.ToLower(bareAddress(rcpt))
	local, domain, ok := cutAt(addr)
	if !ok {
		return Ordinary, ""
	}
	if t.opts.DelistDomain != "" && domain == t.opts.DelistDomain {
		if tok, ok := strings.CutPrefix(local, "delist+"); ok && tok != "" {
			return Delist, tok
		}
	}
	if t.exact[addr] || t.domains[domain] {
		return Trap, ""
	}
	return Ordinary, ""
}

// bareAddress strips angle brackets and a source route.
func bareAddress(s string) string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "<")
	s = strings.TrimSuffix(s, ">")
	if strings.HasPrefix(s, "@") {
		if i := strings.IndexByte(s, ':'); i >= 0 {
			s = s[i+1:] // <@relay:user@domain>
		}
	}
	return s
}

func cutAt(addr string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(addr, '@')
	if i <= 0 || i == len(addr)-1 {
		return "", "", false
	}
	return strings.Trim(addr[:i], `"`), strings.TrimSuffix(addr[i+1:], "."), true
}

// Session is what a front end knows of the SMTP session at RCPT.
type Session struct {
	IP            netip.Addr
	HELO          string
	MailFrom      string
	QueueID       string
	ClientName    string // the client's name as the MTA has it
	TLS           string // protocol and cipher; "" without TLS
	Authenticated bool
	// Verdict is the engine's verdict on the client; Skipped says why it
	// was not looked up (loopback, allow).
	Verdict policy.Verdict
}

// Replies of the front ends, without the address: a trap must look like
// a dead address, and blmilter's words never name it. The milter's text is
// the whole reply; Postfix puts "<address>: Recipient address rejected: "
// before a policy server's text itself, as for every access reply, so the
// policy server sends only the reason.
const (
	TrapCode     = 550
	TrapEnhanced = "5.1.1"
	TrapReason   = "User unknown"
	DelistCode   = 550
	DelistReason = "This delisting address is not valid for this client"
	// TrapText and DelistText are the milter's whole texts.
	TrapText   = "Recipient address rejected: " + TrapReason
	DelistText = "Recipient address rejected: " + DelistReason
)

// Why a trap hit lists nobody.
const (
	NotListedAllowed       = "allowed network"
	NotListedLoopback      = "loopback"
	NotListedAuthenticated = "authenticated"
	NotListedAllowList     = "allow list"
	NotListedUnknown       = "no client address"
)

// whyNotListed says why a client is never listed by a trap hit, or "".
func whyNotListed(s Session) string {
	switch s.Verdict.Skipped {
	case policy.SkipLoopback:
		return NotListedLoopback
	case policy.SkipAllow:
		return NotListedAllowed
	case policy.SkipInvalid:
		return NotListedUnknown
	}
	switch {
	case !s.IP.IsValid():
		return NotListedUnknown
	case s.IP.IsLoopback():
		return NotListedLoopback
	case s.Authenticated:
		return NotListedAuthenticated
	}
	if s.Verdict.Score < s.Verdict.Threshold {
		for _, h := range s.Verdict.Hits {
			if h.ListWeight < 0 && h.Weight < 0 {
				return NotListedAllowList
			}
		}
	}
	return ""
}

// Hit records a trap hit of the session's client with rcpt and lists it
// unless it is a client never listed. The front end refuses the recipient
// with TrapCode whatever Hit returns. The log line names the client, never
// the trap (which only the debug level shows).
func (t *Traps) Hit(ctx context.Context, s Session, rcpt string) store.TrapOutcome {
	why := whyNotListed(s)
	if why != "" {
		t.log.Info("trap hit; client not listed", "ip", s.IP.String(), "why", why, "queue_id", s.QueueID)
		t.log.Debug("trap hit recipient", "ip", s.IP.String(), "trap", rcpt)
		if t.opts.Observer != nil {
			t.opts.Observer.TrapHit(store.TrapOutcome{}, false)
		}
		return store.TrapOutcome{}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.opts.Timeout)
	defer cancel()
	out, err := t.opts.Store.RecordTrapHit(ctx, store.TrapHit{
		IP: s.IP, HELO: s.HELO, MailFrom: s.MailFrom, Trap: strings.ToLower(bareAddress(rcpt)),
		QueueID: s.QueueID, RDNS: s.ClientName,
	}, t.opts.Rules)
	if err != nil {
		t.log.Error("trap hit not recorded", "ip", s.IP.String(), "queue_id", s.QueueID, "err", err)
		return store.TrapOutcome{}
	}
	attrs := []any{"ip", s.IP.String(), "helo", s.HELO, "queue_id", s.QueueID, "hits", out.Hits, "listed", out.Listed}
	if out.Listed {
		attrs = append(attrs, "prefix", out.Prefix.String(), "expires", out.Expires.UTC().Format(time.RFC3339))
		if out.Started {
			attrs = append(attrs, "relisting", out.Level > 0, "level", out.Level)
		}
	}
	if out.Operator {
		attrs = append(attrs, "operator_listing", true)
	}
	t.log.Info("trap hit", attrs...)
	t.log.Debug("trap hit recipient", "ip", s.IP.String(), "trap", rcpt)
	if t.opts.Observer != nil {
		t.opts.Observer.TrapHit(out, true)
	}
	return out
}

// Delist tries the session's client's proof of control with token. When
// Removed, or when the client is not listed at all, the front end accepts
// the recipient and discards the message; otherwise it answers as for any
// recipient (a listed client gets its listing's reply).
func (t *Traps) Delist(ctx context.Context, s Session, token string) store.ProofResult {
	if !s.IP.IsValid() {
		return store.ProofResult{Why: store.ProofInvalidToken}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.opts.Timeout)
	defer cancel()
	res, err := t.opts.Store.ProveControl(ctx, token, s.IP, store.ControlEvidence{
		HELO: s.HELO, PTR: s.ClientName, TLS: s.TLS, QueueID: s.QueueID,
	}, t.opts.SelfService)
	if err != nil {
		t.log.Error("proof of control failed", "ip", s.IP.String(), "queue_id", s.QueueID, "err", err)
		return store.ProofResult{Why: store.ProofInvalidToken}
	}
	if res.Removed {
		t.log.Info("listing removed by proof of control", "ip", s.IP.String(), "prefix", res.Prefix.String(),
			"helo", s.HELO, "client_name", s.ClientName, "tls", s.TLS, "queue_id", s.QueueID)
	} else {
		t.log.Info("proof of control refused", "ip", s.IP.String(), "why", res.Why, "queue_id", s.QueueID)
	}
	if t.opts.Observer != nil {
		t.opts.Observer.DelistProof(res)
	}
	return res
}

// Accepts reports whether a delist recipient with this result is
// accepted (and its message discarded).
func Accepts(r store.ProofResult) bool { return r.Removed || r.Why == store.ProofNotListed }
