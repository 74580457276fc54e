package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/communications/communications/libs/devstack"
)

// service is one of our processes in the local stack.
type service struct {
	name      string // process name
	pkg       string // services/<pkg>
	env       map[string]string
	debugPort int
	proc      *devstack.Process
	log       *os.File
}

// runStack runs the stack with its state (data, logs, stack.json) in
// stateDir, relative to root unless absolute.
// With restartGateways, a gateway that exits (the load generator's storm
// scenario kills one) is started again on the same ports and stack.json
// gets its new process id; otherwise any service exiting stops the stack.
func runStack(ctx context.Context, root, stateDir, natsBin string, restartGateways bool) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	state := stateDir
	if !filepath.IsAbs(state) {
		state = filepath.Join(root, state)
	}
	logs := filepath.Join(state, "logs")
	bin := filepath.Join(root, ".state", "bin")
	for _, d := range []string{logs, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}

	fmt.Println("building services ...")
	for _, svc := range []string{"auth", "chat", "history", "gateway"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, svc), "./services/"+svc)
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build %s: %w", svc, err)
		}
	}

	logFile := func(name string) (*os.File, error) {
		return os.OpenFile(filepath.Join(logs, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	}
	var infra []interface{ Stop() error }
	defer func() {
		for i := len(infra) - 1; i >= 0; i-- {
			if err := infra[i].Stop(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}
	}()

	fmt.Println("starting postgres, redis and nats ...")
	pgLog, err := logFile("postgres")
	if err != nil {
		return err
	}
	defer pgLog.Close()
	pg, err := devstack.StartPostgres(ctx, filepath.Join(state, "postgres"), devstack.PostgresOptions{Log: pgLog, Notice: os.Stdout})
	if err != nil {
		return err
	}
	infra = append(infra, pg)
	if err := pg.CreateDatabase(ctx, "communications"); err != nil {
		return err
	}
	redisLog, err := logFile("redis")
	if err != nil {
		return err
	}
	defer redisLog.Close()
	rd, err := devstack.StartRedis(ctx, filepath.Join(state, "redis"), devstack.RedisOptions{Log: redisLog})
	if err != nil {
		return err
	}
	infra = append(infra, rd)
	natsLog, err := logFile("nats")
	if err != nil {
		return err
	}
	defer natsLog.Close()
	nt, err := devstack.StartNATS(ctx, filepath.Join(state, "nats"), devstack.NATSOptions{Binary: natsBin, Log: natsLog})
	if err != nil {
		return err
	}
	infra = append(infra, nt)

	pgURL := pg.URL("communications")
	ports, err := devstack.FreePorts(7)
	if err != nil {
		return err
	}
	addr := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	services := []*service{
		{name: "auth", pkg: "auth", debugPort: ports[0], env: map[string]string{
			"AUTH_NATS_URL": nt.URL(), "AUTH_POSTGRES_URL": pgURL, "AUTH_DEBUG_ADDR": addr(ports[0]),
		}},
		{name: "chat", pkg: "chat", debugPort: ports[1], env: map[string]string{
			"CHAT_NATS_URL": nt.URL(), "CHAT_POSTGRES_URL": pgURL, "CHAT_DEBUG_ADDR": addr(ports[1]),
		}},
		{name: "history", pkg: "history", debugPort: ports[2], env: map[string]string{
			"HISTORY_NATS_URL": nt.URL(), "HISTORY_POSTGRES_URL": pgURL, "HISTORY_REDIS_URL": rd.URL(),
			"HISTORY_DEBUG_ADDR": addr(ports[2]),
			// Collections four times rarer than Go's default: the
			// writer allocates per message and keeps little
			// (services/history/README.md, "Runtime settings").
			"GOGC": "400",
		}},
	}
	for i, port := range []int{ports[3], ports[4]} {
		services = append(services, &service{name: fmt.Sprintf("gateway-%d", i+1), pkg: "gateway", debugPort: ports[5+i], env: map[string]string{
			"GATEWAY_NATS_URL": nt.URL(), "GATEWAY_REDIS_URL": rd.URL(),
			"GATEWAY_HTTP_ADDR": addr(port), "GATEWAY_DEBUG_ADDR": addr(ports[5+i]),
			"GATEWAY_WEB_DIR": filepath.Join(root, "web", "dist"),
			// Idle websockets' readers keep the smallest goroutine stack,
			// and the heap grows by half its live size between collections
			// (services/gateway/README.md, "Runtime settings").
			"GODEBUG": "adaptivestackstart=0", "GOGC": "50",
		}})
	}

	exited := make(chan *service, len(services))
	defer func() {
		// Gateways first, so their clients move on before the services go.
		for i := len(services) - 1; i >= 0; i-- {
			if s := services[i]; s.proc != nil {
				if err := s.proc.Stop(40 * time.Second); err != nil {
					fmt.Fprintln(os.Stderr, err)
				}
			}
		}
	}()
	start := func(s *service) error {
		cmd := exec.Command(filepath.Join(bin, s.pkg))
		cmd.Env = os.Environ()
		for k, v := range s.env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		p, err := devstack.Start(s.name, cmd, syscall.SIGTERM, s.log)
		if err != nil {
			return err
		}
		s.proc = p
		go func() {
			<-p.Done()
			exited <- s
		}()
		return nil
	}
	for _, s := range services {
		f, err := logFile(s.name)
		if err != nil {
			return err
		}
		defer f.Close()
		s.log = f
		if err := start(s); err != nil {
			return err
		}
	}
	for _, s := range services {
		if err := waitReady(ctx, s, logs, exited); err != nil {
			return err
		}
	}

	stackFile := devstack.StackFile{
		Gateways: []string{"http://" + addr(ports[3]), "http://" + addr(ports[4])},
		Debug:    map[string]string{},
		Pids:     map[string]int{"postgres": pg.Pid(), "redis": rd.Pid(), "nats-server": nt.Pid()},
		Postgres: pgURL, Redis: rd.URL(), NATS: nt.URL(),
	}
	for _, s := range services {
		stackFile.Debug[s.name] = "http://" + addr(s.debugPort)
		stackFile.Pids[s.name] = s.proc.Pid()
	}
	stackPath := filepath.Join(state, "stack.json")
	if err := devstack.WriteStackFile(stackPath, stackFile); err != nil {
		return err
	}
	defer os.Remove(stackPath)

	fmt.Printf(`
communications is running.

  web app and API, gateway 1:  http://127.0.0.1:%d
  web app and API, gateway 2:  http://127.0.0.1:%d
  websocket:                   ws://127.0.0.1:%d/ws  (and :%d)
  postgres:                    %s
  redis:                       %s
  nats:                        %s  (monitoring http://127.0.0.1:%d)
  metrics and health:          http://127.0.0.1:<port>/metrics, /healthz, /readyz on
                               auth :%d, chat :%d, history :%d, gateway :%d and :%d
  logs:                        %s
  state:                       %s
  stack description (JSON):    %s

Press Ctrl-C to stop everything.
`, ports[3], ports[4], ports[3], ports[4], pgURL, rd.URL(), nt.URL(), nt.MonitorPort,
		ports[0], ports[1], ports[2], ports[5], ports[6], logs, state, stackPath)

	for {
		select {
		case <-ctx.Done():
			fmt.Println("\nstopping ...")
			return nil
		case s := <-exited:
			if !restartGateways || s.pkg != "gateway" {
				return fmt.Errorf("%s exited unexpectedly (%v); see %s", s.name, s.proc.Err(), filepath.Join(logs, s.name+".log"))
			}
			fmt.Printf("%s exited (%v); starting it again\n", s.name, s.proc.Err())
			if err := start(s); err != nil {
				return err
			}
			if err := waitReady(ctx, s, logs, exited); err != nil {
				return err
			}
			stackFile.Pids[s.name] = s.proc.Pid()
			if err := devstack.WriteStackFile(stackPath, stackFile); err != nil {
				return err
			}
			fmt.Printf("%s running again (pid %d)\n", s.name, s.proc.Pid())
		case <-pg.Done():
			return fmt.Errorf("postgres exited unexpectedly; see %s", filepath.Join(logs, "postgres.log"))
		case <-rd.Done():
			return fmt.Errorf("redis exited unexpectedly; see %s", filepath.Join(logs, "redis.log"))
		case <-nt.Done():
			return fmt.Errorf("nats exited unexpectedly; see %s", filepath.Join(logs, "nats.log"))
		}
	}
}

func waitReady(ctx context.Context, s *service, logs string, exited <-chan *service) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", s.debugPort)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case e := <-exited:
			return fmt.Errorf("%s exited while starting (%v); see %s", e.name, e.proc.Err(), filepath.Join(logs, e.name+".log"))
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%s not ready: %s", s.name, url), ctx.Err())
		case <-tick.C:
		}
	}
}
