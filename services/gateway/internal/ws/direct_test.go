package ws

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/libs/testenv"
)

func TestDirectFrameHeader(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x81, 0}},
		{125, []byte{0x81, 125}},
		{126, []byte{0x81, 126, 0, 126}},
		{65535, []byte{0x81, 126, 0xff, 0xff}},
		{65536, []byte{0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0}},
	} {
		if got := directFrame(nil, tc.n); string(got) != string(tc.want) {
			t.Errorf("header of %d bytes: % x, want % x", tc.n, got, tc.want)
		}
	}
}

// startedSocket returns a server, a connection of it on a real socket
// that has sent hello and has no writer left, and the client's end.
func startedSocket(t *testing.T) (*Server, *Conn, *websocket.Conn) {
	t.Helper()
	s := NewServer(Config{SendQueue: 64}, noUpstream{}, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	c, client := socketConn(t, s)
	c.start([]byte("hello"))
	if got, _ := readEvents(t, client, 1); got[0] != "hello" {
		t.Fatalf("first event %q, want hello", got[0])
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		c.qmu.Lock()
		defer c.qmu.Unlock()
		return !c.writing
	}, "hello's writer ends")
	return s, c, client
}

// deliverFlushed delivers a message of chat 1 as the hub does: under its
// lock, then Flush.
func deliverFlushed(c *Conn, seq int64, event string) {
	c.DeliverMessage(1, seq, false, []byte(event))
	c.Flush()
}

// TestDirectWritesStayWholeUnderBackpressure: a message larger than the
// socket's buffers is written directly in part and its rest by a writer,
// before the messages that came meanwhile; once the client reads, every
// message arrives whole and in order, and the next is written directly
// again.
//
// Not parallel: copying the large message under the race detector would
// hold up the tests that answer pings within short deadlines.
func TestDirectWritesStayWholeUnderBackpressure(t *testing.T) {
	s, c, client := startedSocket(t)
	event := func(i, size int) string {
		return fmt.Sprintf("%05d:%s", i, strings.Repeat(string(rune('a'+i%26)), size))
	}
	// Larger than what the socket takes at once (its send buffer and the
	// client's receive window, a few MiB at most by default).
	want := []string{event(0, 8<<20)}
	deliverFlushed(c, 1, want[0])
	if d := testutil.ToFloat64(s.metrics.framesDeferred); d != 1 {
		t.Fatalf("%v frames written in part, want 1", d)
	}
	for i := 1; i < 20; i++ {
		want = append(want, event(i, 700+i*97))
		deliverFlushed(c, int64(i+1), want[i])
	}
	if d := testutil.ToFloat64(s.metrics.framesDirect); d != 1 {
		t.Errorf("%v direct frames while the rest waited, want 1", d)
	}
	got, _ := readEvents(t, client, len(want))
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d: %.20q (%d bytes), want %.20q (%d bytes)", i, got[i], len(got[i]), want[i], len(want[i]))
		}
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		c.qmu.Lock()
		defer c.qmu.Unlock()
		return !c.writing && len(c.queue) == 0
	}, "the writer ends once the queue is sent")
	deliverFlushed(c, int64(len(want)+1), "after")
	if got, _ := readEvents(t, client, 1); got[0] != "after" {
		t.Fatalf("event %q, want after", got[0])
	}
	if d := testutil.ToFloat64(s.metrics.framesDirect); d != 2 {
		t.Errorf("%v direct frames after the queue drained, want 2", d)
	}
}

// TestDirectWriteAfterTheDeadlinePassed: a write deadline of a writer's
// frame that has passed since does not fail the next direct write.
func TestDirectWriteAfterTheDeadlinePassed(t *testing.T) {
	t.Parallel()
	s, c, client := startedSocket(t)
	// As if the deadline the writer set for hello had passed.
	if err := c.guard.Conn.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	deliverFlushed(c, 1, "late")
	if got, _ := readEvents(t, client, 1); got[0] != "late" {
		t.Fatalf("event %q, want late", got[0])
	}
	if d := testutil.ToFloat64(s.metrics.framesDirect); d != 1 {
		t.Errorf("%v direct frames, want 1", d)
	}
	if c.isClosed() {
		t.Error("the connection closed")
	}
}

