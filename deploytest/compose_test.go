package deploytest

import (
	"context"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	natsserver "github.com/nats-io/nats-server/v2/server"
)

// infrastructure are the compose services our services need healthy first.
var infrastructure = []string{"postgres", "redis", "nats"}

// loadCompose loads docker-compose.yml as docker compose does, with an
// empty environment (so variables take their defaults) and validation.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	return p
}

// composeService maps a compose service to the service it runs, by its
// Dockerfile or its image.
func composeService(root string, sc types.ServiceConfig) (Service, bool) {
	for _, svc := range Services {
		if sc.Build != nil && dockerfilePath(root, sc.Build) == filepath.Join(root, svc.Dockerfile()) {
			return svc, true
		}
		if sc.Image != "" && imageName(sc.Image) == svc.Image() {
			return svc, true
		}
	}
	return Service{}, false
}

func dockerfilePath(root string, b *types.BuildConfig) string {
	ctxDir := b.Context
	if !filepath.IsAbs(ctxDir) {
		ctxDir = filepath.Join(root, ctxDir)
	}
	df := b.Dockerfile
	if df == "" {
		df = "Dockerfile"
	}
	if !filepath.IsAbs(df) {
		df = filepath.Join(ctxDir, df)
	}
	return filepath.Clean(df)
}

// ours returns the compose services that run one of our services.
func ours(t *testing.T, p *types.Project) map[string]Service {
	t.Helper()
	root := repoRoot(t)
	m := map[string]Service{}
	for name, sc := range p.Services {
		if svc, ok := composeService(root, sc); ok {
			m[name] = svc
		}
	}
	return m
}

// composeEnv returns a compose service's environment; a variable without a
// value (taken from the host) is an error: the file must be complete.
func composeEnv(t *testing.T, sc types.ServiceConfig) map[string]string {
	t.Helper()
	env := map[string]string{}
	for k, v := range sc.Environment {
		if v == nil {
			t.Errorf("compose %s: %s has no value", sc.Name, k)
			continue
		}
		env[k] = *v
	}
	return env
}

func TestComposeBuilds(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	p := loadCompose(t)
	for name, sc := range p.Services {
		if sc.Build == nil {
			continue
		}
		df := dockerfilePath(root, sc.Build)
		if _, err := os.Stat(df); err != nil {
			t.Errorf("compose %s: dockerfile: %v", name, err)
		}
		if filepath.Clean(sc.Build.Context) != root {
			t.Errorf("compose %s: build context %s, want the repository root (the Dockerfiles copy libs/)", name, sc.Build.Context)
		}
		if _, ok := composeService(root, sc); !ok {
			t.Errorf("compose %s: builds %s, which is none of our services' Dockerfiles", name, df)
		}
	}
	found := map[string]bool{}
	for name, svc := range ours(t, p) {
		found[svc.Name] = true
		if sc := p.Services[name]; sc.Restart != types.RestartPolicyUnlessStopped {
			t.Errorf("compose %s: restart %q, want unless-stopped", name, sc.Restart)
		}
	}
	for _, svc := range Services {
		if !found[svc.Name] {
			t.Errorf("compose: no service runs %s", svc.Name)
		}
	}
}

func TestComposeEnvironment(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	for name, svc := range ours(t, p) {
		sc := p.Services[name]
		st, ok := serviceEnv(t, "compose "+name, svc, composeEnv(t, sc))
		if !ok {
			continue
		}
		for _, addr := range []string{st.DebugAddr, st.HTTPAddr} {
			if addr == "" {
				continue
			}
			if host, _, _ := net.SplitHostPort(addr); host != "0.0.0.0" && host != "" {
				t.Errorf("compose %s: listens on %s, unreachable from the other containers", name, addr)
			}
		}
	}
}

