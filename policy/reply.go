package policy

import (
	"crypto/rand"
	"encoding/base32"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/blmilter/blmilter/signedref"
)

// maxReplyText bounds the reply text so that "550 5.7.1 " plus the text
// stays well inside SMTP's 512-octet reply line (RFC 5321 §4.5.3.1.5).
const maxReplyText = 440

// Reply builds the SMTP reply (or the tag header) for v, with a fresh Ref,
// and records the decision through Options.Recorder. It never waits for
// DNS: a decision whose listings' TXT texts are not known yet goes to the
// Recorder when they arrive (see reason.go and FlushDecisions).
//
// With Options.RefKey the Ref is the decision itself, signed (see
// signedReply); without it, a short random id the Recorder keeps.
func (e *Engine) Reply(v *Verdict) Reply {
	now := time.Now()
	var r Reply
	if e.opts.RefKey != nil {
		r = e.signedReply(v, now)
	} else {
		r = e.reply(v, NewRef(), false)
	}
	if v.Deferred {
		// A deferral counts when the client gets it.
		if d, ok := e.opts.StoreList.(Deferrer); ok {
			d.NoteDeferral(v.IP, now)
		}
	}
	if e.opts.Recorder != nil {
		e.record(Decision{Ref: r.Ref, Time: now, Verdict: *v, Reply: r})
	}
	return r
}

// maxSignedRef bounds a signed ref: room for a dozen hits.
const maxSignedRef = 400

// signedReply is the reply with a signed ref, which {url} carries as
// ?ref=, so the lookup page of any node holding the fleet's key shows the
// decision. The ref is made to fit: the reply text with it stays within
// maxReplyText, and cutting the text would cut the signature. A reply whose
// other text leaves no room even for the shortest signed ref gets a short
// random one and a plain link instead.
func (e *Engine) signedReply(v *Verdict, now time.Time) Reply {
	d := signedDecision(v, now, e.opts.Node)
	tmpl := e.template(v)
	// Each {url} and {ref} carries the ref once, a {url} after "?ref=".
	urls := 0
	if e.opts.PublicURL != "" {
		urls = strings.Count(tmpl, "{url}")
	}
	copies := urls + strings.Count(tmpl, "{ref}")
	budget := maxSignedRef
	if copies > 0 {
		without := len(e.replyText(v, tmpl, "", true)) + urls*len("?ref=")
		budget = min(budget, (maxReplyText-without)/copies)
	}
	ref, err := e.opts.RefKey.Sign(d, budget)
	if err != nil {
		e.log.Debug("reply with a short ref: no room for a signed one", "ip", v.IP, "err", err)
		return e.reply(v, NewRef(), false)
	}
	return e.reply(v, ref, true)
}

// signedDecision is what a signed ref tells of v.
func signedDecision(v *Verdict, now time.Time, node string) signedref.Decision {
	d := signedref.Decision{
		Time: now, IP: v.IP, Action: string(v.Action), Score: v.Score, Threshold: v.Threshold, Node: node,
		Hits: make([]signedref.Hit, 0, len(v.Hits)),
	}
	for _, h := range v.Hits {
		d.Hits = append(d.Hits, signedref.Hit{List: h.List, Category: h.Category, Code: h.Code, Weight: h.Weight,
			DryRun: h.DryRun, Degraded: h.Degraded, Unproven: h.Unproven})
	}
	return d
}

// NewRef returns a short random identifier for a decision: 10 base32
// characters (50 bits).
func NewRef() string {
	var b [7]byte
	rand.Read(b[:])
	var out [12]byte
	refEncoding.Encode(out[:], b[:])
	return string(out[:10])
}

var refEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// topHit is the hit a reply names: the counted hit with the largest weight,
// else (nothing counted, as in a tempfail on a list error) the first hit.
func topHit(v *Verdict) (Hit, bool) {
	best := -1
	for i, h := range v.Hits {
		if h.DryRun || h.Degraded || h.Unproven || h.Weight <= 0 {
			continue
		}
		if best < 0 || h.Weight > v.Hits[best].Weight {
			best = i
		}
	}
	if best < 0 {
		return Hit{}, false
	}
	return v.Hits[best], true
}

// reply is the reply to v with ref; with link, {url} carries the ref as
// ?ref= (refs are URL-safe).
func (e *Engine) reply(v *Verdict, ref string, link bool) Reply {
	r := Reply{Ref: ref}
	switch v.Action {
	case ActionReject:
		r.Code, r.Enhanced = 550, "5.7.1"
	case ActionTempfail:
		r.Code, r.Enhanced = 451, "4.7.1"
	}
	if tmpl := e.template(v); tmpl != "" {
		r.Text = sanitize(e.replyText(v, tmpl, ref, link), maxReplyText)
	}
	r.Header = header(v, ref)
	return r
}

