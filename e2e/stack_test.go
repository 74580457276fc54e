package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/config"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/auth/authsvc"
	"github.com/communications/communications/services/chat/chatsvc"
	"github.com/communications/communications/services/gateway/gatewaysvc"
	"github.com/communications/communications/services/history/historysvc"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// stack is the whole system running in this process: auth, chat, history
// and two gateway replicas, on a fresh PostgreSQL database, a unique Redis
// prefix and an embedded NATS server. Tests talk to it only through the
// gateways' HTTP and websocket endpoints.
type stack struct {
	gateways    []string // base URLs of the gateway replicas
	postgresURL string
	natsURL     string
	prefix      string // NATS subject prefix
	redisURL    string
	redisPrefix string
	spans       *tracetest.InMemoryExporter
	// stopGateway[i] sends gateway i the shutdown signal; gatewayDone[i]
	// is closed when its Run has returned.
	stopGateway []context.CancelFunc
	gatewayDone []chan struct{}
	// abandonPresence[i], closed, makes gateway i stop renewing its
	// presence lease as if it had died (see killPresence).
	abandonPresence []chan struct{}
	// registries holds each service's Prometheus registry by name (auth,
	// chat, history, gateway-1, gateway-2): what its /metrics serves.
	registries map[string]*prometheus.Registry
}

// Presence timing of the test stack: a dead gateway's users are offline
// within presenceTTL + presenceSweep.
const (
	presenceTTL   = 2 * time.Second
	presenceSweep = 500 * time.Millisecond
)

// killPresence makes gateway i look dead to the others: it stops renewing
// its presence lease and writes nothing more about presence, and does no
// cleanup, while its connections stay open.
func (s *stack) killPresence(i int) { close(s.abandonPresence[i]) }

// newTelemetry gives one service its own tracer provider (so its spans carry
// its service name) exporting into the shared in-memory exporter.
func newTelemetry(t *testing.T, name string, spans *tracetest.InMemoryExporter) *telemetry.Telemetry {
	t.Helper()
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSyncer(spans),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(name))),
	)
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelInfo
	}
	return &telemetry.Telemetry{
		Logger:         telemetry.NewLogger(os.Stderr, level).With("service", name),
		TracerProvider: tp,
		Propagator:     telemetry.Propagator(),
		Registry:       telemetry.NewRegistry(),
	}
}

