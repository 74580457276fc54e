package deploytest

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/prometheus/common/model"
	promconfig "github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery"
	// The kubernetes_sd_configs of the scrape job docs/operations.md gives.
	_ "github.com/prometheus/prometheus/discovery/kubernetes"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/util/strutil"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// observability is the compose profile of the observability stack, and
// observabilityServices the services only it starts.
const observability = "observability"

var observabilityServices = []string{"otel-collector", "jaeger", "prometheus", "grafana"}

// collectorEndpoint is the OTLP endpoint the compose file's header tells
// operators to pass in OTLP_ENDPOINT.
const collectorEndpoint = "http://otel-collector:4318"

// loadProfile loads docker-compose.yml with the observability profile on
// and OTLP_ENDPOINT set as documented.
func loadProfile(t *testing.T) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithProfiles([]string{observability}),
		cli.WithEnv([]string{"OTLP_ENDPOINT=" + collectorEndpoint}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("load docker-compose.yml with profile %s: %v", observability, err)
	}
	return p
}

// exposes reports whether compose service sc listens on port for the
// other containers (expose or ports).
func exposes(sc types.ServiceConfig, port int) bool {
	if slices.Contains(sc.Expose, strconv.Itoa(port)) {
		return true
	}
	return slices.ContainsFunc(sc.Ports, func(pc types.ServicePortConfig) bool { return int(pc.Target) == port })
}

// hostPort splits a host:port and checks that host is a compose service of
// p exposing port.
func checkHostPort(t *testing.T, p *types.Project, where, hostport string) {
	t.Helper()
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Errorf("%s: %q: %v", where, hostport, err)
		return
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Errorf("%s: %q: port: %v", where, hostport, err)
		return
	}
	sc, ok := p.Services[host]
	if !ok {
		t.Errorf("%s: %s is no compose service", where, host)
		return
	}
	if !exposes(sc, n) {
		t.Errorf("%s: compose %s does not expose port %d", where, host, n)
	}
}

// mounted returns the repository file mounted at target in sc, checking
// that it exists in the repository.
func mounted(t *testing.T, sc types.ServiceConfig, target string) string {
	t.Helper()
	for _, v := range sc.Volumes {
		if v.Target == target {
			return v.Source
		}
	}
	t.Fatalf("compose %s: nothing mounted at %s", sc.Name, target)
	return ""
}

// TestComposeObservabilityProfile: the observability services exist only
// in their profile, mount files of the repository read-only, publish
// distinct host ports, and our services take their OTLP endpoint from
// OTLP_ENDPOINT, which the documented value points at the collector.
func TestComposeObservabilityProfile(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	plain := loadCompose(t)
	p := loadProfile(t)
	for _, name := range observabilityServices {
		if _, ok := plain.Services[name]; ok {
			t.Errorf("compose %s: runs without the %s profile", name, observability)
		}
		sc, ok := p.Services[name]
		if !ok {
			t.Errorf("compose: no service %s in the %s profile", name, observability)
			continue
		}
		if !slices.Equal(sc.Profiles, []string{observability}) {
			t.Errorf("compose %s: profiles %v, want [%s]", name, sc.Profiles, observability)
		}
		for _, v := range sc.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			rel, err := filepath.Rel(root, v.Source)
			if err != nil || strings.HasPrefix(rel, "..") {
				t.Errorf("compose %s: mounts %s, outside the repository", name, v.Source)
				continue
			}
			if fi, err := os.Stat(v.Source); err != nil || fi.IsDir() {
				t.Errorf("compose %s: mounts %s, which is not a file of the repository (%v)", name, rel, err)
			}
			if !v.ReadOnly {
				t.Errorf("compose %s: mounts %s writable", name, rel)
			}
		}
	}
	for name := range plain.Services {
		if slices.Contains(observabilityServices, name) {
			continue
		}
		if len(p.Services[name].Profiles) > 0 {
			t.Errorf("compose %s: in profiles %v; only the observability services are", name, p.Services[name].Profiles)
		}
	}

	published := map[string]string{}
	for name, sc := range p.Services {
		for _, pc := range sc.Ports {
			if other, ok := published[pc.Published]; ok {
				t.Errorf("compose: %s and %s both publish host port %s", name, other, pc.Published)
			}
			published[pc.Published] = name
		}
	}
	for name, want := range map[string]uint32{"jaeger": 16686, "prometheus": 9090, "grafana": 3000} {
		if !slices.ContainsFunc(p.Services[name].Ports, func(pc types.ServicePortConfig) bool { return pc.Target == want }) {
			t.Errorf("compose %s: does not publish its UI port %d", name, want)
		}
	}
	// The UIs have no or a default password: reachable from this host only.
	for _, name := range observabilityServices {
		for _, pc := range p.Services[name].Ports {
			if pc.HostIP != "127.0.0.1" {
				t.Errorf("compose %s: publishes port %d on %q, want 127.0.0.1 only", name, pc.Target, pc.HostIP)
			}
		}
	}

	// Our services: the endpoint comes from OTLP_ENDPOINT, empty by default.
	for name, svc := range ours(t, p) {
		key := svc.EnvPrefix + "OTLP_ENDPOINT"
		if got := composeEnv(t, p.Services[name])[key]; got != collectorEndpoint {
			t.Errorf("compose %s: %s=%q with OTLP_ENDPOINT=%s, want that value", name, key, got, collectorEndpoint)
		}
		if got, ok := composeEnv(t, plain.Services[name])[key]; !ok || got != "" {
			t.Errorf("compose %s: %s=%q (set: %v) without OTLP_ENDPOINT, want it set and empty", name, key, got, ok)
		}
	}
	u, err := url.Parse(collectorEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	checkHostPort(t, p, "OTLP_ENDPOINT", u.Host)
}

