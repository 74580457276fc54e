package httpapi

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
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

// sessionsUp resolves every token to alice's session, answered by auth.
type sessionsUp struct{ Upstream }

func (sessionsUp) ResolveSession(context.Context, string) (busapi.Session, func() bool, error) {
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

// TestQueuedWebsocketOutlivesTimeouts: a websocket waiting for its turn to
// be set up is not ended by the HTTP server's read or write timeout nor by
// the set-up's own timeout (timeouts it did not cause); once a slot frees
// up it gets its hello.
func TestQueuedWebsocketOutlivesTimeouts(t *testing.T) {
	t.Parallel()
	const readTimeout = 100 * time.Millisecond
	wss := ws.NewServer(ws.Config{SetupConcurrency: 1, SetupTimeout: readTimeout}, chatsUp{}, nopHub{}, telemetry.NewLogger(io.Discard, 0),
		noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(wss.Close)
	engine := gin.New()
	New(telemetry.NewLogger(io.Discard, 0), Config{}, sessionsUp{}, wss, Limits{}, nil, noop.NewTracerProvider(),
		propagation.TraceContext{}).Routes(engine)
	srv := &http.Server{Handler: engine, ReadTimeout: readTimeout, WriteTimeout: readTimeout}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	// The one slot is taken.
	release, err := wss.Admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type dialed struct {
		c   *websocket.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		h := http.Header{}
		h.Set("Authorization", "Bearer tok")
		c, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/ws", h)
		done <- dialed{c, err}
	}()
	// The client waits in the queue for several read timeouts (and write
	// timeouts, which the upgrade clears), and is not sent away.
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
	reg := prometheus.NewRegistry()
	wss := ws.NewServer(ws.Config{SetupConcurrency: 1, SetupQueue: 1}, chatsUp{}, nopHub{}, telemetry.NewLogger(io.Discard, 0),
		noop.NewTracerProvider(), reg)
	t.Cleanup(wss.Close)
	engine := gin.New()
	New(telemetry.NewLogger(io.Discard, 0), Config{}, sessionsUp{}, wss, Limits{}, nil, noop.NewTracerProvider(),
		propagation.TraceContext{}).Routes(engine)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: engine}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

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
	h := http.Header{}
	h.Set("Authorization", "Bearer tok")
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/ws", h)
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
