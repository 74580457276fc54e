package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// prometheusMade are the series Prometheus makes itself for every target.
var prometheusMade = []string{"up", "scrape_duration_seconds", "scrape_samples_scraped"}

// targetLabels are the labels Prometheus adds to every series of a target:
// its own, the service label deploy/compose/prometheus.yml sets, and those
// the Kubernetes scrape job of docs/operations.md copies from the pod.
var targetLabels = []string{model.JobLabel, model.InstanceLabel, "service", "namespace", "pod"}

// outcomes are the values of the outcome label natsbus produces.
var outcomes = []string{natsbus.OutcomeOK, natsbus.OutcomeError, natsbus.OutcomeUnavailable, natsbus.OutcomeCanceled, natsbus.OutcomeInternal}

// grafanaVariables are the Grafana variables the dashboard uses inside
// PromQL, with a value that parses in their place.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

var promql = parser.NewParser(parser.Options{})

// queried returns the metric names that expr selects.
func queried(expr string) ([]string, error) {
	e, err := promql.ParseExpr(grafanaVariables.Replace(expr))
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		names = append(names, name)
		return nil
	})
	return names, nil
}

// exposed returns the series names the registries' metrics make in
// Prometheus (a histogram's _bucket, _sum and _count, a summary's own
// name, _sum and _count), each with the label names its series carry
// there.
func exposed(t *testing.T, s *stack) map[string]map[string]bool {
	t.Helper()
	names := map[string]map[string]bool{}
	add := func(name string, extra []string, m *dto.Metric) {
		ls := names[name]
		if ls == nil {
			ls = map[string]bool{}
			for _, l := range targetLabels {
				ls[l] = true
			}
			names[name] = ls
		}
		for _, l := range extra {
			ls[l] = true
		}
		if m != nil {
			for _, lp := range m.GetLabel() {
				ls[lp.GetName()] = true
			}
		}
	}
	for _, n := range prometheusMade {
		add(n, nil, nil)
	}
	for svc, reg := range s.registries {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("%s: gather: %v", svc, err)
		}
		for _, mf := range mfs {
			n := mf.GetName()
			for _, m := range mf.GetMetric() {
				switch mf.GetType() {
				case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
					add(n+"_bucket", []string{model.BucketLabel}, m)
					add(n+"_sum", nil, m)
					add(n+"_count", nil, m)
				case dto.MetricType_SUMMARY:
					add(n, []string{model.QuantileLabel}, m)
					add(n+"_sum", nil, m)
					add(n+"_count", nil, m)
				default:
					add(n, nil, m)
				}
			}
		}
	}
	return names
}

