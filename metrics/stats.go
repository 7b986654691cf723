package metrics

import (
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
)

// ListStats is what one list did since start, for `blmilter stats`.
type ListStats struct {
	List        string  `json:"list"`
	Healthy     *bool   `json:"healthy,omitempty"` // nil for lists that are not probed
	Listed      float64 `json:"listed"`
	Clean       float64 `json:"clean"`
	Errors      float64 `json:"errors"`
	Degraded    float64 `json:"degraded"`
	Unproven    float64 `json:"unproven"`           // answers while the list was not yet checked
	WouldReject float64 `json:"would_reject"`       // checks this list would have refused on its own weight
	Alone       float64 `json:"would_reject_alone"` // ... that no other block list listed
	Overridden  float64 `json:"allow_overrides"`    // (allow lists) checks taken below the threshold
}

// Stats is the summary served at /admin/api/stats.
type Stats struct {
	Checks map[string]float64 `json:"checks"` // by action
	Lists  []ListStats        `json:"lists"`
}

// Stats reads the counters back from the registry, so the summary and
// /metrics never disagree.
func (m *Metrics) Stats() Stats {
	st := Stats{Checks: map[string]float64{}}
	families, err := m.Registry.Gather()
	if err != nil {
		return st
	}
	lists := map[string]*ListStats{}
	list := func(name string) *ListStats {
		if l, ok := lists[name]; ok {
			return l
		}
		l := &ListStats{List: name}
		lists[name] = l
		return l
	}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			labels := labelMap(mt)
			v := mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
			switch f.GetName() {
			case "blmilter_checks_total":
				st.Checks[labels["action"]] = v
			case "blmilter_list_results_total":
				l := list(labels["list"])
				switch labels["result"] {
				case "listed":
					l.Listed = v
				case "clean":
					l.Clean = v
				case "error":
					l.Errors = v
				case "degraded":
					l.Degraded = v
				case "unproven":
					l.Unproven = v
				}
			case "blmilter_list_would_reject_total":
				list(labels["list"]).WouldReject = v
			case "blmilter_list_would_reject_alone_total":
				list(labels["list"]).Alone = v
			case "blmilter_allow_overrides_total":
				list(labels["list"]).Overridden = v
			case "blmilter_list_healthy":
				h := v == 1
				list(labels["list"]).Healthy = &h
			}
		}
	}
	for _, l := range lists {
		st.Lists = append(st.Lists, *l)
	}
	slices.SortFunc(st.Lists, func(a, b ListStats) int { return strings.Compare(a.List, b.List) })
	return st
}

func labelMap(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}
