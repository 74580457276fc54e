package deploytest

import (
	"bytes"
	"io/fs"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// connectionsMetric is the gateway's gauge of open websockets, which the
// autoscaler reads per pod through prometheus-adapter.
const connectionsMetric = "gateway_connections"

// selected returns the Deployments whose pods sel selects.
func selected(t *testing.T, where string, r rendered, sel *metav1.LabelSelector) []*appsv1.Deployment {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("%s: selector: %v", where, err)
		return nil
	}
	var ds []*appsv1.Deployment
	for _, d := range r.deployments {
		if s.Matches(labels.Set(d.Spec.Template.Labels)) {
			ds = append(ds, d)
		}
	}
	return ds
}

// replicas returns how many pods d runs: its autoscaler's minimum if one
// scales it, else its replicas.
func (r rendered) replicas(d *appsv1.Deployment) int {
	for _, h := range r.hpas {
		ref := h.Spec.ScaleTargetRef
		if ref.Kind == "Deployment" && ref.Name == d.Name {
			if h.Spec.MinReplicas == nil {
				return 1
			}
			return int(*h.Spec.MinReplicas)
		}
	}
	if d.Spec.Replicas == nil {
		return 1
	}
	return int(*d.Spec.Replicas)
}

// checkPDB checks that a PodDisruptionBudget selects one Deployment's pods
// and leaves at least one of them running.
func checkPDB(t *testing.T, r rendered, p *policyv1.PodDisruptionBudget) {
	where := "PodDisruptionBudget " + p.Name
	if p.Spec.Selector == nil || len(p.Spec.Selector.MatchLabels)+len(p.Spec.Selector.MatchExpressions) == 0 {
		t.Errorf("%s: no selector", where)
		return
	}
	ds := selected(t, where, r, p.Spec.Selector)
	if len(ds) != 1 {
		t.Errorf("%s: selects %d Deployments, want 1", where, len(ds))
		return
	}
	replicas := r.replicas(ds[0])
	switch {
	case p.Spec.MaxUnavailable != nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(p.Spec.MaxUnavailable, replicas, true)
		if err != nil || n < 1 || n >= replicas {
			t.Errorf("%s: maxUnavailable %s of %d replicas: evictions must be possible and leave a pod", where, p.Spec.MaxUnavailable.String(), replicas)
		}
	case p.Spec.MinAvailable != nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(p.Spec.MinAvailable, replicas, true)
		if err != nil || n < 1 || n >= replicas {
			t.Errorf("%s: minAvailable %s of %d replicas: evictions must be possible and leave a pod", where, p.Spec.MinAvailable.String(), replicas)
		}
	default:
		t.Errorf("%s: neither minAvailable nor maxUnavailable", where)
	}
}

// checkHPA checks that an autoscaler scales the gateway Deployment on CPU
// and on connections per pod.
func checkHPA(t *testing.T, r rendered, h *autoscalingv2.HorizontalPodAutoscaler) {
	where := "HorizontalPodAutoscaler " + h.Name
	ref := h.Spec.ScaleTargetRef
	if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || ref.Name != "gateway" {
		t.Errorf("%s: scales %s %s %s, want the gateway Deployment", where, ref.APIVersion, ref.Kind, ref.Name)
	}
	var target *appsv1.Deployment
	for _, d := range r.deployments {
		if d.Name == ref.Name {
			target = d
		}
	}
	if target == nil {
		t.Errorf("%s: no Deployment %s in the rendering", where, ref.Name)
	}
	if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
		t.Errorf("%s: minReplicas under 2: one gateway has no other to take its clients", where)
	} else {
		if h.Spec.MaxReplicas < *h.Spec.MinReplicas {
			t.Errorf("%s: maxReplicas %d < minReplicas %d", where, h.Spec.MaxReplicas, *h.Spec.MinReplicas)
		}
	}
	if target != nil && target.Spec.Replicas != nil {
		t.Errorf("%s: Deployment %s sets replicas: every apply would reset the autoscaler's count (and drain the gateways above it)", where, target.Name)
	}
	// CPU always; the connections metric may be left out (the chart's
	// connectionsMetric.enabled: without prometheus-adapter), but if
	// present it must have an average value target.
	cpu := false
	for i, m := range h.Spec.Metrics {
		switch {
		case m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU:
			cpu = m.Resource.Target.Type == autoscalingv2.UtilizationMetricType && m.Resource.Target.AverageUtilization != nil
		case m.Type == autoscalingv2.PodsMetricSourceType && m.Pods != nil && m.Pods.Metric.Name == connectionsMetric:
			if m.Pods.Target.Type != autoscalingv2.AverageValueMetricType || m.Pods.Target.AverageValue == nil || m.Pods.Target.AverageValue.Sign() <= 0 {
				t.Errorf("%s: Pods metric %s without a positive average value target", where, connectionsMetric)
			}
		default:
			t.Errorf("%s: metric %d (%s) is neither CPU nor %s", where, i, m.Type, connectionsMetric)
		}
	}
	if !cpu {
		t.Errorf("%s: no CPU utilization target", where)
	}
}