// TestGorillaWritesOnlyInAWriter: outside a writer gorilla cannot write to
// the socket (a direct write may be under way); in a writer it can.
func TestGorillaWritesOnlyInAWriter(t *testing.T) {
	t.Parallel()
	s := NewServer(Config{SendQueue: 64}, noUpstream{}, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	c, client := socketConn(t, s)
	if _, err := c.guard.Write([]byte("x")); !errors.Is(err, errWriteOutsideWriter) {
		t.Errorf("write outside a writer: %v, want refused", err)
	}
	c.start([]byte("hello")) // through a writer
	if got, _ := readEvents(t, client, 1); got[0] != "hello" {
		t.Fatalf("first event %q, want hello", got[0])
	}
}

// TestNothingAfterAnUnfinishedFrame: once a frame could not be finished,
// the close sends nothing more (not the queued events, not the close
// frame), which the client would read as part of that frame.
func TestNothingAfterAnUnfinishedFrame(t *testing.T) {
	t.Parallel()
	_, c, client := startedSocket(t)
	c.qmu.Lock()
	c.writing = true // in the writer's role, as a direct write (only the test delivers)
	c.qmu.Unlock()
	c.broken = true // as after a rest that could not be sent
	c.Deliver([]byte("queued"))
	c.Close(protocol.CloseServerError, "write failed")
	c.qmu.Lock()
	c.writing = false
	c.startWriter()
	c.qmu.Unlock()
	<-c.ended
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, b, err := client.ReadMessage()
	var ce *websocket.CloseError
	if err == nil || (errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure) {
		t.Errorf("after the unfinished frame: %d %q %v, want the socket closed without a frame", typ, b, err)
	}
}

// TestClientPingAndCloseAnsweredByTheWriter: a client's ping is answered
// with its data, in order with the events, and its close frame with its
// code.
func TestClientPingAndCloseAnsweredByTheWriter(t *testing.T) {
	t.Parallel()
	s := NewServer(Config{}, noUpstream{}, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
	t.Cleanup(s.cancel)
	client := servedDialer(t, s)()
	pongs := make(chan string, 1)
	client.SetPongHandler(func(data string) error { pongs <- data; return nil })
	if err := client.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// The frame after the ping is answered after the pong.
	if err := client.WriteMessage(websocket.TextMessage, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if got, _ := readEvents(t, client, 1); !strings.Contains(got[0], `"error"`) {
		t.Fatalf("answer %s, want an error event", got[0])
	}
	select {
	case data := <-pongs:
		if data != "are you there" {
			t.Errorf("pong %q, want the ping's data", data)
		}
	default:
		t.Error("no pong before the answer to the next frame")
	}
	if err := client.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4321, "bye"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := client.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4321 {
		t.Errorf("after the client's close: %v, want close 4321 echoed", err)
	}
}

// TestFlushLeavesAGorillaWriteToAWriter: while a write of gorilla's is
// under way (let in before the last writer ended), a flush does not write
// directly beside it but starts a writer.
func TestFlushLeavesAGorillaWriteToAWriter(t *testing.T) {
	t.Parallel()
	s, c, client := startedSocket(t)
	c.guard.busy.Add(1) // as gorilla's write from the reader
	deliverFlushed(c, 1, "through a writer")
	c.guard.busy.Add(-1)
	if got, _ := readEvents(t, client, 1); got[0] != "through a writer" {
		t.Fatalf("event %q, want the message", got[0])
	}
	if d := testutil.ToFloat64(s.metrics.framesDirect); d != 0 {
		t.Errorf("%v direct frames beside gorilla's write, want 0", d)
	}
}
