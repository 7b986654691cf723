package metrics

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/blmilter/blmilter/policy"
	"github.com/blmilter/blmilter/store"
	"github.com/blmilter/blmilter/zone"
)

// alertExprs returns the expr of every rule in the alert rules file, in
// the file's shape: "expr: ..." on one line, or "expr: |" and the lines
// indented below it.
func alertExprs(t *testing.T, text string) map[string]string {
	t.Helper()
	exprs := map[string]string{}
	alert := ""
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if name, ok := strings.CutPrefix(l, "- alert: "); ok {
			alert = name
			continue
		}
		e, ok := strings.CutPrefix(l, "expr:")
		if !ok {
			continue
		}
		if alert == "" || exprs[alert] != "" {
			t.Fatalf("line %d: an expr outside an alert, or a second one in %s", i+1, alert)
		}
		e = strings.TrimSpace(e)
		if e == "|" {
			indent := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
			var block []string
			for i+1 < len(lines) {
				next := lines[i+1]
				if strings.TrimSpace(next) != "" && len(next)-len(strings.TrimLeft(next, " ")) <= indent {
					break
				}
				block = append(block, strings.TrimSpace(next))
				i++
			}
			e = strings.Join(block, " ")
		}
		exprs[alert] = e
	}
	return exprs
}

// Every series an alert rule asks for is one blmilter exports, with the
// label values it asks for: a rule on a misspelt name or value is valid
// PromQL that never fires.
func TestAlertRulesAskForExportedSeries(t *testing.T) {
	text, err := os.ReadFile("../contrib/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	exprs := alertExprs(t, string(text))
	if len(exprs) < 10 {
		t.Fatalf("%d rules read: %v", len(exprs), exprs)
	}

	// A daemon that did a little of everything, so that every labelled
	// series exists.
	m := New("test")
	m.SetZoneStats(func() zone.Stats { return zone.Stats{} })
	m.SetListState("BL", policy.ListHealthy)
	m.SetListHealthy("BL", true)
	m.ObserveAnswer("BL", "error", policy.ListHealthy, time.Millisecond)
	m.ObserveCheck(policy.Verdict{Action: policy.ActionReject, Threshold: 3, Hits: []policy.Hit{{List: "BL", Weight: 3, ListWeight: 3}}})
	m.TrapHit(store.TrapOutcome{Started: true}, true)
	m.DelistProof(store.ProofResult{Removed: true})
	m.PolicydRequest("REJECT")
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// Each series name, with the label pairs it is exported with.
	series := map[string][]map[string]string{}
	for _, f := range families {
		names := []string{f.GetName()}
		if f.GetType() == dto.MetricType_HISTOGRAM {
			names = []string{f.GetName() + "_bucket", f.GetName() + "_sum", f.GetName() + "_count"}
		}
		for _, mt := range f.GetMetric() {
			for _, n := range names {
				series[n] = append(series[n], labelMap(mt))
			}
		}
	}

	selector := regexp.MustCompile(`\b(blmilter_[a-z_]+)(\{[^}]*\})?`)
	matcher := regexp.MustCompile(`(\w+)\s*=\s*"([^"]*)"`)
	for alert, expr := range exprs {
		sels := selector.FindAllStringSubmatch(expr, -1)
		if len(sels) == 0 {
			t.Errorf("%s asks for no blmilter series: %s", alert, expr)
		}
		for _, sel := range sels {
			name, matchers := sel[1], sel[2]
			exported, ok := series[name]
			if !ok {
				t.Errorf("%s asks for %s, which blmilter does not export", alert, name)
				continue
			}
			for _, mm := range matcher.FindAllStringSubmatch(matchers, -1) {
				found := false
				for _, labels := range exported {
					found = found || labels[mm[1]] == mm[2]
				}
				if !found {
					t.Errorf("%s asks for %s{%s=%q}, which blmilter does not export", alert, name, mm[1], mm[2])
				}
			}
		}
	}
}