// hpaMetrics returns the names of an autoscaler's metrics ("cpu" for the
// CPU resource).
func hpaMetrics(h *autoscalingv2.HorizontalPodAutoscaler) []string {
	var names []string
	for _, m := range h.Spec.Metrics {
		switch {
		case m.Resource != nil:
			names = append(names, string(m.Resource.Name))
		case m.Pods != nil:
			names = append(names, m.Pods.Metric.Name)
		default:
			names = append(names, string(m.Type))
		}
	}
	return names
}

// defaultPorts are the ports of the URL schemes the services connect to.
var defaultPorts = map[string]int{"nats": 4222, "redis": 6379, "rediss": 6379, "postgres": 5432, "postgresql": 5432}

// otlpPort is the port of an OTLP/HTTP endpoint without one.
const otlpPort = 4318

// egress is a connection a service's environment makes it open.
type egress struct {
	name string
	port int
	// pod are the destination pods' labels, by their charts; nil: not
	// known (PostgreSQL may live outside the cluster, a URL may name an
	// address).
	pod map[string]string
	// ns is the destination's namespace; empty: not known.
	ns string
}

// peerLabels are the labels of the pods behind each kind of URL or
// endpoint, as their charts set them and the network policies select them.
var peerLabels = map[string]map[string]string{
	"nats":   {"app.kubernetes.io/name": "nats"},
	"redis":  {"app.kubernetes.io/name": "redis"},
	"rediss": {"app.kubernetes.io/name": "redis"},
	"otlp":   {"app.kubernetes.io/name": "opentelemetry-collector"},
}

// egressTargets are the connections a service's environment makes it
// open: one per *_URL variable (a URL kept in a Secret the rendering does
// not hold counts by its scheme's default port), one per *_OTLP_ENDPOINT
// (trace export), and DNS. ns is the Deployment's namespace, where a
// host without a namespace part lives.
func egressTargets(t *testing.T, where, ns string, env map[string]string) []egress {
	t.Helper()
	targets := []egress{{name: "DNS", port: 53, pod: map[string]string{"k8s-app": "kube-dns"}, ns: "kube-system"}}
	for name, v := range env {
		kind := ""
		switch {
		case strings.HasSuffix(name, "_OTLP_ENDPOINT"):
			if v == "" {
				continue // no export
			}
			kind = "otlp"
		case strings.HasSuffix(name, "_URL"):
			if v == "" {
				scheme := strings.ToLower(name[strings.LastIndex(name[:len(name)-len("_URL")], "_")+1 : len(name)-len("_URL")])
				p, ok := defaultPorts[scheme]
				if !ok {
					t.Errorf("%s: %s from a Secret: no default port known", where, name)
					continue
				}
				targets = append(targets, egress{name: name, port: p, pod: peerLabels[scheme]})
				continue
			}
		default:
			continue
		}
		u, err := url.Parse(v)
		if err != nil || u.Host == "" {
			t.Errorf("%s: %s=%s: not a URL", where, name, v)
			continue
		}
		if kind == "" {
			kind = u.Scheme
		}
		p, ok := defaultPorts[kind]
		if kind == "otlp" {
			p, ok = otlpPort, true
		}
		if u.Port() != "" {
			p, err = strconv.Atoi(u.Port())
			ok = err == nil
		}
		if !ok {
			t.Errorf("%s: %s=%s: no port", where, name, v)
			continue
		}
		e := egress{name: name, port: p}
		if net.ParseIP(u.Hostname()) == nil {
			e.pod = peerLabels[kind]
			e.ns = ns
			// service.namespace[.svc.cluster.local]
			if parts := strings.Split(u.Hostname(), "."); len(parts) > 1 {
				e.ns = parts[1]
			}
		}
		targets = append(targets, e)
	}
	return targets
}

