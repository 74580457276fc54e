package deploytest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/communications/communications/libs/svcmain"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"
)

// k8sDir is deploy/k8s.
func k8sDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(repoRoot(t), "deploy", "k8s")
}

// k8sDecoder decodes the objects of client-go's scheme and the Gateway
// API's.
var k8sDecoder = sync.OnceValues(func() (runtime.Decoder, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := gatewayv1.Install(s); err != nil {
		return nil, err
	}
	return serializer.NewCodecFactory(s).UniversalDeserializer(), nil
})

// decodeManifests decodes every YAML document of data with client-go's
// scheme (and the Gateway API's types), then again strictly into the same
// type, so that an unknown or duplicated field fails.
func decodeManifests(source string, data []byte) ([]runtime.Object, error) {
	decoder, err := k8sDecoder()
	if err != nil {
		return nil, err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []runtime.Object
	var errs []error
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		var probe map[string]any
		if err := sigsyaml.Unmarshal(doc, &probe); err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d: %w", source, i, err))
			continue
		}
		if len(probe) == 0 {
			continue // only comments
		}
		obj, _, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d: %w", source, i, err))
			continue
		}
		strict := reflect.New(reflect.TypeOf(obj).Elem()).Interface()
		if err := sigsyaml.UnmarshalStrict(doc, strict); err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d (%T): %w", source, i, obj, err))
			continue
		}
		objs = append(objs, obj)
	}
	return objs, errors.Join(errs...)
}

