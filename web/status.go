package web

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/signedref"
	"github.com/blmilter/blmilter/store"
)

// Report is everything the service says about one IP: the JSON API's
// answer, and the data of the status page. Field names are stable.
type Report struct {
	IP          string        `json:"ip"`
	IPVersion   int           `json:"ip_version"`
	CheckedAt   time.Time     `json:"checked_at"`
	Status      string        `json:"status"` // listed | not_listed | incomplete
	Verdict     VerdictInfo   `json:"verdict"`
	Reply       *ReplyInfo    `json:"reply"` // null when mail would be accepted
	Lists       []ListInfo    `json:"lists"`
	SiteListing *SiteListing  `json:"site_listing"` // null when not on the site's own list
	ReverseDNS  ReverseDNS    `json:"reverse_dns"`
	Decision    *DecisionInfo `json:"decision,omitempty"` // only with ?ref=
	History     *HistoryInfo  `json:"history"`            // null without a store
	PageURL     string        `json:"page_url"`
}

// VerdictInfo is what this server would do with mail from the IP now.
type VerdictInfo struct {
	Action    string  `json:"action"`  // accept | reject | tempfail | tag | log
	Refused   bool    `json:"refused"` // the SMTP client would get the reply
	Score     float64 `json:"score"`
	Threshold float64 `json:"threshold"`
	// Exempt is set when the mail filter never looks the IP up: "loopback",
	// "allow" (an allowed network). The lists are still asked for this page.
	Exempt string `json:"exempt,omitempty"`
	// Deferred: the refusal is deferred (451) because the address's own
	// listing may be removed by its owner (delist-and-deliver).
	Deferred bool `json:"deferred,omitempty"`
}

// ReplyInfo is the SMTP reply the client would get.
type ReplyInfo struct {
	Code     int    `json:"code"`
	Enhanced string `json:"enhanced"`
	Text     string `json:"text"`
}

// Per-list result codes.
const (
	ResultListed    = "listed"
	ResultNotListed = "not_listed"
	ResultError     = "list_error"    // the list did not give a usable answer
	ResultDegraded  = "list_degraded" // the list fails its health checks; its answers are not used
	ResultUnproven  = "list_unproven" // the list has not been health-checked yet; its answers are not used
	ResultSkipped   = "skipped"       // the list does not take this kind of address (e.g. IPv6)
)

// ListInfo is one configured list's answer for the IP.
type ListInfo struct {
	Name         string     `json:"name"`
	Kind         string     `json:"kind"` // dns | file | store
	Result       string     `json:"result"`
	Category     string     `json:"category,omitempty"`
	CategoryText string     `json:"category_text,omitempty"`
	Codes        []string   `json:"codes,omitempty"`
	Reason       string     `json:"reason,omitempty"`
	Weight       float64    `json:"weight"` // what the list adds to the score now (0 unless listed)
	DryRun       bool       `json:"dry_run"`
	TTLSeconds   int64      `json:"ttl_seconds,omitempty"`
	ExpiresAt    *time.Time `json:"expires_at,omitempty"` // when our cached answer expires
	HelpURL      string     `json:"help_url,omitempty"`
	Note         string     `json:"note,omitempty"` // why a list was skipped
}

// SiteListing is the IP's entry on the site's own list. It names the
// listed network but never other addresses or who asked for what.
type SiteListing struct {
	Network      string     `json:"network"`
	Category     string     `json:"category"`
	CategoryText string     `json:"category_text"`
	Reason       string     `json:"reason,omitempty"`
	ListedSince  time.Time  `json:"listed_since"`
	ExpiresAt    *time.Time `json:"expires_at"` // null: until removed
	// RefusesMail is false when this mail server does not use its own
	// list to refuse mail (no [[list]] with store = true, or only in dry
	// run): the listing is shown, but mail is not refused because of it.
	RefusesMail bool   `json:"refuses_mail"`
	RemovalURL  string `json:"removal_url"`
	HelpURL     string `json:"help_url"`
	// DelistAddress is the one-time address that removes the listing when
	// mail from the listed address itself reaches it (proof of control),
	// until DelistExpires; offered only for a listing its owner may
	// remove.
	DelistAddress string     `json:"delist_address,omitempty"`
	DelistExpires *time.Time `json:"delist_expires,omitempty"`
}