// collectorConfig is the part of the OpenTelemetry collector's
// configuration the test reads.
type collectorConfig struct {
	Receivers  map[string]map[string]any `json:"receivers"`
	Processors map[string]map[string]any `json:"processors"`
	Exporters  map[string]map[string]any `json:"exporters"`
	Extensions map[string]map[string]any `json:"extensions"`
	Service    struct {
		Extensions []string `json:"extensions"`
		Pipelines  map[string]struct {
			Receivers  []string `json:"receivers"`
			Processors []string `json:"processors"`
			Exporters  []string `json:"exporters"`
		} `json:"pipelines"`
	} `json:"service"`
}

// TestComposeCollector: the collector's configuration parses, receives
// OTLP/HTTP on the port services are given, builds a traces pipeline of
// components it defines, and exports to compose services on ports they
// expose.
func TestComposeCollector(t *testing.T) {
	t.Parallel()
	p := loadProfile(t)
	sc := p.Services["otel-collector"]
	i := slices.IndexFunc(sc.Command, func(a string) bool { return strings.HasPrefix(a, "--config=") })
	if i < 0 {
		t.Fatalf("compose otel-collector: command %v has no --config=", sc.Command)
	}
	file := mounted(t, sc, strings.TrimPrefix(sc.Command[i], "--config="))
	var cfg collectorConfig
	if err := yaml.UnmarshalStrict(readFile(t, file), &cfg, yaml.DisallowUnknownFields); err != nil {
		t.Fatalf("%s: %v", file, err)
	}

	otlp, ok := cfg.Receivers["otlp"]
	if !ok {
		t.Fatal("collector: no otlp receiver")
	}
	var http struct {
		Protocols struct {
			HTTP struct {
				Endpoint string `json:"endpoint"`
			} `json:"http"`
		} `json:"protocols"`
	}
	b, _ := yaml.Marshal(otlp)
	if err := yaml.Unmarshal(b, &http); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(collectorEndpoint)
	if _, port, _ := net.SplitHostPort(http.Protocols.HTTP.Endpoint); port != u.Port() {
		t.Errorf("collector: OTLP/HTTP receiver on %q, services send to port %s", http.Protocols.HTTP.Endpoint, u.Port())
	}

	traces, ok := cfg.Service.Pipelines["traces"]
	if !ok {
		t.Fatal("collector: no traces pipeline")
	}
	check := func(kind string, names []string, defined func(string) bool) {
		if len(names) == 0 && (kind == "receiver" || kind == "exporter") {
			t.Errorf("collector: traces pipeline has no %s", kind)
		}
		for _, n := range names {
			if !defined(n) {
				t.Errorf("collector: traces pipeline uses %s %s, which is not defined", kind, n)
			}
		}
	}
	check("receiver", traces.Receivers, func(n string) bool { _, ok := cfg.Receivers[n]; return ok })
	check("processor", traces.Processors, func(n string) bool { _, ok := cfg.Processors[n]; return ok })
	check("exporter", traces.Exporters, func(n string) bool { _, ok := cfg.Exporters[n]; return ok })
	check("extension", cfg.Service.Extensions, func(n string) bool { _, ok := cfg.Extensions[n]; return ok })
	for _, n := range traces.Exporters {
		ep, _ := cfg.Exporters[n]["endpoint"].(string)
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			ep = u.Host
		}
		checkHostPort(t, p, "collector exporter "+n, ep)
	}
}

