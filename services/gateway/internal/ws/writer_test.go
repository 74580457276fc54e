package ws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/gateway/internal/hub"
)

// socketConn is a connection of s on a real websocket, and the client's
// end of it.
func socketConn(t *testing.T, s *Server) (*Conn, *websocket.Conn) {
	t.Helper()
	conns := make(chan *Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sock, err := s.upgrade(w, r)
		if err != nil {
			return
		}
		conns <- newConn(s, sock, busapi.Session{User: busapi.User{ID: 7}}, "")
	}))
	t.Cleanup(srv.Close)
	client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return <-conns, client
}

// servedDialer serves s (as alice, user 7) on a test server and returns a
// dial function: each call opens a websocket through Serve and reads its
// hello.
func servedDialer(t *testing.T, s *Server) func() *websocket.Conn {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Serve(w, r, busapi.Session{ID: "s", User: busapi.User{ID: 7, Username: "alice"}}, "token", nil)
	}))
	t.Cleanup(srv.Close)
	return func() *websocket.Conn {
		t.Helper()
		client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		if got, _ := readEvents(t, client, 1); !strings.Contains(got[0], `"hello"`) {
			t.Fatalf("first event %s, want hello", got[0])
		}
		return client
	}
}

// readEvents reads frames until n events (newline-delimited) arrived.
func readEvents(t *testing.T, client *websocket.Conn, n int) (events []string, frames int) {
	t.Helper()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(events) < n {
		_, b, err := client.ReadMessage()
		if err != nil {
			t.Fatalf("after %d events: %v", len(events), err)
		}
		frames++
		events = append(events, strings.Split(string(b), "\n")...)
	}
	return events, frames
}

