package deploytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	sigsyaml "sigs.k8s.io/yaml"
)

// The chart is rendered for this Kubernetes version (helm's default is
// older than the chart's kubeVersion) into this namespace (the prod
// overlay's).
const (
	helmKubeVersion = "1.34.0"
	helmNamespace   = "communications"
)

// chartDir is deploy/helm/communications.
func chartDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(repoRoot(t), "deploy", "helm", "communications")
}

// helmBin is the helm that ./scripts/test builds at a pinned version
// ($HELM, or .state/bin/helm). Without it the helm tests are skipped,
// unless $HELM names it or in CI.
func helmBin(t *testing.T) string {
	t.Helper()
	bin, set := os.LookupEnv("HELM")
	if !set {
		bin = filepath.Join(repoRoot(t), ".state", "bin", "helm")
	}
	if _, err := os.Stat(bin); err != nil {
		if set || os.Getenv("CI") != "" {
			t.Fatalf("helm: %v (./scripts/test builds it)", err)
		}
		t.Skipf("helm: %v: run ./scripts/test once to build it", err)
	}
	return bin
}

// helm runs helm with args and returns its standard output.
func helm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), helmBin(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// No repository cache or configuration of the user's.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// helmTemplate renders the chart with the values set.
func helmTemplate(t *testing.T, set ...string) ([]byte, error) {
	t.Helper()
	args := []string{"template", "communications", chartDir(t), "--namespace", helmNamespace, "--kube-version", helmKubeVersion}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return helm(t, args...)
}

func TestHelmLint(t *testing.T) {
	t.Parallel()
	for _, set := range [][]string{nil, {"route.enabled=false", "ingress.enabled=true"}} {
		args := []string{"lint", "--strict", chartDir(t), "--kube-version", helmKubeVersion}
		for _, s := range set {
			args = append(args, "--set", s)
		}
		if out, err := helm(t, args...); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	}
}

// TestHelmTemplate renders the chart with its defaults and with each
// optional part switched, decodes every object strictly and checks the
// invariants kustomize's builds are held to.
func TestHelmTemplate(t *testing.T) {
	t.Parallel()
	uids := imageUIDs(t)
	for _, tc := range []struct {
		name  string
		set   []string
		kinds map[string]int // objects of these kinds, by Go type
	}{
		{"defaults", nil, map[string]int{"*v1.HTTPRoute": 1, "*v1.Ingress": 0, "*v2.HorizontalPodAutoscaler": 1, "*v1.NetworkPolicy": 5}},
		{"ingress", []string{"route.enabled=false", "ingress.enabled=true"}, map[string]int{"*v1.HTTPRoute": 0, "*v1.Ingress": 1}},
		{"bare", []string{"route.enabled=false", "networkPolicies.enabled=false", "gateway.autoscaling.enabled=false"},
			map[string]int{"*v1.HTTPRoute": 0, "*v1.Ingress": 0, "*v2.HorizontalPodAutoscaler": 0, "*v1.NetworkPolicy": 0}},
		{"settings", []string{"image.registry=registry.example.com", "gateway.env.GATEWAY_TRUSTED_PROXIES=10.0.0.0/8",
			"nats.url=nats://nats.messaging:4223", "auth.env.AUTH_LOG_LEVEL=debug"}, map[string]int{"*v1.Deployment": 4}},
		{"traces", []string{"auth.env.AUTH_OTLP_ENDPOINT=http://otel-collector.observability:4318",
			"gateway.env.GATEWAY_OTLP_ENDPOINT=http://otel-collector.observability:4318",
			"networkPolicies.otlp.to[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=observability",
			"networkPolicies.otlp.to[0].podSelector.matchLabels.app\\.kubernetes\\.io/name=opentelemetry-collector"},
			map[string]int{"*v1.NetworkPolicy": 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, err := helmTemplate(t, tc.set...)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decodeManifests("helm template "+tc.name, out)
			if err != nil {
				t.Fatal(err)
			}
			count := map[string]int{}
			for _, o := range objs {
				count[fmt.Sprintf("%T", o)]++
			}
			for kind, n := range tc.kinds {
				if count[kind] != n {
					t.Errorf("%d objects %s, want %d", count[kind], kind, n)
				}
			}
			checkRendered(t, index(objs), true, uids)
		})
	}
}

// TestHelmRejects checks that the chart refuses bad values: the schema's
// strictness and the chart's own checks.
func TestHelmRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		set  []string
		want string
	}{
		{"unknown value", []string{"gateway.replica=3"}, "additional properties 'replica' not allowed"},
		{"unknown section", []string{"postgresql.enabled=true"}, "additional properties 'postgresql' not allowed"},
		{"env of another service", []string{"auth.env.CHAT_LOG_LEVEL=debug"}, "must be one of"},
		{"one gateway", []string{"gateway.replicas=1"}, "minimum"},
		{"latest", []string{"image.tag=latest"}, "image"},
		{"grace period under the drain", []string{"gateway.terminationGracePeriodSeconds=30"}, "must exceed"},
		{"route and ingress", []string{"ingress.enabled=true"}, "one way"},
		{"drain as long as the shutdown", []string{"gateway.drainTimeout=25s"}, "must be under shutdownTimeout"},
		{"drain longer than the shutdown", []string{"gateway.drainTimeout=1m"}, "must be under shutdownTimeout"},
		{"fractional drain", []string{"gateway.drainTimeout=1.5s"}, "does not match pattern"},
		{"max under min replicas", []string{"gateway.autoscaling.maxReplicas=2"}, "under minReplicas"},
		{"fractional route timeout", []string{"route.requestTimeout=1.5s"}, "does not match pattern"},
		{"long route timeout", []string{"route.requestTimeout=100000s"}, "does not match pattern"},
		{"no preStop sleep", []string{"gateway.preStopSleepSeconds=0"}, "minimum"},
		{"env the chart sets", []string{"gateway.env.GATEWAY_SHUTDOWN_TIMEOUT=1m"}, "invalid propertyName 'GATEWAY_SHUTDOWN_TIMEOUT'"},
		{"debug address", []string{"chat.env.CHAT_DEBUG_ADDR=:9091"}, "invalid propertyName 'CHAT_DEBUG_ADDR'"},
		{"postgres URL", []string{"history.env.HISTORY_POSTGRES_URL=postgres://x"}, "invalid propertyName 'HISTORY_POSTGRES_URL'"},
		{"NATS URL beside nats.url", []string{"auth.env.AUTH_NATS_URL=nats://other:4222"}, "invalid propertyName 'AUTH_NATS_URL'"},
		{"unknown variable", []string{"auth.env.AUTH_NO_SUCH_SETTING=1"}, "invalid propertyName 'AUTH_NO_SUCH_SETTING'"},
		{"traces blocked", []string{"chat.env.CHAT_OTLP_ENDPOINT=http://otel-collector:4318"}, "networkPolicies.otlp.to"},
		{"traces on another port", []string{"chat.env.CHAT_OTLP_ENDPOINT=http://otel-collector:4317",
			"networkPolicies.otlp.to[0].ipBlock.cidr=10.0.0.0/8"}, "networkPolicies.otlp.port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := helmTemplate(t, tc.set...)
			if err == nil {
				t.Fatalf("rendered with %v", tc.set)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// kustomizeHash is the content hash kustomize appends to generated names.
var kustomizeHash = regexp.MustCompile(`-[a-z0-9]{10}$`)

// comparable turns rendered objects into maps keyed by type and name, with
// what legitimately differs between kustomize and helm taken out: the
// generated ConfigMaps' hash suffixes, helm's own labels and the config
// checksum annotation that rolls helm's pods.
func comparable(t *testing.T, objs []runtime.Object) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, o := range objs {
		o = o.DeepCopyObject()
		switch o := o.(type) {
		case *corev1.ConfigMap:
			o.Name = kustomizeHash.ReplaceAllString(o.Name, "")
		case *appsv1.Deployment:
			delete(o.Spec.Template.Annotations, "checksum/config")
			for i := range o.Spec.Template.Spec.Containers {
				for _, ef := range o.Spec.Template.Spec.Containers[i].EnvFrom {
					if ef.ConfigMapRef != nil {
						ef.ConfigMapRef.Name = kustomizeHash.ReplaceAllString(ef.ConfigMapRef.Name, "")
					}
				}
			}
		}
		m, err := meta.Accessor(o)
		if err != nil {
			t.Fatal(err)
		}
		labels := m.GetLabels()
		delete(labels, "helm.sh/chart")
		delete(labels, "app.kubernetes.io/managed-by")
		m.SetLabels(labels)
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("%T %s/%s", o, m.GetNamespace(), m.GetName())
		if _, dup := out[key]; dup {
			t.Errorf("%s rendered twice", key)
		}
		out[key] = u
	}
	return out
}

// TestHelmMatchesKustomize checks that the chart's defaults render the
// objects of the prod overlay, field by field.
func TestHelmMatchesKustomize(t *testing.T) {
	t.Parallel()
	out, err := helmTemplate(t)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeManifests("helm template", out)
	if err != nil {
		t.Fatal(err)
	}
	fromHelm := comparable(t, objs)
	fromKustomize := comparable(t, kustomizeBuild(t, filepath.Join(k8sDir(t), "overlays", "prod")))
	if len(fromKustomize) == 0 {
		t.Fatal("the prod overlay renders nothing")
	}
	var keys []string
	for k := range fromKustomize {
		keys = append(keys, k)
	}
	for k := range fromHelm {
		if _, ok := fromKustomize[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		h, inHelm := fromHelm[k]
		ks, inKustomize := fromKustomize[k]
		switch {
		case !inHelm:
			t.Errorf("%s: in the prod overlay, not in the chart", k)
		case !inKustomize:
			t.Errorf("%s: in the chart, not in the prod overlay", k)
		default:
			if diff := cmp.Diff(ks, h); diff != "" {
				t.Errorf("%s differs (-kustomize +helm):\n%s", k, diff)
			}
		}
	}
}

// readYAML reads a YAML file of the repository into a map.
func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := sigsyaml.UnmarshalStrict(readFile(t, path), &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// lookup walks m along keys.
func lookup(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

// TestHelmReleases checks the values of the separate releases against what
// the chart and the overlays expect of them.
func TestHelmReleases(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(repoRoot(t), "deploy", "helm")
	chart := readYAML(t, filepath.Join(chartDir(t), "values.yaml"))

	nats := readYAML(t, filepath.Join(dir, "values-nats.yaml"))
	for _, c := range []struct {
		keys []string
		want any
	}{
		{[]string{"fullnameOverride"}, "nats"},
		{[]string{"config", "cluster", "enabled"}, true},
		{[]string{"config", "cluster", "replicas"}, float64(3)},
		{[]string{"config", "jetstream", "enabled"}, true},
		{[]string{"config", "jetstream", "fileStore", "enabled"}, true},
		{[]string{"config", "jetstream", "merge", "sync_interval"}, "always"},
	} {
		if got := lookup(nats, c.keys...); got != c.want {
			t.Errorf("values-nats.yaml: %s is %v, want %v", strings.Join(c.keys, "."), got, c.want)
		}
	}
	if got, want := lookup(chart, "nats", "streamReplicas"), lookup(nats, "config", "cluster", "replicas"); got != want {
		t.Errorf("the chart's nats.streamReplicas %v is not the NATS cluster's size %v", got, want)
	}
	if u, _ := url.Parse(fmt.Sprint(lookup(chart, "nats", "url"))); u == nil || u.Hostname() != "nats" {
		t.Errorf("the chart's nats.url %v is not the NATS release's Service nats", lookup(chart, "nats", "url"))
	}

	redis := readYAML(t, filepath.Join(dir, "values-redis.yaml"))
	if lookup(redis, "architecture") != "standalone" || lookup(redis, "fullnameOverride") != "redis" {
		t.Errorf("values-redis.yaml: want a standalone Redis named redis (Service redis-master)")
	}
	if u, _ := url.Parse(fmt.Sprint(lookup(chart, "redis", "url"))); u == nil || u.Hostname() != "redis-master" {
		t.Errorf("the chart's redis.url %v is not the Redis release's Service redis-master", lookup(chart, "redis", "url"))
	}

	adapter := readYAML(t, filepath.Join(dir, "values-prometheus-adapter.yaml"))
	rules, _ := lookup(adapter, "rules", "custom").([]any)
	served := false
	for _, r := range rules {
		r, _ := r.(map[string]any)
		if lookup(r, "name", "as") == connectionsMetric && strings.Contains(fmt.Sprint(r["seriesQuery"]), connectionsMetric) &&
			lookup(r, "resources", "overrides", "pod", "resource") == "pod" {
			served = true
		}
	}
	if !served {
		t.Errorf("values-prometheus-adapter.yaml: no rule serves %s per pod, which the gateway's autoscaler reads", connectionsMetric)
	}
}

// TestHelmEnvNames checks that the schema admits, in each service's env,
// exactly the variables the service reads that the chart does not set
// itself (in the Deployment's env or from other values into the
// ConfigMap) or ties to the grace period (*_SHUTDOWN_TIMEOUT): an override of those would contradict the chart's other
// settings (ports, timeouts, network policies), and an unknown name would
// be ignored by the service.
func TestHelmEnvNames(t *testing.T) {
	t.Parallel()
	schema := readYAML(t, filepath.Join(chartDir(t), "values.schema.json"))
	out, err := helmTemplate(t)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeManifests("helm template", out)
	if err != nil {
		t.Fatal(err)
	}
	r := index(objs)
	for _, svc := range Services {
		var d *appsv1.Deployment
		for _, dd := range r.deployments {
			if dd.Name == svc.Name {
				d = dd
			}
		}
		if d == nil {
			t.Errorf("no Deployment %s", svc.Name)
			continue
		}
		set := map[string]bool{}
		c := d.Spec.Template.Spec.Containers[0]
		for _, e := range c.Env {
			set[e.Name] = true
		}
		for _, ef := range c.EnvFrom {
			if ef.ConfigMapRef == nil {
				continue
			}
			cm, ok := r.configMaps[ef.ConfigMapRef.Name]
			if !ok {
				t.Errorf("%s: no ConfigMap %s", svc.Name, ef.ConfigMapRef.Name)
				continue
			}
			for k := range cm.Data {
				set[k] = true
			}
		}
		// The grace period the chart sets is bound to the shutdown timeout.
		set[svc.EnvPrefix+"SHUTDOWN_TIMEOUT"] = true
		var want []string
		for _, name := range svc.Env {
			if !set[name] {
				want = append(want, name)
			}
		}
		slices.Sort(want)
		var got []string
		enum, _ := lookup(schema, "properties", svc.Name, "properties", "env", "propertyNames", "enum").([]any)
		for _, v := range enum {
			s, _ := v.(string)
			got = append(got, s)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			js, _ := json.Marshal(want)
			t.Errorf("values.schema.json: %s.env.propertyNames.enum is %v, want %s", svc.Name, got, js)
		}
	}
}

// TestHelmConnectionsMetric checks that the autoscaler scales on websockets
// per pod by default and drops that metric when told (a cluster without
// prometheus-adapter, where an unavailable metric stops scale-down).
func TestHelmConnectionsMetric(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		set  []string
		want []string
	}{
		{nil, []string{"cpu", connectionsMetric}},
		{[]string{"gateway.autoscaling.connectionsMetric.enabled=false"}, []string{"cpu"}},
	} {
		out, err := helmTemplate(t, tc.set...)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeManifests("helm template", out)
		if err != nil {
			t.Fatal(err)
		}
		r := index(objs)
		if len(r.hpas) != 1 {
			t.Fatalf("%v: %d autoscalers, want 1", tc.set, len(r.hpas))
		}
		if got := hpaMetrics(r.hpas[0]); !slices.Equal(got, tc.want) {
			t.Errorf("%v: metrics %v, want %v", tc.set, got, tc.want)
		}
	}
}