// reaches reports whether a rule's peers admit the destination of e, from
// a policy in the namespace ns. An ipBlock is taken to admit it: addresses
// cannot be judged offline.
func reaches(t *testing.T, peers []networkingv1.NetworkPolicyPeer, e egress, ns string) bool {
	if len(peers) == 0 || e.pod == nil {
		return true
	}
	matches := func(sel *metav1.LabelSelector, l map[string]string) bool {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			t.Errorf("selector %v: %v", sel, err)
			return false
		}
		return s.Matches(labels.Set(l))
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			return true
		}
		podOK := p.PodSelector == nil || matches(p.PodSelector, e.pod)
		nsOK := e.ns == ""
		if p.NamespaceSelector == nil {
			nsOK = nsOK || e.ns == ns
		} else {
			nsOK = nsOK || matches(p.NamespaceSelector, map[string]string{"kubernetes.io/metadata.name": e.ns})
		}
		if podOK && nsOK {
			return true
		}
	}
	return false
}

// allows reports whether a rule's ports admit TCP (or, for 53, UDP too) on
// port, named ports resolved against the container c (nil for egress).
func allows(ports []networkingv1.NetworkPolicyPort, port int, proto corev1.Protocol, c *corev1.Container) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if pp != proto {
			continue
		}
		if p.Port == nil {
			return true
		}
		n := p.Port.IntValue()
		if p.Port.Type == intstr.String {
			if c == nil {
				continue
			}
			n = resolvePort(*c, *p.Port)
		}
		end := n
		if p.EndPort != nil {
			end = int(*p.EndPort)
		}
		if port >= n && port <= end {
			return true
		}
	}
	return false
}