// template is the reply template for v's action; "" when v is not refused.
func (e *Engine) template(v *Verdict) string {
	switch v.Action {
	case ActionReject:
		return e.opts.RejectText
	case ActionTempfail:
		if v.Score >= v.Threshold {
			return e.opts.TempfailText
		}
		return e.opts.ErrorText
	}
	return ""
}

// replyText fills tmpl for v, made safe for SMTP but not cut to length.
func (e *Engine) replyText(v *Verdict, tmpl, ref string, link bool) string {
	h, _ := topHit(v)
	ip := v.IP.String()
	url := ""
	if e.opts.PublicURL != "" {
		url = sanitize(e.opts.PublicURL+"/ip/"+ip, 200)
		if link && ref != "" {
			url += "?ref=" + ref
		}
	}
	return sanitize(expand(tmpl, ip, sanitize(h.List, 64), sanitize(h.Category, 64), url, ref), 1<<16)
}

// expand fills the placeholders {ip} {list} {category} {url} {ref} in a
// template; anything else in braces is kept as written.
func expand(tmpl, ip, list, category, url, ref string) string {
	var b strings.Builder
	b.Grow(len(tmpl) + len(url) + len(list) + 32)
	for {
		i := strings.IndexByte(tmpl, '{')
		if i < 0 {
			b.WriteString(tmpl)
			return b.String()
		}
		b.WriteString(tmpl[:i])
		tmpl = tmpl[i:]
		val, n := "", 0
		switch {
		case strings.HasPrefix(tmpl, "{ip}"):
			val, n = ip, len("{ip}")
		case strings.HasPrefix(tmpl, "{list}"):
			val, n = list, len("{list}")
		case strings.HasPrefix(tmpl, "{category}"):
			val, n = category, len("{category}")
		case strings.HasPrefix(tmpl, "{url}"):
			val, n = url, len("{url}")
		case strings.HasPrefix(tmpl, "{ref}"):
			val, n = ref, len("{ref}")
		default:
			val, n = "{", 1
		}
		b.WriteString(val)
		tmpl = tmpl[n:]
	}
}

// header is the X-Blmilter value: "score=3 hits=Spamhaus ZEN(zombie) ref=...".
// When it is too long the list of hits is cut, never the ref.
func header(v *Verdict, ref string) string {
	head := "score=" + strconv.FormatFloat(v.Score, 'g', -1, 64)
	tail := ""
	if ref != "" {
		tail = " ref=" + sanitize(ref, maxSignedRef)
	}
	var b strings.Builder
	if len(v.Hits) > 0 {
		b.WriteString(" hits=")
		for i, h := range v.Hits {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(h.List)
			b.WriteByte('(')
			b.WriteString(h.Category)
			b.WriteByte(')')
		}
	}
	return head + sanitize(b.String(), maxHeader-len(head)-len(tail)) + tail
}

// maxHeader bounds the X-Blmilter header value.
const maxHeader = 900

// sanitize makes s safe in an SMTP reply or header: control characters
// (CR, LF, NUL, ...) become spaces, non-ASCII becomes '?', and the length
// is bounded.
func sanitize(s string, maxLen int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			clean = false
			break
		}
	}
	if !clean {
		var b strings.Builder
		b.Grow(len(s))
		for _, r := range s {
			switch {
			case r < 0x20 || r == 0x7f:
				b.WriteByte(' ')
			case r > 0x7f:
				b.WriteByte('?')
			default:
				b.WriteRune(r)
			}
		}
		s = b.String()
	}
	if len(s) > maxLen {
		s = s[:maxLen]
	}
	return s
}

// LogAttrs are the fields of one decision log line, shared by the milter
// and the policy server so both log alike.
func LogAttrs(v Verdict) []slog.Attr {
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs,
		slog.String("ip", v.IP.String()),
		slog.String("action", string(v.Action)),
		slog.Float64("score", v.Score),
	)
	if len(v.Hits) > 0 {
		hits := make([]string, len(v.Hits))
		for i, h := range v.Hits {
			s := h.List + ":" + h.Category + ":"
			if h.Code.IsValid() {
				s += h.Code.String()
			}
			switch {
			case h.Degraded:
				s += ":degraded"
			case h.Unproven:
				s += ":unproven"
			case h.DryRun:
				s += ":dry-run"
			}
			hits[i] = s
		}
		attrs = append(attrs, slog.Any("hits", hits))
	}
	if len(v.Errors) > 0 {
		errs := make([]string, len(v.Errors))
		for i, le := range v.Errors {
			errs[i] = le.List + ": " + le.Err
		}
		attrs = append(attrs, slog.Any("errors", errs))
	}
	if v.Skipped != SkipNone {
		attrs = append(attrs, slog.String("skipped", string(v.Skipped)))
	}
	if v.Deferred {
		attrs = append(attrs, slog.Bool("deferred", true))
	}
	attrs = append(attrs, slog.Bool("cached", v.Cached), slog.Duration("duration", v.Duration))
	return attrs
}
