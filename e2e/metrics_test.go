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

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// prometheusMade are the series Prometheus makes itself for every target.
var prometheusMade = map[string]bool{"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true}

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
// Prometheus: a histogram's _bucket, _sum and _count, a summary's own
// name, _sum and _count.
func exposed(t *testing.T, s *stack) map[string]bool {
	t.Helper()
	names := maps.Clone(prometheusMade)
	for svc, reg := range s.registries {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("%s: gather: %v", svc, err)
		}
		for _, mf := range mfs {
			n := mf.GetName()
			switch mf.GetType() {
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
			case dto.MetricType_SUMMARY:
				names[n], names[n+"_sum"], names[n+"_count"] = true, true, true
			default:
				names[n] = true
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
func unknownMetrics(queries map[string][]string, exposed map[string]bool) []string {
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
				if !exposed[n] {
					out = append(out, fmt.Sprintf("%s: %s is not exposed by any service", where, n))
				}
			}
		}
	}
	return out
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
}

// TestUnknownMetricsFound: the check reports a misspelled metric, one
// inside a function, a histogram series of a counter, and a query that
// does not parse; it accepts a histogram's series and Grafana's variables.
func TestUnknownMetricsFound(t *testing.T) {
	t.Parallel()
	have := map[string]bool{"gateway_frames_in_total": true, "lat_seconds_bucket": true, "up": true}
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