// TestK8sFilesDecode decodes every file under deploy/k8s: kustomizations
// strictly as kustomize's type (with the files they name present), the rest
// strictly as Kubernetes objects (resources and patches alike).
func TestK8sFilesDecode(t *testing.T) {
	t.Parallel()
	dir := k8sDir(t)
	n := 0
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || (filepath.Ext(p) != ".yaml" && filepath.Ext(p) != ".yml") {
			return err
		}
		n++
		data := readFile(t, p)
		if filepath.Base(p) == "kustomization.yaml" {
			var k kusttypes.Kustomization
			if err := sigsyaml.UnmarshalStrict(data, &k); err != nil {
				t.Errorf("%s: %v", p, err)
				return nil
			}
			var refs []string
			refs = append(refs, k.Resources...)
			refs = append(refs, k.Components...)
			for _, patch := range k.Patches {
				if patch.Path != "" {
					refs = append(refs, patch.Path)
				}
			}
			for _, ref := range refs {
				if _, err := os.Stat(filepath.Join(filepath.Dir(p), ref)); err != nil {
					t.Errorf("%s: %v", p, err)
				}
			}
			return nil
		}
		if _, err := decodeManifests(p, data); err != nil {
			t.Error(err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no YAML under deploy/k8s")
	}
}

// build is one kustomize build: a directory under deploy/k8s, or the base
// with some components.
type build struct {
	name string
	dir  string
	// overlay is true for the overlays, which must pin image tags.
	overlay bool
}

// components are the optional pieces under deploy/k8s/components.
func components(t *testing.T) []string {
	t.Helper()
	found, err := filepath.Glob(filepath.Join(k8sDir(t), "components", "*", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(found) == 0 {
		t.Fatal("no component")
	}
	var names []string
	for _, f := range found {
		names = append(names, filepath.Base(filepath.Dir(f)))
	}
	return names
}

// kustomizations are the builds to check: every overlay, and the base with
// every combination of the components (written to a temporary
// kustomization that refers to them).
func kustomizations(t *testing.T) []build {
	t.Helper()
	dir := k8sDir(t)
	overlays, err := filepath.Glob(filepath.Join(dir, "overlays", "*", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(overlays) == 0 {
		t.Fatal("no overlay")
	}
	var builds []build
	for _, o := range overlays {
		rel, _ := filepath.Rel(dir, filepath.Dir(o))
		builds = append(builds, build{name: filepath.ToSlash(rel), dir: filepath.Dir(o), overlay: true})
	}
	comps := components(t)
	tmp := t.TempDir()
	for mask := 0; mask < 1<<len(comps); mask++ {
		name := "base"
		for i, c := range comps {
			if mask&(1<<i) != 0 {
				name += "+" + c
			}
		}
		d := filepath.Join(tmp, name)
		// Kustomize takes relative paths only.
		rel := func(p string) string {
			r, err := filepath.Rel(d, p)
			if err != nil {
				t.Fatal(err)
			}
			return filepath.ToSlash(r)
		}
		k := kusttypes.Kustomization{
			TypeMeta:  kusttypes.TypeMeta{APIVersion: kusttypes.KustomizationVersion, Kind: kusttypes.KustomizationKind},
			Resources: []string{rel(filepath.Join(dir, "base"))},
		}
		for i, c := range comps {
			if mask&(1<<i) != 0 {
				k.Components = append(k.Components, rel(filepath.Join(dir, "components", c)))
			}
		}
		data, err := sigsyaml.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "kustomization.yaml"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		builds = append(builds, build{name: name, dir: d})
	}
	return builds
}

// kustomizeBuild runs kustomize build (in-process, offline) on dir.
func kustomizeBuild(t *testing.T, dir string) []runtime.Object {
	t.Helper()
	opts := krusty.MakeDefaultOptions()
	// The combinations live in a temporary directory, outside the tree
	// they refer to.
	opts.LoadRestrictions = kusttypes.LoadRestrictionsNone
	k := krusty.MakeKustomizer(opts)
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeManifests("kustomize build "+dir, out)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// rendered indexes the objects kustomize or helm rendered.
type rendered struct {
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	serviceAccounts map[string]bool
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	networkPolicies []*networkingv1.NetworkPolicy
	ingresses       []*networkingv1.Ingress
	routes          []*gatewayv1.HTTPRoute
	// others are the objects of kinds not listed above.
	others []runtime.Object
}

func index(objs []runtime.Object) rendered {
	r := rendered{serviceAccounts: map[string]bool{}, configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *corev1.Service:
			r.services = append(r.services, o)
		case *corev1.ServiceAccount:
			r.serviceAccounts[o.Name] = true
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
		case *corev1.Secret:
			r.secrets[o.Name] = o
		case *corev1.Namespace:
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			r.hpas = append(r.hpas, o)
		case *networkingv1.NetworkPolicy:
			r.networkPolicies = append(r.networkPolicies, o)
		case *networkingv1.Ingress:
			r.ingresses = append(r.ingresses, o)
		case *gatewayv1.HTTPRoute:
			r.routes = append(r.routes, o)
		default:
			r.others = append(r.others, o)
		}
	}
	return r
}

func TestK8sKustomize(t *testing.T) {
	t.Parallel()
	uids := imageUIDs(t)
	for _, b := range kustomizations(t) {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			checkRendered(t, index(kustomizeBuild(t, b.dir)), b.overlay, uids)
		})
	}
}

// imageUIDs are the users the services' images run as.
func imageUIDs(t *testing.T) map[string]int64 {
	t.Helper()
	uids := map[string]int64{}
	for _, svc := range Services {
		uid, err := imageUID(parseDockerfile(t, svc))
		if err != nil {
			t.Fatalf("%s: %v", svc.Dockerfile(), err)
		}
		uids[svc.Name] = uid
	}
	return uids
}

// checkRendered checks the invariants of one rendering (a kustomize build
// or a helm template). pinned requires image tags.
func checkRendered(t *testing.T, r rendered, pinned bool, uids map[string]int64) {
	t.Helper()
	seen := map[string]bool{}
	envs := map[string]map[string]string{}
	for _, d := range r.deployments {
		envs[d.Name] = checkDeployment(t, r, d, pinned, uids, seen)
	}
	for _, svc := range Services {
		if !seen[svc.Name] {
			t.Errorf("no Deployment runs %s", svc.Name)
		}
	}
	for _, s := range r.services {
		checkService(t, r, s)
	}
	for _, p := range r.pdbs {
		checkPDB(t, r, p)
	}
	for _, h := range r.hpas {
		checkHPA(t, r, h)
	}
	if len(r.networkPolicies) > 0 {
		checkNetworkPolicies(t, r, envs)
	}
	for _, rt := range r.routes {
		checkRoute(t, r, rt)
	}
	for _, in := range r.ingresses {
		checkIngress(t, r, in)
	}
	for _, o := range r.others {
		t.Errorf("unexpected object %T", o)
	}
}

// checkDeployment checks a Deployment and returns its container's
// environment (what the manifests set, not the defaults; a variable from a
// Secret the build does not hold has an empty value).
func checkDeployment(t *testing.T, r rendered, d *appsv1.Deployment, pinned bool, uids map[string]int64, seen map[string]bool) map[string]string {
	t.Helper()
	where := "Deployment " + d.Name
	env := map[string]string{}
	secretEnv := map[string]bool{}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("%s: selector %v does not match the template's labels %v", where, d.Spec.Selector, d.Spec.Template.Labels)
	}
	pod := d.Spec.Template.Spec
	if pod.ServiceAccountName == "" || !r.serviceAccounts[pod.ServiceAccountName] {
		t.Errorf("%s: serviceAccountName %q is not a ServiceAccount of the build", where, pod.ServiceAccountName)
	}
	if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		t.Errorf("%s: enableServiceLinks is not false: service links put <SERVICE>_* variables in the services' prefixes", where)
	}
	if len(pod.Containers) != 1 {
		t.Errorf("%s: %d containers, want 1", where, len(pod.Containers))
	}
	for _, c := range pod.Containers {
		where := where + " container " + c.Name
		var svc Service
		found := false
		for _, s := range Services {
			// In a registry of the operator's or not.
			if name := imageName(c.Image); name == s.Image() || strings.HasSuffix(name, "/"+s.Image()) {
				svc, found = s, true
			}
		}
		if !found {
			t.Errorf("%s: image %s is none of our services", where, c.Image)
			continue
		}
		seen[svc.Name] = true
		if pinned {
			if tag := strings.TrimPrefix(c.Image, imageName(c.Image)); tag == "" || tag == ":latest" {
				t.Errorf("%s: image %s has no tag", where, c.Image)
			}
		}
		checkSecurity(t, where, pod.SecurityContext, c.SecurityContext, uids[svc.Name])
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[res]; !ok {
				t.Errorf("%s: no %s request", where, res)
			}
			if _, ok := c.Resources.Limits[res]; !ok {
				t.Errorf("%s: no %s limit", where, res)
			}
		}

		// The environment: every variable one the service reads, the whole
		// configuration valid.
		for _, e := range c.Env {
			switch {
			case e.ValueFrom == nil:
				env[e.Name] = e.Value
			case e.ValueFrom.SecretKeyRef != nil:
				secretEnv[e.Name] = true
				ref := e.ValueFrom.SecretKeyRef
				s, ok := r.secrets[ref.Name]
				switch {
				case ok:
					v, ok := s.Data[ref.Key]
					if !ok {
						t.Errorf("%s: %s: Secret %s has no key %s", where, e.Name, ref.Name, ref.Key)
					}
					env[e.Name] = string(v)
					if v, ok := s.StringData[ref.Key]; ok {
						env[e.Name] = v
					}
				default:
					// Left to the cluster's operator (the base, prod).
					if !svc.Reads(e.Name) {
						t.Errorf("%s: sets %s, which %s does not read", where, e.Name, svc.Name)
					}
				}
			default:
				t.Errorf("%s: %s: only values and secretKeyRefs are expected", where, e.Name)
			}
		}
		for _, ef := range c.EnvFrom {
			switch {
			case ef.ConfigMapRef != nil:
				cm, ok := r.configMaps[ef.ConfigMapRef.Name]
				if !ok {
					t.Errorf("%s: envFrom: no ConfigMap %s", where, ef.ConfigMapRef.Name)
					continue
				}
				for k, v := range cm.Data {
					if _, dup := env[ef.Prefix+k]; dup {
						t.Errorf("%s: %s is set twice", where, ef.Prefix+k)
					}
					env[ef.Prefix+k] = v
				}
			default:
				t.Errorf("%s: envFrom: only ConfigMaps are expected", where)
			}
		}
		st, ok := serviceEnv(t, where, svc, env)
		if !ok {
			continue
		}
		checkPorts(t, where, c, st)

		if svc.Name == "gateway" && r.replicas(d) < 2 {
			t.Errorf("%s: %d replicas (or autoscaler minimum), want at least 2", where, r.replicas(d))
		}
		checkTermination(t, where, d, c, svc, st)
	}
	for name := range secretEnv {
		if _, ok := env[name]; !ok {
			env[name] = ""
		}
	}
	return env
}