func startStack(t *testing.T) *stack {
	t.Helper()
	pgURL := testenv.Postgres(t)
	redisURL, redisPrefix := testenv.Redis(t)
	ns := testenv.NATS(t)
	s := &stack{postgresURL: pgURL, natsURL: ns.ClientURL(), prefix: testenv.SubjectPrefix(), spans: tracetest.NewInMemoryExporter(),
		redisURL: redisURL, redisPrefix: redisPrefix, registries: map[string]*prometheus.Registry{}}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	goRun := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("service stopped with error: %v", err)
		}
	})

	authCfg := authsvc.Config{}
	mustDefaults(t, authsvc.EnvPrefix, &authCfg, map[string]string{
		"NATS_URL": s.natsURL, "POSTGRES_URL": pgURL, "SUBJECT_PREFIX": s.prefix, "DEBUG_ADDR": "127.0.0.1:0",
	})
	chatCfg := chatsvc.Config{}
	mustDefaults(t, chatsvc.EnvPrefix, &chatCfg, map[string]string{
		"NATS_URL": s.natsURL, "POSTGRES_URL": pgURL, "SUBJECT_PREFIX": s.prefix, "DEBUG_ADDR": "127.0.0.1:0",
	})
	histCfg := historysvc.Config{}
	mustDefaults(t, historysvc.EnvPrefix, &histCfg, map[string]string{
		"NATS_URL": s.natsURL, "POSTGRES_URL": pgURL, "SUBJECT_PREFIX": s.prefix, "DEBUG_ADDR": "127.0.0.1:0",
		"REDIS_URL": redisURL, "REDIS_PREFIX": redisPrefix,
		// Remembered read access lasts long here, so that the tests show
		// a removal ending it through the membership event.
		"ACCESS_CACHE_TTL": "1m",
	})
	authTel, chatTel, histTel := newTelemetry(t, "auth", s.spans), newTelemetry(t, "chat", s.spans), newTelemetry(t, "history", s.spans)
	s.registries["auth"], s.registries["chat"], s.registries["history"] = authTel.Registry, chatTel.Registry, histTel.Registry
	goRun("auth", func() error { return authsvc.Run(ctx, authCfg, authTel) })
	goRun("chat", func() error { return chatsvc.Run(ctx, chatCfg, chatTel) })
	goRun("history", func() error { return historysvc.Run(ctx, histCfg, histTel) })
	for i := range 2 {
		gwCfg := gatewaysvc.Config{}
		mustDefaults(t, gatewaysvc.EnvPrefix, &gwCfg, map[string]string{
			"NATS_URL": s.natsURL, "REDIS_URL": redisURL, "REDIS_PREFIX": redisPrefix, "SUBJECT_PREFIX": s.prefix,
			"HTTP_ADDR": "127.0.0.1:0", "DEBUG_ADDR": "127.0.0.1:0", "SHUTDOWN_TIMEOUT": "10s", "DRAIN_TIMEOUT": "5s",
			"WEB_DIR": webDir(t), "PRESENCE_TTL": presenceTTL.String(), "PRESENCE_REFRESH_INTERVAL": (presenceTTL / 4).String(),
			"PRESENCE_SWEEP_INTERVAL": presenceSweep.String(),
			// Cached sessions last long here, so that the tests show a
			// logout ending them through the revocation event.
			"SESSION_CACHE_TTL": "1m",
		})
		started := make(chan gatewaysvc.Started, 1)
		tel := newTelemetry(t, "gateway", s.spans)
		s.registries[fmt.Sprintf("gateway-%d", i+1)] = tel.Registry
		gctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		abandon := make(chan struct{})
		s.abandonPresence = append(s.abandonPresence, abandon)
		s.stopGateway = append(s.stopGateway, stop)
		s.gatewayDone = append(s.gatewayDone, done)
		goRun(fmt.Sprintf("gateway-%d", i+1), func() error {
			defer close(done)
			return gatewaysvc.Run(gctx, gwCfg, tel, started, gatewaysvc.AbandonPresence(abandon))
		})
		select {
		case st := <-started:
			s.gateways = append(s.gateways, "http://"+st.HTTPAddr)
		case err := <-errs:
			t.Fatalf("gateway %d did not start: %v", i+1, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("gateway %d did not start", i+1)
		}
	}
	// Ready when auth, chat and history answer requests and every gateway
	// answers /readyz.
	nc, err := nats.Connect(s.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subj, err := subjects.New(s.prefix)
	if err != nil {
		t.Fatal(err)
	}
	bus := natsbus.NewClient(nc, noop.NewTracerProvider())
	probes := map[string]func(context.Context) error{
		"auth": func(ctx context.Context) error {
			err := bus.Request(ctx, subj.AuthSession(), busapi.SessionRequest{Token: "probe"}, nil)
			if busapi.CodeOf(err) == protocol.CodeUnauthorized {
				return nil
			}
			return err
		},
		"chat": func(ctx context.Context) error {
			return bus.Request(ctx, subj.ChatUserChats(), busapi.UserChatsRequest{UserID: 1}, nil)
		},
		"history": func(ctx context.Context) error {
			return bus.Request(ctx, subj.HistoryPage(), busapi.HistoryRequest{ChatID: 1, Limit: 1}, nil)
		},
	}
	for name, probe := range probes {
		var err error
		testenv.EventuallyDescribe(t, 30*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			err = probe(ctx)
			return err == nil
		}, func() string { return fmt.Sprintf("%s answers requests (last error: %v)", name, err) })
	}
	for _, gw := range s.gateways {
		testenv.Eventually(t, 30*time.Second, func() bool {
			resp, err := http.Get(gw + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}, "gateway %s ready", gw)
	}
	return s
}

// webDir is the built web app (scripts/test builds it before the tests).
func webDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "web", "dist"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// mustDefaults fills cfg from its env defaults with overrides (keys without
// the prefix), as the service's main would from the environment.
func mustDefaults[T any](t *testing.T, prefix string, cfg *T, overrides map[string]string) {
	t.Helper()
	env := map[string]string{}
	for k, v := range overrides {
		env[prefix+k] = v
	}
	got, err := config.LoadFrom[T](prefix, env)
	if err != nil {
		t.Fatalf("config %s: %v", prefix, err)
	}
	*cfg = got
}

// client is one person's session on one gateway.
type client struct {
	t        *testing.T
	base     string
	token    string
	userID   int64
	username string
}

type apiError struct {
	Status int
	Code   string `json:"code"`
	Msg    string `json:"message"`
}

func (e *apiError) Error() string { return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Msg) }