// TestComposePrometheus: Prometheus's configuration loads as Prometheus
// loads it, scrapes every one of our compose services on its debug port
// (and nothing else), and its rule files are mounted and parse.
func TestComposePrometheus(t *testing.T) {
	t.Parallel()
	p := loadProfile(t)
	sc := p.Services["prometheus"]
	i := slices.IndexFunc(sc.Command, func(a string) bool { return strings.HasPrefix(a, "--config.file=") })
	if i < 0 {
		t.Fatalf("compose prometheus: command %v has no --config.file=", sc.Command)
	}
	file := mounted(t, sc, strings.TrimPrefix(sc.Command[i], "--config.file="))
	cfg, err := promconfig.LoadFile(file, false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}

	// Our services' debug ports, by compose service.
	want := map[string]string{}
	for name, svc := range ours(t, p) {
		st, err := svc.Load(composeEnv(t, p.Services[name]))
		if err != nil {
			continue // reported by TestComposeEnvironment
		}
		port, err := Port(st.DebugAddr)
		if err != nil {
			t.Errorf("compose %s: %v", name, err)
			continue
		}
		want[name] = net.JoinHostPort(name, strconv.Itoa(port))
	}
	scraped := map[string]bool{}
	for _, job := range cfg.ScrapeConfigs {
		if job.MetricsPath != "/metrics" {
			t.Errorf("prometheus job %s: path %s, the debug ports serve /metrics", job.JobName, job.MetricsPath)
		}
		for _, sd := range job.ServiceDiscoveryConfigs {
			static, ok := sd.(discovery.StaticConfig)
			if !ok {
				t.Errorf("prometheus job %s: service discovery %s; compose targets are static", job.JobName, sd.Name())
				continue
			}
			for _, g := range static {
				for _, ls := range g.Targets {
					target := string(ls[model.AddressLabel])
					host, _, _ := net.SplitHostPort(target)
					if want[host] != target {
						t.Errorf("prometheus job %s: target %s, want one of our services' debug ports %v", job.JobName, target, want)
						continue
					}
					scraped[host] = true
				}
			}
		}
	}
	for name := range want {
		if !scraped[name] {
			t.Errorf("prometheus: compose %s (%s) is not scraped", name, want[name])
		}
	}

	if len(cfg.RuleFiles) == 0 {
		t.Error("prometheus: no rule files")
	}
	for _, rf := range cfg.RuleFiles {
		src := mounted(t, sc, rf)
		if _, errs := rulefmt.ParseFile(src, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler)); len(errs) > 0 {
			t.Errorf("prometheus rule file %s: %v", src, errs)
		}
	}
}