// TestComposeURLs checks that the URLs our services are given name compose
// services, on their ports, with PostgreSQL's credentials, and that the
// service waits for them to be healthy.
func TestComposeURLs(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	natsOpts, _ := natsConfig(t, p)
	pg := p.Services["postgres"]
	pgEnv := composeEnv(t, pg)
	for name := range ours(t, p) {
		sc := p.Services[name]
		for k, v := range composeEnv(t, sc) {
			if !strings.HasSuffix(k, "_URL") || v == "" {
				continue
			}
			u, err := url.Parse(v)
			if err != nil {
				t.Errorf("compose %s: %s: %v", name, k, err)
				continue
			}
			host := u.Hostname()
			if _, ok := p.Services[host]; !ok {
				t.Errorf("compose %s: %s=%s: no compose service %q", name, k, v, host)
				continue
			}
			if d, ok := sc.DependsOn[host]; !ok || d.Condition != types.ServiceConditionHealthy {
				t.Errorf("compose %s: uses %s (%s) but does not depend on it with condition service_healthy", name, host, k)
			}
			port := u.Port()
			switch u.Scheme {
			case "postgres", "postgresql":
				if port != "" && port != "5432" {
					t.Errorf("compose %s: %s port %s, PostgreSQL listens on 5432", name, k, port)
				}
				pass, _ := u.User.Password()
				if u.User.Username() != pgEnv["POSTGRES_USER"] || pass != pgEnv["POSTGRES_PASSWORD"] ||
					strings.TrimPrefix(u.Path, "/") != pgEnv["POSTGRES_DB"] {
					t.Errorf("compose %s: %s does not match the postgres service's user, password and database", name, k)
				}
			case "redis":
				if port != "" && port != "6379" {
					t.Errorf("compose %s: %s port %s, Redis listens on 6379", name, k, port)
				}
			case "nats":
				if port != strconv.Itoa(natsOpts.Port) {
					t.Errorf("compose %s: %s port %s, NATS listens on %d", name, k, port, natsOpts.Port)
				}
			default:
				t.Errorf("compose %s: %s: unexpected scheme %q", name, k, u.Scheme)
			}
		}
	}
}

func TestComposePorts(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	for name, svc := range ours(t, p) {
		sc := p.Services[name]
		st, err := svc.Load(composeEnv(t, sc))
		if err != nil {
			continue // reported by TestComposeEnvironment
		}
		want, err := st.ListenPorts()
		if err != nil {
			t.Errorf("compose %s: %v", name, err)
			continue
		}
		var got []int
		for _, e := range sc.Expose {
			n, err := strconv.Atoi(e)
			if err != nil {
				t.Errorf("compose %s: expose %q: %v", name, e, err)
			}
			got = append(got, n)
		}
		for _, pc := range sc.Ports {
			got = append(got, int(pc.Target))
		}
		slices.Sort(got)
		got = slices.Compact(got)
		if !slices.Equal(got, want) {
			t.Errorf("compose %s: exposes ports %v, the service listens on %v", name, got, want)
		}
	}
}

func TestComposeDependsOnHealthy(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	for _, infra := range infrastructure {
		sc, ok := p.Services[infra]
		if !ok {
			t.Errorf("compose: no %s service", infra)
			continue
		}
		if hc := sc.HealthCheck; hc == nil || hc.Disable || len(hc.Test) == 0 || hc.Test[0] == "NONE" {
			t.Errorf("compose %s: no healthcheck", infra)
		}
		if len(sc.Volumes) == 0 {
			t.Errorf("compose %s: no volume: its data would not survive the container", infra)
		}
	}
	for name, sc := range p.Services {
		for dep, d := range sc.DependsOn {
			if slices.Contains(infrastructure, dep) && d.Condition != types.ServiceConditionHealthy {
				t.Errorf("compose %s: depends on %s with condition %q, want service_healthy", name, dep, d.Condition)
			}
		}
	}
	redis := p.Services["redis"]
	if cmd := strings.Join(redis.Command, " "); !strings.Contains(cmd, "--appendonly yes") {
		t.Errorf("compose redis: command %q does not turn on appendonly", cmd)
	}
}