// DecisionInfo is the decision behind the ref of a bounce: recorded in
// this site's store under a short ref, or carried, signed, by the ref
// itself (a fleet's refs, see package signedref). A ref that is neither is
// never echoed: Ref is set only for one that was found.
type DecisionInfo struct {
	Ref   string `json:"ref,omitempty"`
	Found bool   `json:"found"`
	// Signed: the decision came from the ref itself, whose signature this
	// service verified with the fleet's key.
	Signed bool `json:"signed,omitempty"`
	// Node is the mail server that decided, when its signed ref names it.
	Node      string     `json:"node,omitempty"`
	Time      *time.Time `json:"time,omitempty"`
	Action    string     `json:"action,omitempty"`
	Score     *float64   `json:"score,omitempty"`
	Threshold *float64   `json:"threshold,omitempty"`
	Hits      []HitInfo  `json:"hits,omitempty"`
	Errors    []string   `json:"list_errors,omitempty"` // names of lists that could not answer then
	Reply     *ReplyInfo `json:"reply,omitempty"`
	// Truncated: the signed ref left out details that did not fit in the
	// reply line (hits of least weight, the end of long names).
	Truncated bool `json:"truncated,omitempty"`
	// Note says why a ref was not shown: "not_found" (not recorded here,
	// or pruned), "not_verified" (a signed ref altered, or made with
	// another key), "invalid" (not a reference at all).
	Note string `json:"note,omitempty"`
}

// Why a ref shows no decision (DecisionInfo.Note).
const (
	RefNotFound    = "not_found"
	RefNotVerified = "not_verified"
	RefInvalid     = "invalid"
)

// HitInfo is one list that listed the IP at the time of a decision.
type HitInfo struct {
	List         string `json:"list"`
	Category     string `json:"category,omitempty"`
	CategoryText string `json:"category_text,omitempty"`
	Code         string `json:"code,omitempty"`
	Reason       string `json:"reason,omitempty"`
	NotCounted   bool   `json:"not_counted,omitempty"` // dry-run, degraded or unproven list: logged, not scored
}

// parseIP reads the IP of a URL, or says in words why it is not one.
func parseIP(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return netip.Addr{}, errors.New("no IP address was given")
	case len(s) > 64:
		return netip.Addr{}, errors.New("this is too long to be an IP address")
	case strings.Contains(s, "/"):
		return netip.Addr{}, errors.New("this is a network (CIDR), not a single address; look up one address of it")
	case strings.Contains(s, "%"):
		return netip.Addr{}, errors.New("IPv6 addresses with a zone (the part after %) are local to one machine; leave the zone out")
	}
	ip, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		if strings.IndexFunc(s, func(r rune) bool { return r >= 'g' && r <= 'z' || r >= 'G' && r <= 'Z' }) >= 0 && !strings.Contains(s, ":") {
			return netip.Addr{}, errors.New("this looks like a host name; enter the IP address, the number shown in brackets in the bounce, e.g. 192.0.2.7")
		}
		return netip.Addr{}, errors.New("this is not an IPv4 address (four numbers 0-255 separated by dots) or an IPv6 address")
	}
	return ip.Unmap(), nil
}