// do sends a JSON request and decodes a JSON answer into out. A non-2xx
// answer is returned as *apiError.
func do(ctx context.Context, method, url, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var eb struct {
			Error apiError `json:"error"`
		}
		if err := json.Unmarshal(data, &eb); err != nil {
			return fmt.Errorf("HTTP %d with a body that is not a JSON error: %q", resp.StatusCode, data)
		}
		eb.Error.Status = resp.StatusCode
		return &eb.Error
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// testPassword is every test user's password.
const testPassword = "correct horse battery staple"

// signUp registers and logs in a new user through gateway base, retrying
// while the services behind the gateway are still starting.
func signUp(t *testing.T, base, username string) *client {
	t.Helper()
	ctx := context.Background()
	const password = testPassword
	var err error
	testenv.EventuallyDescribe(t, 30*time.Second, func() bool {
		err = do(ctx, http.MethodPost, base+"/api/v1/auth/register", "", map[string]string{"username": username, "password": password}, nil)
		var ae *apiError
		return err == nil || !(errors.As(err, &ae) && ae.Code == string(protocol.CodeUnavailable))
	}, func() string { return fmt.Sprintf("register %s: %v", username, err) })
	if err != nil {
		t.Fatalf("register %s: %v", username, err)
	}
	var login struct {
		Token string `json:"token"`
		User  struct {
			ID       int64  `json:"id"`
			Username string `json:"username"`
		} `json:"user"`
	}
	if err := do(ctx, http.MethodPost, base+"/api/v1/auth/login", "", map[string]any{"username": username, "password": password, "token": true}, &login); err != nil {
		t.Fatalf("login %s: %v", username, err)
	}
	if login.Token == "" || login.User.ID == 0 {
		t.Fatalf("login %s: no token or user in %+v", username, login)
	}
	return &client{t: t, base: base, token: login.Token, userID: login.User.ID, username: login.User.Username}
}

// wsConn is a websocket client that collects every event it receives.
type wsConn struct {
	t    *testing.T
	conn *websocket.Conn

	mu     sync.Mutex
	events []map[string]any
	closed error
}

func (c *client) dial() *wsConn {
	c.t.Helper()
	return c.dialQuery("")
}

// dialQuery opens a websocket with a query string (such as resume=1:41).
func (c *client) dialQuery(query string) *wsConn {
	c.t.Helper()
	url := "ws" + c.base[len("http"):] + "/ws"
	if query != "" {
		url += "?" + query
	}
	h := http.Header{"Authorization": {"Bearer " + c.token}}
	conn, resp, err := websocket.DefaultDialer.Dial(url, h)
	if err != nil {
		c.t.Fatalf("dial %s: %v (response %v)", url, err, resp)
	}
	w := &wsConn{t: c.t, conn: conn}
	go w.readLoop()
	c.t.Cleanup(func() { _ = conn.Close() })
	w.waitEvent(func(e map[string]any) bool { return e["type"] == protocol.TypeHello }, "hello")
	return w
}

func (w *wsConn) readLoop() {
	for {
		_, frame, err := w.conn.ReadMessage()
		if err != nil {
			w.mu.Lock()
			w.closed = err
			w.mu.Unlock()
			return
		}
		events, err := protocol.SplitFrame(frame)
		if err != nil {
			continue
		}
		for _, raw := range events {
			var e map[string]any
			if json.Unmarshal(raw, &e) == nil {
				w.mu.Lock()
				w.events = append(w.events, e)
				w.mu.Unlock()
			}
		}
	}
}

func (w *wsConn) send(ev protocol.ClientEvent) {
	w.t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.conn.WriteMessage(websocket.TextMessage, b); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

// waitEvent polls until an event matching match has arrived and returns it.
func (w *wsConn) waitEvent(match func(map[string]any) bool, what string) map[string]any {
	w.t.Helper()
	var found map[string]any
	testenv.EventuallyDescribe(w.t, 20*time.Second, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, e := range w.events {
			if match(e) {
				found = e
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("event %s (connection error: %v)", what, w.closeErr()) })
	return found
}

func (w *wsConn) closeErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

// count returns how many received events match.
func (w *wsConn) count(match func(map[string]any) bool) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, e := range w.events {
		if match(e) {
			n++
		}
	}
	return n
}

func websocketDial(url string, h http.Header) (*websocket.Conn, *http.Response, error) {
	return websocket.DefaultDialer.Dial(url, h)
}

func bobHeader(c *client) http.Header { return http.Header{"Authorization": {"Bearer " + c.token}} }