func TestComposeGateways(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	var gateways []string
	for name, svc := range ours(t, p) {
		if svc.Name != "gateway" {
			continue
		}
		gateways = append(gateways, name)
		sc := p.Services[name]
		st, err := svc.Load(composeEnv(t, sc))
		if err != nil {
			continue // reported by TestComposeEnvironment
		}
		var grace time.Duration
		if sc.StopGracePeriod != nil {
			grace = time.Duration(*sc.StopGracePeriod)
		}
		if grace <= st.ShutdownTimeout {
			t.Errorf("compose %s: stop_grace_period %v, want more than GATEWAY_SHUTDOWN_TIMEOUT %v", name, grace, st.ShutdownTimeout)
		}
	}
	if len(gateways) < 2 {
		t.Errorf("compose: gateway services %v, want two replicas", gateways)
	}
}

// proxyConfig finds the nginx service and parses its configuration.
func proxyConfig(t *testing.T, p *types.Project) (types.ServiceConfig, []directive) {
	t.Helper()
	for _, sc := range p.Services {
		if !strings.HasPrefix(sc.Image, "nginx:") {
			continue
		}
		for _, v := range sc.Volumes {
			if v.Target == "/etc/nginx/nginx.conf" {
				ds, err := parseNginx(string(readFile(t, v.Source)))
				if err != nil {
					t.Fatalf("%s: %v", v.Source, err)
				}
				return sc, ds
			}
		}
		t.Fatalf("compose %s: no /etc/nginx/nginx.conf mounted", sc.Name)
	}
	t.Fatal("compose: no nginx reverse proxy")
	return types.ServiceConfig{}, nil
}

func TestComposeProxy(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	proxy, conf := proxyConfig(t, p)

	// The upstream lists every gateway, on its HTTP port.
	gateways := map[string]int{}
	for name, svc := range ours(t, p) {
		if svc.Name != "gateway" {
			continue
		}
		st, err := svc.Load(composeEnv(t, p.Services[name]))
		if err != nil {
			continue
		}
		port, err := Port(st.HTTPAddr)
		if err != nil {
			t.Errorf("compose %s: %v", name, err)
		}
		gateways[name] = port
	}
	upstreams := map[string]bool{}
	listed := map[string]bool{}
	for _, up := range find(conf, "upstream") {
		if len(up.Args) != 1 {
			t.Fatalf("nginx: upstream %v", up.Args)
		}
		upstreams[up.Args[0]] = true
		for _, s := range find(up.Block, "server") {
			host, port, err := net.SplitHostPort(s.Args[0])
			if err != nil {
				t.Errorf("nginx: upstream %s: server %s: %v", up.Args[0], s.Args[0], err)
				continue
			}
			want, ok := gateways[host]
			if !ok {
				t.Errorf("nginx: upstream %s: server %s is not a gateway service", up.Args[0], s.Args[0])
				continue
			}
			if port != strconv.Itoa(want) {
				t.Errorf("nginx: upstream %s: server %s, the gateway listens on %d", up.Args[0], s.Args[0], want)
			}
			listed[host] = true
		}
	}
	for g := range gateways {
		if !listed[g] {
			t.Errorf("nginx: no upstream lists %s", g)
		}
	}

	// Every location proxies to an upstream; /ws upgrades and stays open.
	sawWS := false
	for _, loc := range find(conf, "location") {
		target, ok := arg1(loc.Block, "proxy_pass")
		if !ok || !upstreams[strings.TrimPrefix(target, "http://")] {
			t.Errorf("nginx: location %v: proxy_pass %q is not an upstream", loc.Args, target)
		}
		if host := headerValue(loc.Block, "Host"); host != "$http_host" {
			t.Errorf("nginx: location %v: Host header %q, want $http_host (the gateway checks Origin against it)", loc.Args, host)
		}
		if loc.Args[len(loc.Args)-1] != "/ws" {
			continue
		}
		sawWS = true
		if v, _ := arg1(loc.Block, "proxy_http_version"); v != "1.1" {
			t.Errorf("nginx: /ws: proxy_http_version %q, want 1.1", v)
		}
		if headerValue(loc.Block, "Upgrade") != "$http_upgrade" || !strings.Contains(headerValue(loc.Block, "Connection"), "upgrade") {
			t.Errorf("nginx: /ws does not pass the Upgrade and Connection headers")
		}
		v, _ := arg1(loc.Block, "proxy_read_timeout")
		if d, err := time.ParseDuration(v); err != nil || d < time.Hour {
			t.Errorf("nginx: /ws: proxy_read_timeout %q, want at least 1h", v)
		}
	}
	if !sawWS {
		t.Error("nginx: no location /ws")
	}

	// The proxy listens on the port compose publishes.
	var listens []string
	for _, l := range find(conf, "listen") {
		listens = append(listens, l.Args[0])
	}
	if len(proxy.Ports) == 0 {
		t.Errorf("compose %s: publishes no port", proxy.Name)
	}
	for _, pc := range proxy.Ports {
		if !slices.Contains(listens, strconv.Itoa(int(pc.Target))) {
			t.Errorf("compose %s: publishes port %d, nginx listens on %v", proxy.Name, pc.Target, listens)
		}
		if pc.Published != "8080" {
			t.Errorf("compose %s: published on host port %q, want 8080", proxy.Name, pc.Published)
		}
	}
	for _, g := range slices.Sorted(maps.Keys(gateways)) {
		if _, ok := proxy.DependsOn[g]; !ok {
			t.Errorf("compose %s: does not depend on %s", proxy.Name, g)
		}
	}
}

