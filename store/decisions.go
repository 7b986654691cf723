package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/blmilter/blmilter/policy"
)

// maxBatch bounds one transaction of decisions, so a burst does not hold
// the write lock for long.
const maxBatch = 512

// DecisionRecord is a decision as recorded for its ref: what the filter saw
// and replied at that moment, kept after the listings behind it are gone.
type DecisionRecord struct {
	Ref       string
	Time      time.Time
	IP        netip.Addr
	Action    policy.Action
	Score     float64
	Threshold float64
	Hits      []policy.Hit
	// Errors are the lists that could not answer. Err is log text (it may
	// name a zone with an access key in it): not for public pages.
	Errors []policy.ListError
	Reply  policy.Reply
}

// Decision turns the record back into the engine's form.
func (r DecisionRecord) Decision() policy.Decision {
	return policy.Decision{
		Ref:  r.Ref,
		Time: r.Time,
		Verdict: policy.Verdict{
			IP: r.IP, Action: r.Action, Score: r.Score, Threshold: r.Threshold,
			Hits: r.Hits, Errors: r.Errors,
		},
		Reply: r.Reply,
	}
}

// The JSON columns have their own field names, so renaming a Go field never
// makes old rows unreadable.
type hitJSON struct {
	List     string  `json:"list"`
	Category string  `json:"category,omitempty"`
	Code     string  `json:"code,omitempty"`
	Reason   string  `json:"reason,omitempty"`
	Weight   float64 `json:"weight"`
	DryRun   bool    `json:"dry_run,omitempty"`
	Degraded bool    `json:"degraded,omitempty"`
	Unproven bool    `json:"unproven,omitempty"`
}

type listErrorJSON struct {
	List    string `json:"list"`
	Err     string `json:"err,omitempty"`
	OnError string `json:"on_error,omitempty"`
}

type replyJSON struct {
	Code     int    `json:"code,omitempty"`
	Enhanced string `json:"enhanced,omitempty"`
	Text     string `json:"text,omitempty"`
	Header   string `json:"header,omitempty"`
}

// RecordDecision implements policy.Recorder. It never blocks: the decision
// is queued for a writer goroutine that inserts in batches, and when the
// queue is full the decision is dropped and counted (DroppedDecisions; a
// warning is logged at most once a minute). A decision without a Ref is
// ignored: nothing could ask for it.
func (s *Store) RecordDecision(d policy.Decision) {
	if d.Ref == "" {
		return
	}
	if s.closed.Load() || s.opts.ReadOnly {
		s.dropped.Add(1)
		return
	}
	select {
	case s.decisions <- d:
	default:
		s.dropped.Add(1)
	}
}

// DroppedDecisions is how many decisions were dropped because the queue was
// full or the store closed, since Open.
func (s *Store) DroppedDecisions() uint64 { return s.dropped.Load() }

// Flush waits until every decision recorded before the call is written.
func (s *Store) Flush() {
	if s.opts.ReadOnly {
		return
	}
	ch := make(chan struct{})
	select {
	case s.flushReq <- ch:
		<-ch
	case <-s.done:
		// Close writes what is queued.
	}
}

// Decision returns the decision recorded under ref; ErrNotFound when there
// is none (never recorded, or pruned).
func (s *Store) Decision(ctx context.Context, ref string) (DecisionRecord, error) {
	var (
		r                    DecisionRecord
		ip, action           string
		hits, errs, replyTxt string
	)
	err := s.db.QueryRowContext(ctx, `
SELECT ref, at, ip, action, score, threshold, hits, errors, reply FROM decisions WHERE ref = ?`, ref).
		Scan(&r.Ref, (*msTime)(&r.Time), &ip, &action, &r.Score, &r.Threshold, &hits, &errs, &replyTxt)
	if errors.Is(err, sql.ErrNoRows) {
		return DecisionRecord{}, fmt.Errorf("decision %q: %w", ref, ErrNotFound)
	}
	if err != nil {
		return DecisionRecord{}, fmt.Errorf("decision %q: %w", ref, err)
	}
	r.Action = policy.Action(action)
	if ip != "" {
		if r.IP, err = netip.ParseAddr(ip); err != nil {
			return DecisionRecord{}, fmt.Errorf("decision %q: bad ip %q: %w", ref, ip, err)
		}
	}
	var (
		hj []hitJSON
		ej []listErrorJSON
		rj replyJSON
	)
	if err := json.Unmarshal([]byte(hits), &hj); err != nil {
		return DecisionRecord{}, fmt.Errorf("decision %q: hits: %w", ref, err)
	}
	if err := json.Unmarshal([]byte(errs), &ej); err != nil {
		return DecisionRecord{}, fmt.Errorf("decision %q: errors: %w", ref, err)
	}
	if err := json.Unmarshal([]byte(replyTxt), &rj); err != nil {
		return DecisionRecord{}, fmt.Errorf("decision %q: reply: %w", ref, err)
	}
	for _, h := range hj {
		code, _ := netip.ParseAddr(h.Code) // "" for file and store lists: the zero Addr
		r.Hits = append(r.Hits, policy.Hit{List: h.List, Category: h.Category, Code: code, Reason: h.Reason,
			Weight: h.Weight, DryRun: h.DryRun, Degraded: h.Degraded, Unproven: h.Unproven})
	}
	for _, e := range ej {
		r.Errors = append(r.Errors, policy.ListError{List: e.List, Err: e.Err, OnError: e.OnError})
	}
	r.Reply = policy.Reply{Code: rj.Code, Enhanced: rj.Enhanced, Text: rj.Text, Header: rj.Header, Ref: r.Ref}
	return r, nil
}