// TestComposeGrafana: Grafana's provisioning points at Prometheus on its
// port and loads the dashboard from the folder the dashboard is mounted in.
func TestComposeGrafana(t *testing.T) {
	t.Parallel()
	p := loadProfile(t)
	sc := p.Services["grafana"]
	var ds struct {
		Datasources []struct {
			Type string `json:"type"`
			URL  string `json:"url"`
		} `json:"datasources"`
	}
	if err := yaml.Unmarshal(readFile(t, mounted(t, sc, "/etc/grafana/provisioning/datasources/communications.yaml")), &ds); err != nil {
		t.Fatal(err)
	}
	sawPrometheus := false
	for _, d := range ds.Datasources {
		u, err := url.Parse(d.URL)
		if err != nil {
			t.Errorf("grafana data source %s: %v", d.URL, err)
			continue
		}
		checkHostPort(t, p, "grafana data source "+d.Type, u.Host)
		sawPrometheus = sawPrometheus || d.Type == "prometheus"
	}
	if !sawPrometheus {
		t.Error("grafana: no prometheus data source")
	}
	var prov struct {
		Providers []struct {
			Options struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	if err := yaml.Unmarshal(readFile(t, mounted(t, sc, "/etc/grafana/provisioning/dashboards/communications.yaml")), &prov); err != nil {
		t.Fatal(err)
	}
	if len(prov.Providers) != 1 {
		t.Fatalf("grafana: %d dashboard providers, want 1", len(prov.Providers))
	}
	dir := prov.Providers[0].Options.Path
	dash := mounted(t, sc, dir+"/communications.json")
	if filepath.Base(filepath.Dir(dash)) != "grafana" || filepath.Base(dash) != "communications.json" {
		t.Errorf("grafana: mounts %s as the dashboard, want deploy/grafana/communications.json", dash)
	}
}

// TestServiceAlertsSelectCompose: the alerts on scrape targets (ServiceDown
// and ServiceAbsent) select targets by labels compose's Prometheus gives
// them: ServiceDown's selector matches every target of our services, and
// each selector in ServiceAbsent matches some target.
func TestServiceAlertsSelectCompose(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	p := loadProfile(t)
	sc := p.Services["prometheus"]
	i := slices.IndexFunc(sc.Command, func(a string) bool { return strings.HasPrefix(a, "--config.file=") })
	if i < 0 {
		t.Fatalf("compose prometheus: command %v has no --config.file=", sc.Command)
	}
	cfg, err := promconfig.LoadFile(mounted(t, sc, strings.TrimPrefix(sc.Command[i], "--config.file=")), false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// The labels of each target as Prometheus gives them (without
	// relabelling, which the compose configuration does not use).
	var targets []labels.Labels
	for _, job := range cfg.ScrapeConfigs {
		if len(job.RelabelConfigs) > 0 {
			t.Errorf("prometheus job %s: relabels; the test reads the targets' labels from static_configs", job.JobName)
		}
		for _, sd := range job.ServiceDiscoveryConfigs {
			static, ok := sd.(discovery.StaticConfig)
			if !ok {
				continue // reported by TestComposePrometheus
			}
			for _, g := range static {
				for _, ls := range g.Targets {
					b := labels.NewBuilder(labels.EmptyLabels())
					for k, v := range g.Labels {
						b.Set(string(k), string(v))
					}
					for k, v := range ls {
						b.Set(string(k), string(v))
					}
					b.Set(model.JobLabel, job.JobName)
					b.Set(model.InstanceLabel, string(ls[model.AddressLabel]))
					targets = append(targets, b.Labels())
				}
			}
		}
	}
	if len(targets) == 0 {
		t.Fatal("prometheus: no targets")
	}

	groups, errs := rulefmt.ParseFile(filepath.Join(root, "deploy/prometheus/alerts.yaml"), false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	// upSelectors returns the selectors of up in the alert's expression.
	upSelectors := func(alert string) [][]*labels.Matcher {
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				if r.Alert != alert {
					continue
				}
				expr, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr)
				if err != nil {
					t.Fatalf("alert %s: %v", alert, err)
				}
				var sels [][]*labels.Matcher
				parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
					if vs, ok := n.(*parser.VectorSelector); ok && vs.Name == "up" {
						sels = append(sels, vs.LabelMatchers)
					}
					return nil
				})
				if len(sels) == 0 {
					t.Fatalf("alert %s: %q selects no up series", alert, r.Expr)
				}
				return sels
			}
		}
		t.Fatalf("no alert %s in deploy/prometheus/alerts.yaml", alert)
		return nil
	}
	matches := func(ms []*labels.Matcher, ls labels.Labels) bool {
		for _, m := range ms {
			if m.Name == model.MetricNameLabel {
				continue
			}
			if !m.Matches(ls.Get(m.Name)) {
				return false
			}
		}
		return true
	}
	for _, sel := range upSelectors("ServiceDown") {
		for _, ls := range targets {
			if !matches(sel, ls) {
				t.Errorf("alert ServiceDown: %v does not select target %v", sel, ls)
			}
		}
	}
	absent := upSelectors("ServiceAbsent")
	services := map[string]bool{}
	for _, sel := range absent {
		if !slices.ContainsFunc(targets, func(ls labels.Labels) bool { return matches(sel, ls) }) {
			t.Errorf("alert ServiceAbsent: %v matches no compose target, so it always fires", sel)
		}
		for _, m := range sel {
			if m.Name == "service" && m.Type == labels.MatchEqual {
				services[m.Value] = true
			}
		}
	}
	for name := range ours(t, p) {
		svc := strings.TrimRight(name, "-0123456789")
		if !services[svc] {
			t.Errorf("alert ServiceAbsent: no absent(up{service=%q})", svc)
		}
	}
}