// report builds the Report for ip: the engine's view of every list, the
// site's own listing, the reverse DNS, and with ref the recorded decision.
func (s *Server) report(ctx context.Context, ip netip.Addr, ref string) (*Report, error) {
	eng := s.engine()
	if eng == nil {
		return nil, errors.New("no engine")
	}
	cfg := s.config()
	base := strings.TrimRight(cfg.PublicURL, "/")

	ctx, cancel := context.WithTimeout(ctx, eng.Deadline()+time.Second)
	defer cancel()

	var (
		wg  sync.WaitGroup
		rev ReverseDNS
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		rev = s.reverse(ctx, cfg, ip)
	}()
	ins := eng.Inspect(ctx, ip)
	wg.Wait()

	now := s.now()
	rep := &Report{
		IP:         ip.String(),
		IPVersion:  4,
		CheckedAt:  now.UTC().Truncate(time.Second),
		ReverseDNS: rev,
		PageURL:    base + "/ip/" + ip.String(),
		Lists:      []ListInfo{},
	}
	if ip.Is6() {
		rep.IPVersion = 6
	}
	v := ins.Verdict
	rep.Verdict = VerdictInfo{
		Action:    string(v.Action),
		Refused:   v.Action.Applies(),
		Score:     v.Score,
		Threshold: v.Threshold,
		Exempt:    string(v.Skipped),
		Deferred:  v.Deferred,
	}
	if ins.Reply != nil && v.Action.Applies() {
		rep.Reply = &ReplyInfo{Code: ins.Reply.Code, Enhanced: ins.Reply.Enhanced, Text: ins.Reply.Text}
	}
	listed, incomplete := false, false
	for _, lr := range ins.Lists {
		li := ListInfo{
			Name:   lr.List,
			Kind:   lr.Kind,
			Result: resultCode(lr.Status),
			Weight: lr.Weight,
			DryRun: lr.DryRun,
		}
		if li.Result == ResultListed {
			li.Category = lr.Category
			li.CategoryText = categoryTitle(lr.Category)
			li.Reason = lr.Reason
			for _, c := range lr.Codes {
				li.Codes = append(li.Codes, c.String())
			}
			if _, ok := categoryByKey(lr.Category); ok {
				li.HelpURL = base + "/help/" + lr.Category
			}
			if lr.Category != "allow" {
				listed = true
			}
		}
		if li.Result == ResultError || li.Result == ResultDegraded || li.Result == ResultUnproven {
			incomplete = true
		}
		if li.Result == ResultSkipped {
			li.Note = skipNote(ip)
		}
		if lr.TTL > 0 {
			li.TTLSeconds = int64(lr.TTL / time.Second)
		}
		if !lr.Expires.IsZero() {
			t := lr.Expires.UTC().Truncate(time.Second)
			li.ExpiresAt = &t
		}
		rep.Lists = append(rep.Lists, li)
	}

	if s.store != nil {
		if l, ok := s.store.ListingFor(ip); ok && !l.Expired(now) {
			rep.SiteListing = siteListing(l, base, ip)
			rep.SiteListing.RefusesMail = usesStore(eng)
			s.offerDelist(ctx, cfg, rep.SiteListing, l, ip)
			listed = true
		}
		if h, err := s.history(ctx, ip, cfg); err != nil {
			if !errors.Is(err, errStoreUnavailable) {
				s.log.Warn("web: history", "ip", ip, "err", err)
			}
		} else {
			rep.History = h
		}
	}
	switch {
	case listed:
		rep.Status = "listed"
	case incomplete:
		rep.Status = "incomplete"
	default:
		rep.Status = "not_listed"
	}
	if ref != "" {
		rep.Decision = s.decision(ctx, ref, ip)
	}
	return rep, nil
}

// offerDelist adds the delist address to a listing its owner may remove
// now: one address (or an IPv6 /64), a self-service category, quota left.
func (s *Server) offerDelist(ctx context.Context, cfg *Settings, sl *SiteListing, l store.Listing, ip netip.Addr) {
	rule := cfg.SelfService()
	if cfg.DelistDomain == "" || !rule.Covers(l) {
		return
	}
	if used, err := s.store.SelfServiceRemovals(ctx, ip, s.now().Add(-rule.Window)); err != nil || used >= rule.Quota {
		return
	}
	tok, exp, err := s.store.DelistToken(ctx, ip, cfg.DelistTTL)
	if err != nil {
		s.log.Warn("web: delist token", "ip", ip, "err", err)
		return
	}
	exp = exp.UTC()
	sl.DelistAddress = "delist+" + tok + "@" + cfg.DelistDomain
	sl.DelistExpires = &exp
}

