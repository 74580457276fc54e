package httpapi

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/gateway/internal/hub"
	"github.com/communications/communications/services/gateway/internal/ws"
)

// resolveUp counts the session lookups and answers them with resolve, or
// when nil with alice's session, answered by auth.
type resolveUp struct {
	Upstream
	lookups atomic.Int64
	resolve func(ctx context.Context) (busapi.Session, error)
}

func (u *resolveUp) ResolveSession(ctx context.Context, _ string) (busapi.Session, func() bool, error) {
	u.lookups.Add(1)
	if u.resolve != nil {
		s, err := u.resolve(ctx)
		return s, nil, err
	}
	s := busapi.Session{ID: "s1", User: busapi.User{ID: 7, Username: "alice"}, ExpiresAt: time.Now().Add(time.Hour)}
	return s, func() bool { return true }, nil
}

// chatsUp gives the websocket server alice's one chat.
type chatsUp struct{ ws.Upstream }

func (chatsUp) UserChats(context.Context, int64) ([]int64, error) { return []int64{1}, nil }

type nopHub struct{}

func (nopHub) Join(context.Context, hub.Sink, []int64) error                { return nil }
func (nopHub) Leave(hub.Sink, []int64)                                      {}
func (nopHub) PublishEphemeral(context.Context, int64, int64, []byte) error { return nil }

// testGateway is the API's routes with a websocket server, on a real
// HTTP server.
type testGateway struct {
	wss  *ws.Server
	reg  *prometheus.Registry
	addr string
	// handled counts the requests whose handling has ended.
	handled atomic.Int64
	logs    testenv.LogBuffer
}

// startGateway serves the API with a websocket server of cfg (and alice's
// one chat) and up; tune, if not nil, tunes the HTTP server.
func startGateway(t *testing.T, cfg ws.Config, up Upstream, tune func(*http.Server)) *testGateway {
	t.Helper()
	g := &testGateway{reg: prometheus.NewRegistry()}
	g.wss = ws.NewServer(cfg, chatsUp{}, nopHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), g.reg)
	t.Cleanup(g.wss.Close)
	engine := gin.New()
	New(telemetry.NewLogger(&g.logs, 0), Config{}, up, g.wss, Limits{}, nil, noop.NewTracerProvider(),
		propagation.TraceContext{}).Routes(engine)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer g.handled.Add(1)
		engine.ServeHTTP(w, r)
	})}
	if tune != nil {
		tune(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.addr = ln.Addr().String()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return g
}

// url is the websocket URL of the gateway with the query query.
func (g *testGateway) url(query string) string {
	if query != "" {
		query = "?" + query
	}
	return "ws://" + g.addr + "/ws" + query
}

// dialRaw opens a TCP connection to the gateway and sends a websocket
// handshake with the session token tok, without waiting for the answer.
func (g *testGateway) dialRaw(t *testing.T, tok string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if _, err := io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: "+g.addr+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer "+tok+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return conn
}

func bearer(tok string) http.Header {
	h := http.Header{}
	h.Set("Authorization", "Bearer "+tok)
	return h
}

// TestQueuedWebsocketOutlivesTimeouts: a websocket waiting for its turn to
// be set up is not ended by the HTTP server's read or write timeout nor by
// the set-up's own timeout (timeouts it did not cause); once a slot frees
// up it gets its hello.
func TestQueuedWebsocketOutlivesTimeouts(t *testing.T) {
	t.Parallel()
	const readTimeout = 100 * time.Millisecond
	g := startGateway(t, ws.Config{SetupConcurrency: 1, SetupTimeout: readTimeout}, &resolveUp{}, func(srv *http.Server) {
		srv.ReadTimeout, srv.WriteTimeout = readTimeout, readTimeout
	})

	// The one slot is taken.
	release, err := g.wss.Admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type dialed struct {
		c   *websocket.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		c, _, err := websocket.DefaultDialer.Dial(g.url(""), bearer("tok"))
		done <- dialed{c, err}
	}()
	// The client is in the queue ...
	testenv.Eventually(t, 10*time.Second, func() bool { return gauge(t, g.reg, "gateway_setups_waiting") == 1 }, "the websocket queued")
	// ... and waits there for several read timeouts (and write timeouts,
	// which the upgrade clears), and is not sent away.
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Since(start) < 5*readTimeout {
		select {
		case d := <-done:
			t.Fatalf("the queued websocket ended before its turn: %v", d.err)
		case <-tick.C:
		}
	}
	release()
	var d dialed
	select {
	case d = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("no upgrade after the slot was freed")
	}
	if d.err != nil {
		t.Fatalf("dial: %v", d.err)
	}
	defer d.c.Close()
	_ = d.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := d.c.ReadMessage()
	if err != nil || !strings.Contains(string(b), `"hello"`) {
		t.Errorf("first frame %q, %v; want hello", b, err)
	}
}

// TestWebsocketRefusedWhenQueueFull: past the set-up queue's bound the
// upgrade is refused with 503 unavailable and Retry-After.
func TestWebsocketRefusedWhenQueueFull(t *testing.T) {
	t.Parallel()
	g := startGateway(t, ws.Config{SetupConcurrency: 1, SetupQueue: 1}, &resolveUp{}, nil)
	wss, reg := g.wss, g.reg

	release, err := wss.Admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	// One more waits (the queue's one place) ...
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _, _ = wss.Admit(ctx) }()
	testenv.Eventually(t, 10*time.Second, func() bool { return gauge(t, reg, "gateway_setups_waiting") == 1 }, "one set-up waiting")
	// ... so a websocket is refused.
	_, resp, err := websocket.DefaultDialer.Dial(g.url(""), bearer("tok"))
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial past the queue's bound: %v (response %v), want 503", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), string(protocol.CodeUnavailable)) || resp.Header.Get("Retry-After") == "" {
		t.Errorf("refusal %s (Retry-After %q), want code unavailable and Retry-After", body, resp.Header.Get("Retry-After"))
	}
	if n := gauge(t, reg, "gateway_setups_refused_total"); n != 1 {
		t.Errorf("gateway_setups_refused_total = %v, want 1", n)
	}
}