// headerValue returns the value proxy_set_header gives header in ds.
func headerValue(ds []directive, header string) string {
	for _, d := range ds {
		if d.Name == "proxy_set_header" && len(d.Args) == 2 && strings.EqualFold(d.Args[0], header) {
			return d.Args[1]
		}
	}
	return ""
}

// natsConfig finds the nats service's configuration file and parses it as
// nats-server does.
func natsConfig(t *testing.T, p *types.Project) (opts *natsserver.Options, file string) {
	t.Helper()
	sc, ok := p.Services["nats"]
	if !ok {
		t.Fatal("compose: no nats service")
	}
	i := slices.IndexFunc(sc.Command, func(a string) bool { return a == "--config" || a == "-c" })
	if i < 0 || i+1 >= len(sc.Command) {
		t.Fatalf("compose nats: command %v has no --config", sc.Command)
	}
	path := sc.Command[i+1]
	for _, v := range sc.Volumes {
		if v.Target != path {
			continue
		}
		opts, err := natsserver.ProcessConfigFile(v.Source)
		if err != nil {
			t.Fatalf("compose nats: %s: %v", v.Source, err)
		}
		return opts, v.Source
	}
	t.Fatalf("compose nats: %s is not mounted", path)
	return nil, ""
}

func TestComposeNATS(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	opts, file := natsConfig(t, p)
	sc := p.Services["nats"]
	if !strings.Contains(string(readFile(t, file)), "sync_interval: always") {
		t.Errorf("compose nats: %s does not set sync_interval: always", file)
	}
	if !slices.Contains(sc.Command, "-js") && !opts.JetStream {
		t.Error("compose nats: JetStream is off")
	}
	if !opts.SyncAlways {
		t.Error("nats.conf: JetStream does not sync every write")
	}
	if opts.StoreDir == "" || !slices.ContainsFunc(sc.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && v.Target == opts.StoreDir
	}) {
		t.Errorf("compose nats: the JetStream store_dir %q is not on a volume", opts.StoreDir)
	}
	if opts.HTTPPort == 0 {
		t.Fatal("nats.conf: no monitoring port")
	}
	hc := strings.Join(sc.HealthCheck.Test, " ")
	if want := "127.0.0.1:" + strconv.Itoa(opts.HTTPPort) + "/healthz?js-enabled-only=true"; !strings.Contains(hc, want) {
		t.Errorf("compose nats: healthcheck %q does not check %s", hc, want)
	}
	if !strings.HasSuffix(sc.Image, "-alpine") {
		t.Errorf("compose nats: image %s has no shell tools for the healthcheck; use the -alpine variant", sc.Image)
	}
}