// TestWriterRunsOnlyWhileQueued: events queued before hello go out behind
// it, everything queued arrives in order (several events per frame when
// they wait together), and no writer is left once the queue is empty.
func TestWriterRunsOnlyWhileQueued(t *testing.T) {
	t.Parallel()
	s := NewServer(Config{SendQueue: 64}, noUpstream{}, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	c, client := socketConn(t, s)
	c.Deliver([]byte("early"))
	c.start([]byte("hello"))
	want := []string{"hello", "early"}
	for round := range 3 {
		for i := range 20 {
			ev := fmt.Sprintf("%d-%d", round, i)
			want = append(want, ev)
			c.Deliver([]byte(ev))
		}
		testenv.Eventually(t, 5*time.Second, func() bool {
			c.qmu.Lock()
			defer c.qmu.Unlock()
			return !c.writing && len(c.queue) == 0
		}, "a writer still runs with nothing queued")
	}
	got, frames := readEvents(t, client, len(want))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if frames > len(want) {
		t.Errorf("%d frames for %d events", frames, len(want))
	}
	c.qmu.Lock()
	kept := cap(c.queue)
	c.qmu.Unlock()
	if kept > keptQueue {
		t.Errorf("an idle connection keeps a queue of %d slots, want at most %d", kept, keptQueue)
	}
}

// TestCloseSendsQueuedThenCloseFrame: closing writes what is still queued,
// then the close frame with the code, and closes the socket; a slow
// consumer gets the close frame only.
func TestCloseSendsQueuedThenCloseFrame(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		code int
		want []string
	}{
		{name: "going away", code: protocol.CloseGoingAway, want: []string{"hello", "last words"}},
		{name: "slow consumer", code: protocol.CloseSlowConsumer, want: []string{"hello"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := NewServer(Config{}, noUpstream{}, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
			t.Cleanup(s.cancel)
			c, client := socketConn(t, s)
			c.start([]byte("hello"))
			if got, _ := readEvents(t, client, 1); !cmp.Equal([]string{"hello"}, got) {
				t.Fatalf("first events %v, want hello", got)
			}
			// The writer that sent hello may still be on its way out;
			// once it is gone, nothing starts another before the close.
			testenv.Eventually(t, 5*time.Second, func() bool {
				c.qmu.Lock()
				defer c.qmu.Unlock()
				return !c.writing
			}, "the writer of hello exits")
			c.qmu.Lock()
			c.queue = append(c.queue, []byte("last words"))
			c.qmu.Unlock()
			c.Close(tc.code, "bye")
			<-c.ended
			got := []string{"hello"}
			for {
				_, b, err := client.ReadMessage()
				if ce, ok := errors.AsType[*websocket.CloseError](err); ok {
					if ce.Code != tc.code {
						t.Errorf("close code %d, want %d", ce.Code, tc.code)
					}
					break
				}
				if err != nil {
					t.Fatalf("read: %v, want a close frame", err)
				}
				got = append(got, strings.Split(string(b), "\n")...)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOneGoroutinePerIdleConnection: once Serve has set a connection up and
// nothing is queued, the connection runs one goroutine, its reader.
func TestOneGoroutinePerIdleConnection(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	s, _ := newLiveServer(t, nil)
	dial := servedDialer(t, s)
	dial() // the test server's own goroutines start with the first one
	testenv.Eventually(t, 5*time.Second, func() bool { return s.Count() == 1 }, "the first connection is not registered")
	before := runtime.NumGoroutine() - 1
	const n = 100
	for range n {
		dial()
	}
	testenv.EventuallyDescribe(t, 5*time.Second, func() bool {
		return runtime.NumGoroutine()-before <= n+1
	}, func() string {
		return fmt.Sprintf("%d goroutines for %d idle connections, want one each", runtime.NumGoroutine()-before, n+1)
	})
}

// panicUpstream panics on a send, as a bug in a handler would.
type panicUpstream struct{ noUpstream }

func (panicUpstream) Send(context.Context, busapi.SendRequest) (busapi.SendResult, error) {
	panic("a bug in the send path")
}

// TestPanicInAHandlerEndsOnlyItsConnection: the reader runs outside the
// HTTP server, so a panic while serving a frame is recovered there: the
// client gets a server-error close, the connection is forgotten, and the
// gateway keeps serving others.
func TestPanicInAHandlerEndsOnlyItsConnection(t *testing.T) {
	t.Parallel()
	s := NewServer(Config{}, panicUpstream{}, &fakeHub{joined: map[hub.Sink][]int64{}}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	dial := servedDialer(t, s)
	bystander := dial()
	victim := dial()
	if err := victim.WriteMessage(websocket.TextMessage, []byte(`{"type":"send","id":"1","chat_id":1,"client_msg_id":"m1","text":"boom"}`)); err != nil {
		t.Fatal(err)
	}
	_ = victim.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := victim.ReadMessage()
		if err == nil {
			continue
		}
		ce, ok := errors.AsType[*websocket.CloseError](err)
		if !ok || ce.Code != protocol.CloseServerError {
			t.Fatalf("victim read %v, want close %d", err, protocol.CloseServerError)
		}
		break
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return s.Count() == 1 }, "the panicked connection is still registered")
	if err := bystander.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping","id":"p"}`)); err != nil {
		t.Fatal(err)
	}
	if got, _ := readEvents(t, bystander, 1); !strings.Contains(got[0], `"pong"`) {
		t.Fatalf("bystander got %s, want pong", got[0])
	}
}

// TestClockPingsAndExpires: the server's clock has each connection's writer
// send a ping every ping interval (a ping due before hello goes out alone:
// the events queued before hello still wait behind it), and closes a
// connection whose session has expired with CloseUnauthorized.
func TestClockPingsAndExpires(t *testing.T) {
	t.Parallel()
	t.Run("pings", func(t *testing.T) {
		t.Parallel()
		s := NewServer(Config{PongWait: time.Second, PingInterval: 20 * time.Millisecond}, noUpstream{}, &fakeHub{},
			telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
		t.Cleanup(s.cancel)
		c, client := socketConn(t, s)
		pings := make(chan struct{}, 100)
		client.SetPingHandler(func(string) error {
			pings <- struct{}{}
			return nil
		})
		c.Deliver([]byte("early"))
		c.queuePing()
		testenv.Eventually(t, 5*time.Second, func() bool {
			c.qmu.Lock()
			defer c.qmu.Unlock()
			return !c.writing
		}, "the writer of a ping before hello still runs")
		if n := c.queued(); n != 1 {
			t.Fatalf("%d events queued after a ping before hello, want the early one", n)
		}
		c.start([]byte("hello"))
		got, _ := readEvents(t, client, 2)
		if diff := cmp.Diff([]string{"hello", "early"}, got); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
		if len(pings) != 1 {
			t.Errorf("%d pings before hello, want 1", len(pings))
		}
		if !s.add(c) {
			t.Fatal("the server refused the connection")
		}
		go func() {
			for {
				if _, _, err := client.ReadMessage(); err != nil {
					return
				}
			}
		}()
		testenv.Eventually(t, 5*time.Second, func() bool { return len(pings) >= 4 }, "the clock sends no pings")
	})
	t.Run("session expiry", func(t *testing.T) {
		t.Parallel()
		s := NewServer(Config{}, noUpstream{}, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
		t.Cleanup(s.cancel)
		c, client := socketConn(t, s)
		c.start([]byte("hello"))
		c.expiresAt = time.Now().Add(50 * time.Millisecond).UnixNano()
		if !s.add(c) {
			t.Fatal("the server refused the connection")
		}
		_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			_, _, err := client.ReadMessage()
			if err == nil {
				continue
			}
			ce, ok := errors.AsType[*websocket.CloseError](err)
			if !ok || ce.Code != protocol.CloseUnauthorized {
				t.Fatalf("read %v, want close %d", err, protocol.CloseUnauthorized)
			}
			break
		}
	})
}

// TestShortPongWaitKeepsIdleConnections: with a pong wait of well under
// the clock's usual second, pings still leave in time for the client's
// pongs to keep the read deadline ahead: an idle client that answers pings
// stays connected over many pong waits.
func TestShortPongWaitKeepsIdleConnections(t *testing.T) {
	t.Parallel()
	const pongWait = 600 * time.Millisecond
	s := NewServer(Config{PongWait: pongWait}, noUpstream{}, &fakeHub{joined: map[hub.Sink][]int64{}}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.Close)
	client := servedDialer(t, s)()
	var pings atomic.Int64
	client.SetPingHandler(func(data string) error {
		pings.Add(1)
		return client.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	readErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := client.ReadMessage(); err != nil {
				readErr <- err
				return
			}
		}
	}()
	const want = 8 // pings, so about 8 pong waits
	testenv.EventuallyDescribe(t, 30*time.Second, func() bool {
		select {
		case err := <-readErr:
			t.Fatalf("connection ended after %d pings: %v", pings.Load(), err)
		default:
		}
		return pings.Load() >= want
	}, func() string { return fmt.Sprintf("%d of %d pings", pings.Load(), want) })
	if n := s.Count(); n != 1 {
		t.Errorf("%d connections registered, want the idle one", n)
	}
}