// gauge returns the value of the gauge or counter named name in reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestWebsocketAnswerAfterLongWait: a websocket refused once its wait in
// the queue is over (its session refused, or the gateway draining) gets
// its answer, though the wait outlasted the HTTP server's write timeout,
// which was set when the request was read.
func TestWebsocketAnswerAfterLongWait(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// after ends the wait, given the release of the slot held
		after      func(g *testGateway, release func())
		wantStatus int
		wantCode   protocol.Code
	}{
		{name: "session refused", after: func(_ *testGateway, release func()) { release() },
			wantStatus: http.StatusUnauthorized, wantCode: protocol.CodeUnauthorized},
		{name: "gateway draining", after: func(g *testGateway, _ func()) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			g.wss.Drain(ctx, 1, time.Millisecond)
		}, wantStatus: http.StatusServiceUnavailable, wantCode: protocol.CodeUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := &resolveUp{resolve: func(context.Context) (busapi.Session, error) {
				return busapi.Session{}, busapi.Errorf(protocol.CodeUnauthorized, "no such session")
			}}
			// A write timeout of 1 ns has passed by the time the handler
			// answers: it stands for a wait longer than the timeout.
			g := startGateway(t, ws.Config{SetupConcurrency: 1}, up, func(srv *http.Server) { srv.WriteTimeout = time.Nanosecond })
			release, err := g.wss.Admit(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			type dialed struct {
				resp *http.Response
				err  error
			}
			done := make(chan dialed, 1)
			go func() {
				d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
				c, resp, err := d.Dial(g.url(""), bearer("tok"))
				if c != nil {
					_ = c.Close()
				}
				done <- dialed{resp, err}
			}()
			testenv.Eventually(t, 10*time.Second, func() bool { return gauge(t, g.reg, "gateway_setups_waiting") == 1 }, "the websocket queued")
			tc.after(g, release)
			d := <-done
			if d.resp == nil {
				t.Fatalf("dial: %v, no answer; want %d", d.err, tc.wantStatus)
			}
			body, _ := io.ReadAll(d.resp.Body)
			if d.resp.StatusCode != tc.wantStatus || !strings.Contains(string(body), `"code":"`+string(tc.wantCode)+`"`) {
				t.Errorf("answer %d %s, want %d with code %s", d.resp.StatusCode, body, tc.wantStatus, tc.wantCode)
			}
		})
	}
}