// usesStore reports whether the engine refuses mail by the site's own
// list: a store list that is not in dry run.
func usesStore(eng *policy.Engine) bool {
	for _, l := range eng.Lists() {
		if l.Kind == policy.KindStore && !l.DryRun && l.Weight > 0 {
			return true
		}
	}
	return false
}

// skipNote says why a list was not asked: it does not take this kind of
// address.
func skipNote(ip netip.Addr) string {
	switch {
	case ip.Is6():
		return "not asked: the list does not take IPv6 addresses"
	default:
		return "not asked: the list does not take IPv4 addresses"
	}
}

func resultCode(status string) string {
	switch status {
	case "listed":
		return ResultListed
	case "clean":
		return ResultNotListed
	case "degraded":
		return ResultDegraded
	case "unproven":
		return ResultUnproven
	case "skipped":
		return ResultSkipped
	default:
		// Anything unknown is an error: it must never read as a listing.
		return ResultError
	}
}

func siteListing(l store.Listing, base string, ip netip.Addr) *SiteListing {
	sl := &SiteListing{
		Network:      l.Prefix.String(),
		Category:     l.Category,
		CategoryText: categoryTitle(l.Category),
		Reason:       l.Reason,
		ListedSince:  l.ListedAt.UTC(),
		RemovalURL:   base + "/ip/" + ip.String() + "/removal",
		HelpURL:      base + "/help/local",
	}
	if l.Prefix.IsSingleIP() {
		sl.Network = l.Prefix.Addr().String()
	}
	if _, ok := categoryByKey(l.Category); ok {
		sl.HelpURL = base + "/help/" + l.Category
	}
	if l.ExpiresAt != nil {
		t := l.ExpiresAt.UTC()
		sl.ExpiresAt = &t
	}
	return sl
}

// validRef reports whether ref can be a short decision reference of the
// store; others are not looked up (and never echoed into a query).
func validRef(ref string) bool {
	if ref == "" || len(ref) > 64 {
		return false
	}
	for _, r := range ref {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// decision finds the decision behind ref: a signed ref is opened with the
// fleet's key, a short one looked up in the store. One made for another
// IP is reported as not found, so a ref never tells about other
// addresses; one that fails its signature is refused, and the page shows
// the IP's current status with a note.
func (s *Server) decision(ctx context.Context, ref string, ip netip.Addr) *DecisionInfo {
	var key *signedref.Key
	if eng := s.engine(); eng != nil {
		key = eng.RefKey()
	}
	if signedref.Looks(ref) {
		if key == nil {
			// Not this site's kind of ref; a store ref is far shorter.
			return &DecisionInfo{Note: RefNotVerified}
		}
		d, err := key.Open(ref)
		if err != nil {
			s.log.Info("web: a decision reference was refused", "ip", ip, "err", err)
			return &DecisionInfo{Note: RefNotVerified}
		}
		if d.IP != ip {
			return &DecisionInfo{Note: RefNotFound}
		}
		return s.signedDecision(ctx, ref, d)
	}
	if !validRef(ref) {
		return &DecisionInfo{Note: RefInvalid}
	}
	di := &DecisionInfo{Note: RefNotFound}
	if s.store == nil {
		return di
	}
	d, err := s.store.Decision(ctx, ref)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("web: decision lookup failed", "ref", ref, "err", err)
		}
		return di
	}
	if d.IP.Unmap() != ip {
		return di
	}
	di = &DecisionInfo{Ref: ref, Found: true}
	t := d.Time.UTC()
	di.Time = &t
	di.Action = string(d.Action)
	di.Score, di.Threshold = &d.Score, &d.Threshold
	for _, h := range d.Hits {
		di.Hits = append(di.Hits, hitInfo(h.List, h.Category, h.Code, h.Reason, h.DryRun || h.Degraded || h.Unproven))
	}
	for _, e := range d.Errors {
		di.Errors = append(di.Errors, e.List)
	}
	if d.Reply.Code != 0 {
		di.Reply = &ReplyInfo{Code: d.Reply.Code, Enhanced: d.Reply.Enhanced, Text: d.Reply.Text}
	}
	return di
}