// TestK8sScrapeConfigLabelsService: the Kubernetes scrape job that
// docs/operations.md gives keeps the targets service discovery makes of
// each of our pods of deploy/k8s/base (one per declared port, or one
// without a port), scrapes them on the annotated metrics port and gives
// them the service label the alerts select on.
func TestK8sScrapeConfigLabelsService(t *testing.T) {
	t.Parallel()
	doc := string(readFile(t, filepath.Join(repoRoot(t), "docs", "operations.md")))
	_, rest, ok := strings.Cut(doc, "```yaml\nscrape_configs:")
	if !ok {
		t.Fatal("docs/operations.md: no yaml block of scrape_configs")
	}
	block, _, _ := strings.Cut(rest, "```")
	cfg, err := promconfig.Load("scrape_configs:"+block, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("docs/operations.md scrape configuration: %v", err)
	}
	if len(cfg.ScrapeConfigs) != 1 {
		t.Fatalf("docs/operations.md: %d scrape jobs, want 1", len(cfg.ScrapeConfigs))
	}
	relabels := cfg.ScrapeConfigs[0].RelabelConfigs

	seen := map[string]bool{}
	for _, obj := range kustomizeBuild(t, filepath.Join(k8sDir(t), "base")) {
		d, ok := obj.(*appsv1.Deployment)
		if !ok {
			continue
		}
		tmpl := d.Spec.Template
		// The labels Kubernetes service discovery gives a pod target.
		meta := map[string]string{
			"__meta_kubernetes_namespace": "communications",
			"__meta_kubernetes_pod_name":  d.Name + "-7d4b9c-x2x5q",
		}
		for k, v := range tmpl.Labels {
			meta["__meta_kubernetes_pod_label_"+strutil.SanitizeLabelName(k)] = v
		}
		for k, v := range tmpl.Annotations {
			meta["__meta_kubernetes_pod_annotation_"+strutil.SanitizeLabelName(k)] = v
		}
		addrs := []string{"10.1.2.3"} // a pod without declared ports
		for _, c := range tmpl.Spec.Containers {
			for _, p := range c.Ports {
				addrs = append(addrs, net.JoinHostPort("10.1.2.3", strconv.Itoa(int(p.ContainerPort))))
			}
		}
		for _, addr := range addrs {
			b := labels.NewBuilder(labels.FromMap(meta))
			b.Set(model.AddressLabel, addr)
			if !relabel.ProcessBuilder(b, relabels...) {
				t.Errorf("deployment %s: target %s dropped by the scrape job", d.Name, addr)
				continue
			}
			ls := b.Labels()
			if got := ls.Get("service"); got != d.Name {
				t.Errorf("deployment %s: target %s has service=%q, want %q", d.Name, addr, got, d.Name)
			}
			want := net.JoinHostPort("10.1.2.3", tmpl.Annotations["prometheus.io/port"])
			if got := ls.Get(model.AddressLabel); got != want {
				t.Errorf("deployment %s: target %s scraped at %s, want %s (the annotated port)", d.Name, addr, got, want)
			}
		}
		seen[d.Name] = true
	}
	for _, name := range []string{"gateway", "auth", "chat", "history"} {
		if !seen[name] {
			t.Errorf("deploy/k8s/base: no deployment %s", name)
		}
	}
}