// checkNetworkPolicies checks that one policy denies everything to every
// pod of ours, that every other selects one Deployment, and that each
// Deployment's policies admit its container ports and the connections its
// environment makes (NATS, Redis, PostgreSQL, DNS, OTLP): the port, and the
// destination: the peers must select the pods of the right chart (by
// peerLabels) in the namespace the URL names.
func checkNetworkPolicies(t *testing.T, r rendered, envs map[string]map[string]string) {
	t.Helper()
	denyAll := false
	policies := map[string][]*networkingv1.NetworkPolicy{}
	for _, np := range r.networkPolicies {
		where := "NetworkPolicy " + np.Name
		if len(np.Spec.PodSelector.MatchLabels)+len(np.Spec.PodSelector.MatchExpressions) == 0 {
			t.Errorf("%s: selects every pod of the namespace, also NATS, Redis or PostgreSQL if they run there", where)
			continue
		}
		ds := selected(t, where, r, &np.Spec.PodSelector)
		types := np.Spec.PolicyTypes
		if len(ds) == len(r.deployments) && len(np.Spec.Ingress) == 0 && len(np.Spec.Egress) == 0 {
			if slices.Contains(types, networkingv1.PolicyTypeIngress) && slices.Contains(types, networkingv1.PolicyTypeEgress) {
				denyAll = true
			}
			continue
		}
		if len(ds) != 1 {
			t.Errorf("%s: selects %d Deployments, want 1 (or all, denying everything)", where, len(ds))
			continue
		}
		if !slices.Contains(types, networkingv1.PolicyTypeIngress) || !slices.Contains(types, networkingv1.PolicyTypeEgress) {
			t.Errorf("%s: policyTypes %v, want Ingress and Egress", where, types)
		}
		policies[ds[0].Name] = append(policies[ds[0].Name], np)
	}
	if !denyAll {
		t.Errorf("no NetworkPolicy denies all traffic to every Deployment's pods")
	}
	for _, d := range r.deployments {
		where := "Deployment " + d.Name
		nps := policies[d.Name]
		if len(nps) == 0 {
			t.Errorf("%s: no NetworkPolicy of its own", where)
			continue
		}
		c := &d.Spec.Template.Spec.Containers[0]
		for _, cp := range c.Ports {
			ok := false
			for _, np := range nps {
				for _, rule := range np.Spec.Ingress {
					ok = ok || allows(rule.Ports, int(cp.ContainerPort), corev1.ProtocolTCP, c)
				}
			}
			if !ok {
				t.Errorf("%s: no NetworkPolicy admits port %s (%d)", where, cp.Name, cp.ContainerPort)
			}
		}
		for _, e := range egressTargets(t, where, d.Namespace, envs[d.Name]) {
			protos := []corev1.Protocol{corev1.ProtocolTCP}
			if e.port == 53 {
				protos = append(protos, corev1.ProtocolUDP)
			}
			for _, proto := range protos {
				ok := false
				for _, np := range nps {
					for _, rule := range np.Spec.Egress {
						ok = ok || allows(rule.Ports, e.port, proto, nil) && reaches(t, rule.To, e, np.Namespace)
					}
				}
				if !ok {
					t.Errorf("%s: no NetworkPolicy lets it connect to %s port %d (%s, pods %v in namespace %q)", where, proto, e.port, e.name, e.pod, e.ns)
				}
			}
		}
	}
}

// serviceTarget returns the Service called name if it has the port.
func serviceTarget(r rendered, name string, port int32, portName string) bool {
	for _, s := range r.services {
		if s.Name != name {
			continue
		}
		for _, p := range s.Spec.Ports {
			if (port != 0 && p.Port == port) || (portName != "" && p.Name == portName) {
				return true
			}
		}
	}
	return false
}

// longLived is the least request timeout a route may give websockets; 0
// disables the timeout.
const longLived = time.Hour