// signedDecision is what a verified signed ref carries. When this node
// made it, its store also has the reply text and the lists' reasons.
func (s *Server) signedDecision(ctx context.Context, ref string, d signedref.Decision) *DecisionInfo {
	di := &DecisionInfo{Ref: ref, Found: true, Signed: true, Node: d.Node, Action: d.Action, Truncated: d.Truncated}
	t := d.Time.UTC()
	di.Time = &t
	di.Score, di.Threshold = &d.Score, &d.Threshold
	var rec *store.DecisionRecord
	if s.store != nil {
		if r, err := s.store.Decision(ctx, ref); err == nil && r.IP.Unmap() == d.IP {
			rec = &r
		}
	}
	for _, h := range d.Hits {
		reason := ""
		if rec != nil {
			for _, rh := range rec.Hits {
				if rh.List == h.List {
					reason = rh.Reason
				}
			}
		}
		di.Hits = append(di.Hits, hitInfo(h.List, h.Category, h.Code, reason, h.DryRun || h.Degraded || h.Unproven || h.Weight == 0))
	}
	if rec != nil && rec.Reply.Code != 0 {
		di.Reply = &ReplyInfo{Code: rec.Reply.Code, Enhanced: rec.Reply.Enhanced, Text: rec.Reply.Text}
	}
	return di
}

func hitInfo(list, category string, code netip.Addr, reason string, notCounted bool) HitInfo {
	hi := HitInfo{List: list, Category: category, CategoryText: categoryTitle(category), Reason: reason, NotCounted: notCounted}
	if code.IsValid() {
		hi.Code = code.String()
	}
	return hi
}

// verdictWords says the verdict in a sentence for the page.
func verdictWords(r *Report) string {
	v := r.Verdict
	switch {
	case v.Exempt == "loopback":
		return "This is a loopback address: this mail server never checks it, so mail from it is accepted. The lists are shown for information."
	case v.Exempt == "allow":
		return "This address is in a network this mail server always accepts mail from. The lists are shown for information."
	case v.Exempt != "":
		return "This mail server does not check this address."
	case !v.Refused && onlySiteListing(r):
		return "This site lists this address on its own list, but does not use that list to refuse mail: mail from this address is not refused because of this listing."
	case v.Action == "reject":
		return "Mail from this address would be refused now."
	case v.Deferred:
		return "Mail from this address is deferred for now (a temporary refusal): the sending server keeps it and retries. Remove this site's listing below, and the next retry is delivered."
	case v.Action == "tempfail":
		return "Mail from this address would be deferred now (a temporary refusal; the sender's server retries later)."
	case v.Action == "tag":
		return "Mail from this address would be accepted but marked as coming from a listed address."
	case v.Action == "log":
		return "Mail from this address would be accepted; this server only logs listings for now (dry run)."
	default:
		return "Mail from this address would be accepted."
	}
}

// onlySiteListing reports whether the site's own list lists the IP
// without refusing mail for it, and no other list lists it.
func onlySiteListing(r *Report) bool {
	if r.SiteListing == nil || r.SiteListing.RefusesMail {
		return false
	}
	for _, l := range r.Lists {
		if l.Result == ResultListed && l.Kind != policy.KindStore && l.Weight > 0 {
			return false
		}
	}
	return true
}

func resultWords(result string) string {
	switch result {
	case ResultListed:
		return "listed"
	case ResultNotListed:
		return "not listed"
	case ResultDegraded:
		return "could not check (list failing its health checks)"
	case ResultUnproven:
		return "not yet checked (the list has not passed its first health check since it was configured)"
	case ResultSkipped:
		return "not asked"
	default:
		return "could not check (list did not answer usably)"
	}
}

func scoreText(f float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", f), "0"), ".")
}
