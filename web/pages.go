package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// page is what every template gets; Body is the page's own data.
type page struct {
	Title  string
	Host   string // the service's host name, from public_url
	Lookup string // the value of the lookup form's field
	Body   any
}

var funcs = template.FuncMap{
	"time": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			return fmtTime(v)
		case *time.Time:
			if v == nil {
				return ""
			}
			return fmtTime(*v)
		}
		return ""
	},
	"score": func(f any) string {
		switch v := f.(type) {
		case float64:
			return scoreText(v)
		case *float64:
			if v != nil {
				return scoreText(*v)
			}
		}
		return ""
	},
	"result": resultWords,
	"day":    daySentence,
	"event":  eventSentence,
}

// parsePages parses each page together with the layout, so every page
// defines its own "content".
func parsePages() (map[string]*template.Template, error) {
	layout, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/index.html")
	if err != nil {
		return nil, fmt.Errorf("web: parse layout: %w", err)
	}
	pages := map[string]*template.Template{"index": layout}
	for _, name := range []string{"error", "status", "help", "category", "message", "confirm", "request"} {
		t, err := template.Must(layout.Clone()).ParseFS(templateFS, "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("web: parse %s page: %w", name, err)
		}
		// The lookup form is defined in index.html next to the index
		// content; each page's own "content" replaces the index's.
		pages[name] = t
	}
	return pages, nil
}

func (s *Server) host() string {
	u, err := url.Parse(s.config().PublicURL)
	if err != nil || u.Host == "" {
		return "this site"
	}
	return u.Hostname()
}

// render writes a page. It renders to a buffer first, so a template error
// becomes a clean 500 rather than half a page.
func (s *Server) render(w http.ResponseWriter, status int, name string, p page) {
	if p.Host == "" {
		p.Host = s.host()
	}
	var buf bytes.Buffer
	if err := s.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		s.log.Error("web: render page", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

type errorBody struct {
	Message string
	Input   string
	Form    bool
}

func (s *Server) errorPage(w http.ResponseWriter, r *http.Request, status int, title, msg string) {
	s.render(w, status, "error", page{Title: title, Body: errorBody{Message: msg}})
}

type messageBody struct {
	Paragraphs []string
	IP         string
	Link       string // a removal request's status page
}

func (s *Server) message(w http.ResponseWriter, status int, title, ip string, paragraphs ...string) {
	s.render(w, status, "message", page{Title: title, Body: messageBody{Paragraphs: paragraphs, IP: ip}})
}

// messageLink is message with a link to a removal request's status page.
func (s *Server) messageLink(w http.ResponseWriter, status int, title, ip, link string, paragraphs ...string) {
	s.render(w, status, "message", page{Title: title, Body: messageBody{Paragraphs: paragraphs, IP: ip, Link: link}})
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, "index", page{Title: "Is an IP address listed?"})
}

// handleIPForm turns the lookup form's query into the address's own page.
func (s *Server) handleIPForm(w http.ResponseWriter, r *http.Request) {
	in := r.URL.Query().Get("ip")
	ip, err := parseIP(in)
	if err != nil {
		s.badIP(w, in, err)
		return
	}
	http.Redirect(w, r, "/ip/"+url.PathEscape(ip.String()), http.StatusSeeOther)
}

func (s *Server) badIP(w http.ResponseWriter, in string, err error) {
	if len(in) > 80 {
		in = in[:80] + "…"
	}
	s.render(w, http.StatusBadRequest, "error", page{
		Title:  "Not an IP address",
		Lookup: "",
		Body:   errorBody{Message: "That is not an address we can look up: " + err.Error() + ".", Input: in, Form: true},
	})
}

type statusBody struct {
	Report       *Report
	SiteOnly     bool // listed by the site's own list alone, which refuses no mail
	Unchecked    bool // some list could not be checked
	VerdictWords string
	PTRAdvice    string
	CSRF         string
	Quota        int
	Window       string
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	in := r.PathValue("ip")
	ip, err := parseIP(in)
	if err != nil {
		s.badIP(w, in, err)
		return
	}
	rep, err := s.report(r.Context(), ip, r.URL.Query().Get("ref"))
	if err != nil {
		s.log.Error("web: status page", "ip", ip, "err", err)
		s.errorPage(w, r, http.StatusServiceUnavailable, "Temporarily unavailable", "The lookup service cannot check addresses right now. Try again in a minute.")
		return
	}
	cfg := s.config()
	body := statusBody{
		Report:       rep,
		VerdictWords: verdictWords(rep),
		SiteOnly:     !rep.Verdict.Refused && onlySiteListing(rep),
		PTRAdvice:    ptrAdvice,
		Quota:        cfg.RemovalQuota,
		Window:       windowWords(cfg.RemovalWindow),
	}
	for _, l := range rep.Lists {
		body.Unchecked = body.Unchecked || l.Result == ResultError || l.Result == ResultDegraded || l.Result == ResultUnproven
	}
	if rep.SiteListing != nil {
		body.CSRF = s.csrf.token("removal", rep.IP)
	}
	s.render(w, http.StatusOK, "status", page{Title: "IP " + rep.IP, Lookup: rep.IP, Body: body})
}

func (s *Server) handleAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Access-Control-Allow-Origin", "*")
	in := r.PathValue("ip")
	ip, err := parseIP(in)
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, "invalid_ip", err.Error())
		return
	}
	rep, err := s.report(r.Context(), ip, r.URL.Query().Get("ref"))
	if err != nil {
		s.log.Error("web: api", "ip", ip, "err", err)
		writeJSONError(w, http.StatusServiceUnavailable, "unavailable", "the lookup service cannot check addresses right now")
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

type helpBody struct {
	Categories []category
	Category   category
}

func (s *Server) handleHelp(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, "help", page{Title: "Help", Body: helpBody{Categories: categories}})
}

func (s *Server) handleHelpCategory(w http.ResponseWriter, r *http.Request) {
	c, ok := categoryByKey(r.PathValue("category"))
	if !ok {
		s.errorPage(w, r, http.StatusNotFound, "No such category",
			"There is no help page for this category. The categories are zombie, open-proxy, spam-source, dynamic and local.")
		return
	}
	s.render(w, http.StatusOK, "category", page{Title: c.Title, Body: helpBody{Categories: categories, Category: c}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeJSONError writes {"error": code, "message": text}; code is stable.
func writeJSONError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"error": code, "message": msg})
}

// quota is the self-service removal quota; 0 turns self-service off.
func windowWords(d time.Duration) string {
	days := int(d.Hours() / 24)
	switch {
	case days == 1:
		return "1 day"
	case days > 1:
		return fmt.Sprintf("%d days", days)
	}
	return strings.TrimSuffix(d.String(), "0s")
}