func encodeDecision(d policy.Decision) (hits, errs, reply []byte, err error) {
	hj := make([]hitJSON, 0, len(d.Verdict.Hits))
	for _, h := range d.Verdict.Hits {
		c := ""
		if h.Code.IsValid() {
			c = h.Code.String()
		}
		hj = append(hj, hitJSON{List: h.List, Category: h.Category, Code: c, Reason: h.Reason,
			Weight: h.Weight, DryRun: h.DryRun, Degraded: h.Degraded, Unproven: h.Unproven})
	}
	ej := make([]listErrorJSON, 0, len(d.Verdict.Errors))
	for _, e := range d.Verdict.Errors {
		ej = append(ej, listErrorJSON(e))
	}
	if hits, err = json.Marshal(hj); err != nil {
		return
	}
	if errs, err = json.Marshal(ej); err != nil {
		return
	}
	reply, err = json.Marshal(replyJSON{Code: d.Reply.Code, Enhanced: d.Reply.Enhanced, Text: d.Reply.Text, Header: d.Reply.Header})
	return
}

// decisionLinger is how long the writer waits for more decisions before
// committing a batch: long enough to share one fsync among the rejects of a
// busy server, short enough that a bounce's link finds its decision.
const decisionLinger = 100 * time.Millisecond

// writeDecisions is the one goroutine that writes decisions. It takes what
// is queued (up to maxBatch) in one transaction, so under load the cost of
// a commit's fsync is shared by many decisions.
func (s *Store) writeDecisions() {
	defer s.wg.Done()
	prune := time.NewTicker(s.opts.PruneInterval)
	defer prune.Stop()
	report := time.NewTicker(time.Minute)
	defer report.Stop()
	var (
		batch        = make([]policy.Decision, 0, maxBatch)
		reported     uint64
		sincePrune   int
		lastErrorLog time.Time
	)
	write := func() {
		if len(batch) == 0 {
			return
		}
		if err := s.insertDecisions(batch); err != nil {
			s.dropped.Add(uint64(len(batch)))
			if time.Since(lastErrorLog) >= time.Minute {
				lastErrorLog = time.Now()
				s.log.Error("recording decisions", "count", len(batch), "err", err)
			}
		} else {
			sincePrune += len(batch)
		}
		clear(batch) // drop references to verdict slices
		batch = batch[:0]
		if sincePrune >= max(int(s.decisionMaxRows.Load())/10, 1) {
			sincePrune = 0
			s.pruneDecisions()
		}
	}
	// drain writes everything queued now, in batches.
	drain := func() {
		for {
			select {
			case d := <-s.decisions:
				batch = append(batch, d)
				if len(batch) == maxBatch {
					write()
				}
			default:
				write()
				return
			}
		}
	}
	for {
		select {
		case d := <-s.decisions:
			batch = append(batch, d)
			// Wait a little for more: each commit costs an fsync, and
			// under load a reject every millisecond would otherwise mean
			// an fsync every millisecond.
			linger := time.NewTimer(decisionLinger)
		fill:
			for len(batch) < maxBatch {
				select {
				case d := <-s.decisions:
					batch = append(batch, d)
				case <-linger.C:
					break fill
				}
			}
			linger.Stop()
			write()
		case n := <-s.deferNotes:
			s.writeDeferrals(n)
		case ch := <-s.flushReq:
			drain()
			for {
				select {
				case n := <-s.deferNotes:
					s.writeDeferrals(n)
					continue
				default:
				}
				break
			}
			close(ch)
		case <-prune.C:
			s.pruneDecisions()
		case <-report.C:
			if n := s.dropped.Load(); n != reported {
				s.log.Warn("decisions dropped: the writer could not keep up or the database failed",
					"dropped", n-reported, "total", n)
				reported = n
			}
		case <-s.done:
			drain()
			return
		}
	}
}

func (s *Store) insertDecisions(batch []policy.Decision) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.tx(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, `
INSERT OR REPLACE INTO decisions (ref, at, ip, action, score, threshold, hits, errors, reply)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, d := range batch {
			hits, errs, reply, err := encodeDecision(d)
			if err != nil {
				return fmt.Errorf("encode decision %s: %w", d.Ref, err)
			}
			at := d.Time
			if at.IsZero() {
				at = s.now()
			}
			ip := ""
			if d.Verdict.IP.IsValid() {
				ip = d.Verdict.IP.String()
			}
			if _, err := st.ExecContext(ctx, d.Ref, millis(at), ip, string(d.Verdict.Action),
				d.Verdict.Score, d.Verdict.Threshold, string(hits), string(errs), string(reply)); err != nil {
				return fmt.Errorf("insert decision %s: %w", d.Ref, err)
			}
		}
		return nil
	})
}

func (s *Store) pruneDecisions() {
	if err := s.Prune(context.Background(), s.now()); err != nil {
		s.log.Warn("pruning old records", "err", err)
	}
}