// TestWebsocketClientGoneDuringLookup: a client that goes away while its
// session is looked up is no internal error: nothing is logged.
func TestWebsocketClientGoneDuringLookup(t *testing.T) {
	t.Parallel()
	looking := make(chan struct{})
	up := &resolveUp{resolve: func(ctx context.Context) (busapi.Session, error) {
		close(looking)
		<-ctx.Done()
		return busapi.Session{}, fmt.Errorf("session lookup: %w", ctx.Err())
	}}
	g := startGateway(t, ws.Config{}, up, nil)
	conn := g.dialRaw(t, "tok")
	<-looking
	_ = conn.Close()
	testenv.Eventually(t, 10*time.Second, func() bool { return g.handled.Load() == 1 }, "the request handled")
	if logs := g.logs.String(); strings.Contains(logs, "request failed") {
		t.Errorf("a client gone during the lookup was logged as a failure:\n%s", logs)
	}
}

// TestQueuedWebsocketClientGone: a client that closes its connection while
// it waits in the queue leaves it, costs no session lookup, and the next
// one is set up once the slot frees.
func TestQueuedWebsocketClientGone(t *testing.T) {
	t.Parallel()
	up := &resolveUp{}
	g := startGateway(t, ws.Config{SetupConcurrency: 1}, up, nil)
	release, err := g.wss.Admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	conn := g.dialRaw(t, "tok")
	testenv.Eventually(t, 10*time.Second, func() bool { return gauge(t, g.reg, "gateway_setups_waiting") == 1 }, "the websocket queued")
	_ = conn.Close()
	testenv.Eventually(t, 10*time.Second, func() bool { return gauge(t, g.reg, "gateway_setups_waiting") == 0 }, "the queue left")
	testenv.Eventually(t, 10*time.Second, func() bool { return g.handled.Load() == 1 }, "the request handled")
	release()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, _, err := d.Dial(g.url(""), bearer("tok"))
	if err != nil {
		t.Fatalf("dial after the slot freed: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, b, err := c.ReadMessage(); err != nil || !strings.Contains(string(b), `"hello"`) {
		t.Errorf("first frame %q, %v; want hello", b, err)
	}
	if n := up.lookups.Load(); n != 1 {
		t.Errorf("%d session lookups, want 1 (none for the client gone)", n)
	}
}

// TestWebsocketRefusedBeforeQueue: what the gateway refuses without asking
// anyone (not a websocket handshake, a body, a malformed resume) is refused
// at once with 400 bad_request, without waiting in the queue or a session
// lookup.
func TestWebsocketRefusedBeforeQueue(t *testing.T) {
	t.Parallel()
	up := &resolveUp{}
	g := startGateway(t, ws.Config{SetupConcurrency: 1}, up, nil)
	// Every slot is taken: a request that reached the queue would wait.
	release, err := g.wss.Admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	handshake := func(h http.Header) {
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", "websocket")
		h.Set("Sec-WebSocket-Version", "13")
		h.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	}
	tests := []struct {
		name      string
		query     string
		body      string
		handshake bool
		wantMsg   string
	}{
		{name: "not a websocket", wantMsg: "not a websocket handshake"},
		{name: "a body", handshake: true, body: "{}", wantMsg: "no body"},
		{name: "malformed resume", handshake: true, query: "resume=1:x", wantMsg: "resume"},
		{name: "too many resumed chats", handshake: true, query: "resume=" + manyChats(1001), wantMsg: "resume"},
	}
	client := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, err := http.NewRequest(http.MethodGet, "http://"+g.addr+"/ws?"+tc.query, body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer tok")
			if tc.handshake {
				handshake(req.Header)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), `"code":"bad_request"`) || !strings.Contains(string(b), tc.wantMsg) {
				t.Errorf("answer %d %s, want 400 bad_request (%q)", resp.StatusCode, b, tc.wantMsg)
			}
		})
	}
	if n := up.lookups.Load(); n != 0 {
		t.Errorf("%d session lookups for requests refused without one", n)
	}
	if n := gauge(t, g.reg, "gateway_setups_waiting"); n != 0 {
		t.Errorf("%v set-ups waiting", n)
	}
}

// manyChats is a resume value listing n chats.
func manyChats(n int) string {
	items := make([]string, n)
	for i := range items {
		items[i] = strconv.Itoa(i+1) + ":0"
	}
	return strings.Join(items, ",")
}
