package web

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
)

// The admin API is JSON under /admin/api/, for the operator's scripts. It
// is off (404, as if it did not exist) unless [web] admin_token is set and
// a store is open; a request must carry "Authorization: Bearer <token>".
func (s *Server) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/api/listings", s.admin(s.adminListings))
	mux.HandleFunc("POST /admin/api/listings", s.admin(s.adminAddListing))
	mux.HandleFunc("DELETE /admin/api/listings/{prefix...}", s.admin(s.adminRemoveListing))
	mux.HandleFunc("GET /admin/api/requests", s.admin(s.adminRequests))
	mux.HandleFunc("POST /admin/api/requests/{id}/approve", s.admin(s.adminDecide(true)))
	mux.HandleFunc("POST /admin/api/requests/{id}/deny", s.admin(s.adminDecide(false)))
	mux.HandleFunc("GET /admin/api/stats", s.adminToken(s.adminStats))
}

// admin guards the endpoints that work on the store.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	guarded := s.adminToken(h)
	return func(w http.ResponseWriter, r *http.Request) {
		if s.store == nil {
			writeJSONError(w, http.StatusNotFound, "not_found", "no such endpoint")
			return
		}
		guarded(w, r)
	}
}

// adminStats serves what Options.Stats reports: list health and what each
// list would have refused (read by `blmilter stats`).
func (s *Server) adminStats(w http.ResponseWriter, r *http.Request) {
	if s.stats == nil {
		writeJSONError(w, http.StatusNotFound, "not_found", "no statistics in this process")
		return
	}
	writeJSON(w, http.StatusOK, s.stats())
}

// Admin-token failures per client (an IPv4 address or an IPv6 /64): a few
// in a row are allowed (a mistyped token), then one a minute; beyond that
// the client gets 429 without its token being looked at.
const (
	authFailBurst = 5
	authFailEvery = time.Minute
)