func checkSecurity(t *testing.T, where string, pod *corev1.PodSecurityContext, c *corev1.SecurityContext, uid int64) {
	if c == nil {
		t.Errorf("%s: no securityContext", where)
		return
	}
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	if !isTrue(c.RunAsNonRoot) && !isTrue(pod.RunAsNonRoot) {
		t.Errorf("%s: runAsNonRoot is not true", where)
	}
	if !isTrue(c.ReadOnlyRootFilesystem) {
		t.Errorf("%s: readOnlyRootFilesystem is not true", where)
	}
	if c.AllowPrivilegeEscalation == nil || *c.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", where)
	}
	if isTrue(c.Privileged) {
		t.Errorf("%s: privileged", where)
	}
	if c.Capabilities == nil || !slices.Contains(c.Capabilities.Drop, "ALL") || len(c.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities do not drop ALL (and add none)", where)
	}
	seccomp := c.SeccompProfile
	if seccomp == nil {
		seccomp = pod.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile is not RuntimeDefault", where)
	}
	runAs := c.RunAsUser
	if runAs == nil {
		runAs = pod.RunAsUser
	}
	if runAs != nil && *runAs != uid {
		t.Errorf("%s: runAsUser %d, the image's USER is %d", where, *runAs, uid)
	}
}