// checkRoute checks that an HTTPRoute sends to our Services and lets
// websockets (/ws) live.
func checkRoute(t *testing.T, r rendered, rt *gatewayv1.HTTPRoute) {
	where := "HTTPRoute " + rt.Name
	if len(rt.Spec.ParentRefs) == 0 {
		t.Errorf("%s: no parentRefs", where)
	}
	// The rule that serves /ws: of the rules whose path matches it, the
	// one with the longest match (the Gateway API's precedence).
	wsRule, wsLen := -1, -1
	for i, rule := range rt.Spec.Rules {
		where := where + " rule " + strconv.Itoa(i)
		if len(rule.BackendRefs) == 0 {
			t.Errorf("%s: no backendRefs", where)
		}
		for _, b := range rule.BackendRefs {
			if b.Kind != nil && *b.Kind != "Service" || b.Port == nil || !serviceTarget(r, string(b.Name), int32(*b.Port), "") {
				t.Errorf("%s: backend %s port %v is no port of a Service of the rendering", where, b.Name, b.Port)
			}
		}
		if rule.Timeouts != nil {
			request := routeDuration(t, where, rule.Timeouts.Request)
			backend := routeDuration(t, where, rule.Timeouts.BackendRequest)
			if request > 0 && (backend == 0 || backend > request) {
				t.Errorf("%s: backendRequest %v exceeds request %v", where, backend, request)
			}
		}
		for _, m := range rule.Matches {
			if m.Path == nil || m.Path.Value == nil {
				continue
			}
			v := *m.Path.Value
			exact := m.Path.Type != nil && *m.Path.Type == gatewayv1.PathMatchExact
			prefix := (m.Path.Type == nil || *m.Path.Type == gatewayv1.PathMatchPathPrefix) &&
				(v == "/" || v == "/ws" || v == "/ws/")
			if (exact && v == "/ws" || prefix) && len(v) > wsLen {
				wsRule, wsLen = i, len(v)
			}
		}
	}
	if wsRule < 0 {
		t.Errorf("%s: no rule matches /ws", where)
		return
	}
	// Unset timeouts are the implementation's defaults, often seconds.
	to := rt.Spec.Rules[wsRule].Timeouts
	if to == nil || to.Request == nil {
		t.Errorf("%s: rule %d serves /ws without a request timeout: set 0s (none) or at least %v for websockets", where, wsRule, longLived)
		return
	}
	for name, d := range map[string]*gatewayv1.Duration{"request": to.Request, "backendRequest": to.BackendRequest} {
		if v := routeDuration(t, where, d); v > 0 && v < longLived {
			t.Errorf("%s: rule %d serves /ws with a %s timeout of %v: websockets need 0s (none) or at least %v", where, wsRule, name, v, longLived)
		}
	}
}

// routeDuration parses a Gateway API duration; -1 when unset.
func routeDuration(t *testing.T, where string, d *gatewayv1.Duration) time.Duration {
	t.Helper()
	if d == nil {
		return -1
	}
	// The API server validates the Gateway API's pattern, which is
	// stricter than time.ParseDuration (no fractions, at most five digits
	// and four parts).
	if !gatewayDuration.MatchString(string(*d)) {
		t.Errorf("%s: timeout %q does not match the Gateway API's %s", where, *d, gatewayDuration)
		return -1
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil {
		t.Errorf("%s: timeout %q: %v", where, *d, err)
		return -1
	}
	return v
}

// gatewayDuration is the Gateway API's Duration pattern (GEP-2257).
var gatewayDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

// checkIngress checks that an Ingress sends to our Services and, for
// ingress-nginx, keeps websockets open.
func checkIngress(t *testing.T, r rendered, in *networkingv1.Ingress) {
	where := "Ingress " + in.Name
	if len(in.Spec.Rules) == 0 {
		t.Errorf("%s: no rules", where)
	}
	for _, rule := range in.Spec.Rules {
		if rule.HTTP == nil {
			t.Errorf("%s: host %s: no paths", where, rule.Host)
			continue
		}
		for _, p := range rule.HTTP.Paths {
			s := p.Backend.Service
			if s == nil || !serviceTarget(r, s.Name, s.Port.Number, s.Port.Name) {
				t.Errorf("%s: path %s: the backend is no port of a Service of the rendering", where, p.Path)
			}
		}
	}
	if in.Spec.IngressClassName != nil && *in.Spec.IngressClassName == "nginx" {
		for _, a := range []string{"nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"} {
			n, err := strconv.Atoi(in.Annotations[a])
			if err != nil || time.Duration(n)*time.Second < longLived {
				t.Errorf("%s: %s is %q, want at least %v for websockets", where, a, in.Annotations[a], longLived)
			}
		}
	}
}

// TestAutoscalerMetricExists checks that the gateway's code registers the
// gauge the autoscaler reads, so that renaming it fails here rather than
// leaving the autoscaler without its metric.
func TestAutoscalerMetricExists(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(repoRoot(t), "services", "gateway")
	found := false
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		if bytes.Contains(readFile(t, p), []byte(strconv.Quote(connectionsMetric))) {
			found = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Errorf("no code under services/gateway names the metric %q, which the gateway's autoscaler reads", connectionsMetric)
	}
}