// adminToken checks the bearer token; without a configured token the
// admin API does not exist. Failures are logged (at most a few lines per
// client and minute) and limited per client.
func (s *Server) adminToken(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		want := s.config().AdminToken
		if want == "" {
			writeJSONError(w, http.StatusNotFound, "not_found", "no such endpoint")
			return
		}
		client := remoteIP(r)
		if s.authFails.exhausted(client) {
			s.logAuthFailure(r, client, true)
			w.Header().Set("Retry-After", strconv.Itoa(int(authFailEvery/time.Second)))
			writeJSONError(w, http.StatusTooManyRequests, "rate_limited", "too many failed authentications from your address; wait a minute")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		// Compare digests so neither the token's content nor its length
		// shows in the time taken.
		g, t := sha256.Sum256([]byte(strings.TrimSpace(got))), sha256.Sum256([]byte(want))
		if !ok || subtle.ConstantTimeCompare(g[:], t[:]) != 1 {
			s.authFails.allow(client)
			s.logAuthFailure(r, client, false)
			w.Header().Set("WWW-Authenticate", `Bearer realm="blmilter admin"`)
			writeJSONError(w, http.StatusUnauthorized, "unauthorized", "a valid bearer token is required")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		h(w, r)
	}
}

// logAuthFailure logs a failed admin authentication, unless this client
// or all clients together have been logged often enough this minute: a
// flood of guesses must not flood the log.
func (s *Server) logAuthFailure(r *http.Request, client netip.Addr, limited bool) {
	if !s.authLog.allow(client) || !s.authLogAll.Allow() {
		return
	}
	s.log.Warn("web: admin API authentication failed", "client", client.String(), "method", r.Method,
		"path", r.URL.Path, "rate_limited", limited)
}

// listingJSON is a listing as the admin API shows it.
type listingJSON struct {
	ID        int64      `json:"id"`
	Prefix    string     `json:"prefix"`
	Category  string     `json:"category"`
	Reason    string     `json:"reason"`
	Source    string     `json:"source"`
	ListedAt  time.Time  `json:"listed_at"`
	ExpiresAt *time.Time `json:"expires_at"`
	Removals  int        `json:"removals"`
}

func toListingJSON(l store.Listing) listingJSON {
	return listingJSON{ID: l.ID, Prefix: l.Prefix.String(), Category: l.Category, Reason: l.Reason,
		Source: l.Source, ListedAt: l.ListedAt.UTC(), ExpiresAt: l.ExpiresAt, Removals: l.Removals}
}

func (s *Server) adminListings(w http.ResponseWriter, r *http.Request) {
	ls, err := s.store.Listings(r.Context())
	if err != nil {
		s.adminFailed(w, "list listings", err)
		return
	}
	out := make([]listingJSON, 0, len(ls))
	for _, l := range ls {
		out = append(out, toListingJSON(l))
	}
	writeJSON(w, http.StatusOK, out)
}

// adminAddListing takes {"prefix": "192.0.2.7" or "192.0.2.0/24",
// "category": "spam-source", "reason": "...", "expires_in": "720h" or
// "expires_at": RFC 3339}.
func (s *Server) adminAddListing(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Prefix    string     `json:"prefix"`
		Category  string     `json:"category"`
		Reason    string     `json:"reason"`
		ExpiresIn string     `json:"expires_in"`
		ExpiresAt *time.Time `json:"expires_at"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		writeJSONError(w, http.StatusBadRequest, "bad_request", "body must be a JSON object: "+err.Error())
		return
	}
	p, err := store.ParsePrefix(in.Prefix)
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if in.Category == "" {
		in.Category = "local"
	}
	if !policy.IsCategory(in.Category) {
		writeJSONError(w, http.StatusBadRequest, "bad_request",
			fmt.Sprintf("category must be one word of a-z, 0-9 and '-' (at most %d characters), such as \"spam-source\"", policy.MaxCategoryLen))
		return
	}
	if in.ExpiresAt != nil && in.ExpiresIn != "" {
		writeJSONError(w, http.StatusBadRequest, "bad_request", "give expires_at or expires_in, not both")
		return
	}
	l := store.Listing{Prefix: p, Category: in.Category, Reason: in.Reason, Source: "admin-api", ExpiresAt: in.ExpiresAt}
	if in.ExpiresIn != "" {
		d, err := time.ParseDuration(in.ExpiresIn)
		if err != nil || d <= 0 {
			writeJSONError(w, http.StatusBadRequest, "bad_request", "expires_in must be a positive duration such as \"720h\"")
			return
		}
		t := s.now().Add(d)
		l.ExpiresAt = &t
	}
	if l.ExpiresAt != nil {
		if err := store.CheckTime("expires_at", *l.ExpiresAt); err != nil {
			writeJSONError(w, http.StatusBadRequest, "bad_request", "expires_at must be in the years 2000 to 9999")
			return
		}
		if !l.ExpiresAt.After(s.now()) {
			writeJSONError(w, http.StatusBadRequest, "bad_request", "expires_at is in the past: the listing would never apply")
			return
		}
	}
	added, err := s.store.AddListing(r.Context(), l)
	if err != nil {
		if errors.Is(err, store.ErrInvalid) {
			writeJSONError(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
		s.adminFailed(w, "add listing", err)
		return
	}
	s.log.Info("web: admin added listing", "prefix", added.Prefix, "category", added.Category)
	writeJSON(w, http.StatusCreated, toListingJSON(added))
}

func (s *Server) adminRemoveListing(w http.ResponseWriter, r *http.Request) {
	p, err := store.ParsePrefix(r.PathValue("prefix"))
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if err := s.store.RemoveListing(r.Context(), p, "admin-api"); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeJSONError(w, http.StatusNotFound, "not_found", "no listing for "+p.String())
			return
		}
		s.adminFailed(w, "remove listing", err)
		return
	}
	s.log.Info("web: admin removed listing", "prefix", p)
	writeJSON(w, http.StatusOK, map[string]string{"removed": p.String()})
}

// requestJSON is a removal request as the admin API shows it; unlike the
// public pages, it includes the requester's address.
type requestJSON struct {
	ID        int64      `json:"id"`
	IP        string     `json:"ip"`
	Email     string     `json:"email"`
	Reason    string     `json:"reason"`
	Status    string     `json:"status"`
	Created   time.Time  `json:"created"`
	Verified  *time.Time `json:"verified"`
	Decided   *time.Time `json:"decided"`
	DecidedBy string     `json:"decided_by,omitempty"`
}

func (s *Server) adminRequests(w http.ResponseWriter, r *http.Request) {
	status := r.URL.Query().Get("status")
	switch status {
	case "", store.StatusPending, store.StatusConfirmed, store.StatusWaiting, store.StatusApproved, store.StatusDenied, store.StatusRemoved, store.StatusExpired:
	default:
		writeJSONError(w, http.StatusBadRequest, "bad_request", "status must be one of pending, confirmed, waiting, approved, denied, removed, expired")
		return
	}
	rs, err := s.store.Requests(r.Context(), status)
	if err != nil {
		if errors.Is(err, store.ErrInvalid) {
			writeJSONError(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
		s.adminFailed(w, "list requests", err)
		return
	}
	out := make([]requestJSON, 0, len(rs))
	for _, q := range rs {
		out = append(out, requestJSON{ID: q.ID, IP: q.IP.String(), Email: q.Email, Reason: q.Reason, Status: q.Status,
			Created: q.Created.UTC(), Verified: q.Verified, Decided: q.Decided, DecidedBy: q.DecidedBy})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) adminDecide(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil || id <= 0 {
			writeJSONError(w, http.StatusBadRequest, "bad_request", "the request id must be a positive number")
			return
		}
		verb := "denied"
		if approve {
			verb = "approved"
			err = s.store.ApproveRequest(r.Context(), id, "admin-api")
		} else {
			err = s.store.DenyRequest(r.Context(), id, "admin-api")
		}
		switch {
		case errors.Is(err, store.ErrNotFound):
			writeJSONError(w, http.StatusNotFound, "not_found", "no such request")
		case errors.Is(err, store.ErrDecided):
			writeJSONError(w, http.StatusConflict, "already_decided", "the request was already decided")
		case err != nil:
			s.adminFailed(w, verb, err)
		default:
			s.log.Info("web: admin decided request", "id", id, "decision", verb)
			s.notifyNow()
			writeJSON(w, http.StatusOK, map[string]any{"id": id, "status": verb})
		}
	}
}

func (s *Server) adminFailed(w http.ResponseWriter, what string, err error) {
	s.log.Error("web: admin api", "op", what, "err", err)
	writeJSONError(w, http.StatusInternalServerError, "internal", what+" failed")
}