// dashboardQueries returns every PromQL expression of the Grafana dashboard
// by panel title.
func dashboardQueries(t *testing.T) map[string][]string {
	t.Helper()
	b := readRepoFile(t, "deploy/grafana/communications.json")
	var dash struct {
		Panels []dashPanel `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	out := map[string][]string{}
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out[p.Title] = append(out[p.Title], tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	return out
}

type dashPanel struct {
	Title   string      `json:"title"`
	Panels  []dashPanel `json:"panels"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// alertQueries parses the alert rules as Prometheus does (expressions and
// templates checked) and returns each alert's expression.
func alertQueries(t *testing.T) map[string][]string {
	t.Helper()
	groups, errs := rulefmt.Parse(readRepoFile(t, "deploy/prometheus/alerts.yaml"), false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("alerts.yaml: %v", err)
	}
	if groups == nil {
		t.FailNow()
	}
	out := map[string][]string{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			out[r.Alert] = append(out[r.Alert], r.Expr)
		}
	}
	return out
}

func readRepoFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", filepath.FromSlash(path)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// unknownMetrics returns, for each query that selects a metric no service
// exposes, where it is and the metric's name; and the queries that do not
// parse.
func unknownMetrics(queries map[string][]string, exposed map[string]map[string]bool) []string {
	var out []string
	for _, where := range slices.Sorted(maps.Keys(queries)) {
		for _, q := range queries[where] {
			names, err := queried(q)
			if err != nil {
				out = append(out, fmt.Sprintf("%s: %q does not parse: %v", where, q, err))
				continue
			}
			if len(names) == 0 {
				out = append(out, fmt.Sprintf("%s: %q selects no metric", where, q))
			}
			for _, n := range names {
				if _, ok := exposed[n]; !ok {
					out = append(out, fmt.Sprintf("%s: %s is not exposed by any service", where, n))
				}
			}
		}
	}
	return out
}

// badLabels returns, for each query, the label names its matchers and
// by (...) groupings use that the metric they apply to does not carry,
// and the outcome values it matches that natsbus never produces. Queries
// that do not parse are unknownMetrics' to report.
func badLabels(queries map[string][]string, exposed map[string]map[string]bool) []string {
	var out []string
	for _, where := range slices.Sorted(maps.Keys(queries)) {
		for _, q := range queries[where] {
			e, err := promql.ParseExpr(grafanaVariables.Replace(q))
			if err != nil {
				continue
			}
			parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
				switch n := n.(type) {
				case *parser.VectorSelector:
					have, ok := exposed[selectorName(n)]
					if !ok {
						return nil // unknownMetrics reports it
					}
					for _, m := range n.LabelMatchers {
						if m.Name == model.MetricNameLabel {
							continue
						}
						if !have[m.Name] {
							out = append(out, fmt.Sprintf("%s: %s has no label %s (matcher %s)", where, selectorName(n), m.Name, m))
						}
						if m.Name == "outcome" && !slices.ContainsFunc(outcomes, m.Matches) {
							out = append(out, fmt.Sprintf("%s: matcher %s matches no outcome natsbus produces %v", where, m, outcomes))
						}
						if m.Name == "outcome" && (m.Type == labels.MatchEqual || m.Type == labels.MatchNotEqual) && !slices.Contains(outcomes, m.Value) {
							out = append(out, fmt.Sprintf("%s: matcher %s names an outcome natsbus does not produce %v", where, m, outcomes))
						}
					}
				case *parser.AggregateExpr:
					if n.Without {
						return nil
					}
					parser.Inspect(n.Expr, func(inner parser.Node, _ []parser.Node) error {
						vs, ok := inner.(*parser.VectorSelector)
						if !ok {
							return nil
						}
						have, ok := exposed[selectorName(vs)]
						if !ok {
							return nil
						}
						for _, l := range n.Grouping {
							if !have[l] {
								out = append(out, fmt.Sprintf("%s: by (%s) groups %s, which has no label %s", where, strings.Join(n.Grouping, ", "), selectorName(vs), l))
							}
						}
						return nil
					})
				}
				return nil
			})
		}
	}
	return out
}

// selectorName is the metric name a vector selector selects.
func selectorName(vs *parser.VectorSelector) string {
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
			return m.Value
		}
	}
	return vs.Name
}

// TestDashboardAndAlertMetricsExist: every metric the Grafana dashboard and
// the alert rules query is one the services expose after a little traffic
// (labelled metrics appear only once used).
func TestDashboardAndAlertMetricsExist(t *testing.T) {
	s := startStack(t)
	dash, alerts := dashboardQueries(t), alertQueries(t)
	if len(dash) < 10 || len(alerts) < 5 {
		t.Fatalf("found %d dashboard panels and %d alerts with queries; the files were not read as expected", len(dash), len(alerts))
	}

	// Traffic: two users on both gateways, sends, a failed send, a page of
	// history.
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[1], "bob")
	a, b := alice.dial(), bob.dial()
	for i := range 3 {
		id := fmt.Sprintf("m-%d", i)
		a.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "r" + id, ChatID: generalChat, ClientMsgID: id, Text: "hello"})
		b.waitEvent(isMessage(id), "message "+id+" at bob")
	}
	a.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "bad", ChatID: 999999, ClientMsgID: "x-1", Text: "nowhere"})
	a.waitEvent(isAnswerTo("bad"), "answer to the send to a missing chat")
	if err := do(context.Background(), http.MethodGet, s.gateways[1]+"/api/v1/chats/1/messages?limit=10", bob.token, nil, nil); err != nil {
		t.Fatal(err)
	}

	// The fanout latency histogram and the writer's lag are there once
	// observed and read.
	var missing []string
	testenv.EventuallyDescribe(t, 20*time.Second, func() bool {
		missing = unknownMetrics(map[string][]string{"dashboard": slices.Concat(slices.Collect(maps.Values(dash))...),
			"alerts": slices.Concat(slices.Collect(maps.Values(alerts))...)}, exposed(t, s))
		return len(missing) == 0
	}, func() string { return "metrics queried but not exposed:\n" + strings.Join(missing, "\n") })
	// Report by panel and alert name.
	for _, m := range unknownMetrics(dash, exposed(t, s)) {
		t.Errorf("dashboard panel %s", m)
	}
	for _, m := range unknownMetrics(alerts, exposed(t, s)) {
		t.Errorf("alert %s", m)
	}
	// Their label names and outcome values.
	for _, m := range badLabels(dash, exposed(t, s)) {
		t.Errorf("dashboard panel %s", m)
	}
	for _, m := range badLabels(alerts, exposed(t, s)) {
		t.Errorf("alert %s", m)
	}
}