// checkPorts checks that the container's named ports are the ports the
// service listens on and that the probes reach the debug server.
func checkPorts(t *testing.T, where string, c corev1.Container, st Settings) {
	wantPorts := map[string]string{"debug": st.DebugAddr, "http": st.HTTPAddr}
	got := map[string]int32{}
	for _, p := range c.Ports {
		got[p.Name] = p.ContainerPort
	}
	for name, addr := range wantPorts {
		if addr == "" {
			if _, ok := got[name]; ok {
				t.Errorf("%s: port %s, but the service has no such listener", where, name)
			}
			continue
		}
		if !strings.HasPrefix(addr, "0.0.0.0:") && !strings.HasPrefix(addr, ":") {
			t.Errorf("%s: listens on %s, unreachable from outside the pod", where, addr)
		}
		port, err := Port(addr)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if int(got[name]) != port {
			t.Errorf("%s: containerPort %s is %d, the service listens on %s", where, name, got[name], addr)
		}
		delete(got, name)
	}
	for name := range got {
		t.Errorf("%s: port %q is none of the service's listeners", where, name)
	}

	debugPort, _ := Port(st.DebugAddr)
	for _, pr := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{{"startup", c.StartupProbe, "/healthz"}, {"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", where, pr.kind)
			continue
		}
		g := pr.probe.HTTPGet
		if g.Path != pr.path {
			t.Errorf("%s: %s probe path %s, want %s", where, pr.kind, g.Path, pr.path)
		}
		if resolvePort(c, g.Port) != debugPort {
			t.Errorf("%s: %s probe port %s is not the debug port %d", where, pr.kind, g.Port.String(), debugPort)
		}
	}
}

// resolvePort returns the number of a probe's or Service's target port.
func resolvePort(c corev1.Container, p intstr.IntOrString) int {
	if p.Type == intstr.Int {
		return p.IntValue()
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	return -1
}

// checkTermination checks that a Deployment's pods get the time to stop:
// the preStop sleep (the gateway's, which must have one), the service's
// shutdown timeout, then svcmain's bounded telemetry flush. The grace period
// must be set explicitly: Kubernetes' default of 30 s is no decision.
func checkTermination(t *testing.T, where string, d *appsv1.Deployment, c corev1.Container, svc Service, st Settings) {
	var sleep time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		sleep = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	} else if svc.Name == "gateway" {
		t.Errorf("%s: no preStop sleep (the image has no shell: use the sleep action)", where)
	}
	g := d.Spec.Template.Spec.TerminationGracePeriodSeconds
	if g == nil {
		t.Errorf("%s: no terminationGracePeriodSeconds (the default 30 s is set by nobody)", where)
		return
	}
	grace := time.Duration(*g) * time.Second
	if need := sleep + st.ShutdownTimeout + svcmain.TelemetryFlushTimeout; grace <= need {
		t.Errorf("%s: terminationGracePeriodSeconds %v, want more than the preStop sleep %v + %sSHUTDOWN_TIMEOUT %v + telemetry flush %v",
			where, grace, sleep, svc.EnvPrefix, st.ShutdownTimeout, svcmain.TelemetryFlushTimeout)
	}
}

// checkService checks that a Service selects exactly one Deployment and
// targets ports its container has.
func checkService(t *testing.T, r rendered, s *corev1.Service) {
	where := "Service " + s.Name
	if len(s.Spec.Selector) == 0 {
		t.Errorf("%s: no selector", where)
		return
	}
	sel := labels.SelectorFromSet(s.Spec.Selector)
	var targets []*appsv1.Deployment
	for _, d := range r.deployments {
		if sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			targets = append(targets, d)
		}
	}
	if len(targets) != 1 {
		t.Errorf("%s: selector %v selects %d Deployments, want 1", where, s.Spec.Selector, len(targets))
		return
	}
	c := targets[0].Spec.Template.Spec.Containers[0]
	for _, p := range s.Spec.Ports {
		target := p.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(p.Port)
		}
		if n := resolvePort(c, target); n < 0 || !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return int(cp.ContainerPort) == n }) {
			t.Errorf("%s: port %s targets %s, which container %s of Deployment %s does not have", where, p.Name, target.String(), c.Name, targets[0].Name)
		}
	}
}