// TestUnknownMetricsFound: the check reports a misspelled metric, one
// inside a function, a histogram series of a counter, and a query that
// does not parse; it accepts a histogram's series and Grafana's variables.
func TestUnknownMetricsFound(t *testing.T) {
	t.Parallel()
	have := map[string]map[string]bool{"gateway_frames_in_total": {}, "lat_seconds_bucket": {}, "up": {}}
	for _, tc := range []struct {
		query string
		bad   bool
	}{
		{"sum(rate(gateway_frames_in_total[$__rate_interval]))", false},
		{"histogram_quantile(0.99, sum by (le) (rate(lat_seconds_bucket[5m])))", false},
		{`up{job="gateway"} == 0`, false},
		{"sum(rate(gateway_frames_inn_total[5m]))", true},
		{"histogram_quantile(0.99, sum by (le) (rate(gateway_frames_in_total_bucket[5m])))", true},
		{`{__name__="gateway_frame_in_total"}`, true},
		{"sum(rate(gateway_frames_in_total[5m]", true},
	} {
		got := unknownMetrics(map[string][]string{"q": {tc.query}}, have)
		if (len(got) > 0) != tc.bad {
			t.Errorf("%q: reported %v, want reported: %v", tc.query, got, tc.bad)
		}
	}
}

// TestBadLabelsFound: the check reports a label the metric lacks in a
// matcher and in a by (...) grouping, and an outcome natsbus does not
// produce; it accepts target labels, le on a histogram's buckets and the
// outcomes natsbus produces.
func TestBadLabelsFound(t *testing.T) {
	t.Parallel()
	have := map[string]map[string]bool{
		"natsbus_request_duration_seconds_bucket": {"subject": true, "outcome": true, "le": true, "service": true, "instance": true},
		"natsbus_request_duration_seconds_count":  {"subject": true, "outcome": true, "service": true, "instance": true},
		"process_cpu_seconds_total":               {"service": true, "instance": true, "job": true},
	}
	for _, tc := range []struct {
		query string
		bad   bool
	}{
		{`histogram_quantile(0.99, sum by (le, subject) (rate(natsbus_request_duration_seconds_bucket{subject!~"auth\\..*"}[5m])))`, false},
		{`sum by (service, instance) (rate(process_cpu_seconds_total{service=~"gateway|chat"}[$__rate_interval]))`, false},
		{`sum by (subject) (rate(natsbus_request_duration_seconds_count{outcome="unavailable"}[5m]))`, false},
		{`sum by (subject) (rate(natsbus_request_duration_seconds_count{outcome!="ok"}[5m]))`, false},
		{`sum without (le) (natsbus_request_duration_seconds_bucket)`, false},
		{`sum by (subject) (rate(natsbus_request_duration_seconds_count{outcome="timeout"}[5m]))`, true},
		{`sum by (subject) (rate(natsbus_request_duration_seconds_count{outcome=~"timeout|lost"}[5m]))`, true},
		{`sum by (method) (rate(natsbus_request_duration_seconds_count[5m]))`, true},
		{`sum by (subject) (rate(process_cpu_seconds_total[5m]))`, true},
		{`process_cpu_seconds_total{subject="chat.send"}`, true},
		{`histogram_quantile(0.5, sum by (le) (rate(natsbus_request_duration_seconds_count[5m])))`, true},
	} {
		got := badLabels(map[string][]string{"q": {tc.query}}, have)
		if (len(got) > 0) != tc.bad {
			t.Errorf("%q: reported %v, want reported: %v", tc.query, got, tc.bad)
		}
	}
}
