package ws

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/telemetry"
)

// benchEvent is a message event of a typical size.
var benchEvent = []byte(`{"type":"message","chat_id":7,"seq":1,"sender_id":1,"sender":"alice","client_msg_id":"m","text":"a typical chat message of some length","sent_at":"2026-11-24T12:00:00Z"}`)

// BenchmarkDeliverMessage hands one live message to each of 50 local
// connections of its chat, as the hub does for every fanout event (the
// per-connection position check and the queueing), and takes it off each
// queue as the connection's writer would.
func BenchmarkDeliverMessage(b *testing.B) {
	const members = 50
	conns := make([]*Conn, members)
	for i := range conns {
		c, _ := newTestConn(b, 256)
		c.start([]byte("hello"))
		queued(c)
		conns[i] = c
	}
	seq := int64(0)
	b.ReportAllocs()
	for b.Loop() {
		seq++
		for _, c := range conns {
			c.DeliverMessage(7, seq, false, benchEvent)
		}
		for _, c := range conns {
			c.qmu.Lock()
			clear(c.queue)
			c.queue = c.queue[:0]
			c.qmu.Unlock()
		}
	}
	b.StopTimer()
	for i, c := range conns {
		if c.isClosed() {
			b.Fatalf("connection %d closed with %d", i, c.closeCode)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/delivery")
}

// BenchmarkWriteFrame encodes queued events into one websocket frame, as
// the writer does, onto a socket that discards what it gets (no system
// call): one op is one frame.
func BenchmarkWriteFrame(b *testing.B) {
	for _, events := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("events=%d", events), func(b *testing.B) {
			s := NewServer(Config{}, noUpstream{}, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
			b.Cleanup(s.cancel)
			sock := &discardConn{}
			c := newConn(s, upgradeOn(b, s, sock), busapi.Session{User: busapi.User{ID: 7}}, "")
			batch := make([][]byte, events)
			for i := range batch {
				batch[i] = benchEvent
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := c.writeFrame(batch); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if got := sock.events.Load(); got < int64(b.N*events) {
				b.Fatalf("%d events written, want %d", got, b.N*events)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
		})
	}
}

// BenchmarkDeliverAndWrite is the whole of a delivery after the hub: one
// message to each of 50 connections of its chat (burst=1), or 8 at once
// (burst=8), queued and written by each connection's writer, which starts
// when something is queued, coalesces what waits into one frame, and ends;
// the sockets discard what they get, so no system call is counted. One op
// ends when every event has been written.
func BenchmarkDeliverAndWrite(b *testing.B) {
	for _, burst := range []int{1, 8} {
		b.Run(fmt.Sprintf("burst=%d", burst), func(b *testing.B) {
			const members = 50
			s := NewServer(Config{}, noUpstream{}, &fakeHub{}, telemetry.NewLogger(io.Discard, 0), noop.NewTracerProvider(), prometheus.NewRegistry())
			b.Cleanup(s.cancel)
			w := &writeCounter{done: make(chan struct{}, 1)}
			conns := make([]*Conn, members)
			for i := range conns {
				sock := &discardConn{counter: w}
				c := newConn(s, upgradeOn(b, s, sock), busapi.Session{User: busapi.User{ID: int64(i + 1)}}, "")
				c.start([]byte("{}"))
				conns[i] = c
			}
			w.wait(members) // the hellos
			seq := int64(0)
			b.ReportAllocs()
			for b.Loop() {
				for range burst {
					seq++
					for _, c := range conns {
						c.DeliverMessage(7, seq, false, benchEvent)
					}
				}
				w.wait(members * burst)
			}
			b.StopTimer()
			for i, c := range conns {
				if c.isClosed() {
					b.Fatalf("connection %d closed with %d", i, c.closeCode)
				}
				c.Close(1000, "")
				<-c.ended
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members*burst), "ns/delivery")
		})
	}
}

// writeCounter counts the events written to discardConns and lets the
// benchmark wait for a number of them.
type writeCounter struct {
	n, target atomic.Int64
	done      chan struct{}
}

func (w *writeCounter) add(n int64) {
	if w.n.Add(n) >= w.target.Load() {
		select {
		case w.done <- struct{}{}:
		default:
		}
	}
}

func (w *writeCounter) wait(n int) {
	if w.target.Add(int64(n)) <= w.n.Load() {
		return
	}
	for w.n.Load() < w.target.Load() {
		<-w.done
	}
}

// discardConn is a socket that takes every write at once. Each write after
// the handshake is one small frame; it counts the events in it.
type discardConn struct {
	events  atomic.Int64
	counter *writeCounter
}

func (d *discardConn) Write(p []byte) (int, error) {
	if bytes.HasPrefix(p, []byte("HTTP/")) {
		return len(p), nil // the handshake's answer
	}
	n := int64(1 + bytes.Count(p, []byte{'\n'}))
	d.events.Add(n)
	if d.counter != nil {
		d.counter.add(n)
	}
	return len(p), nil
}

func (d *discardConn) Read([]byte) (int, error)         { select {} }
func (d *discardConn) Close() error                     { return nil }
func (d *discardConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (d *discardConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (d *discardConn) SetDeadline(time.Time) error      { return nil }
func (d *discardConn) SetReadDeadline(time.Time) error  { return nil }
func (d *discardConn) SetWriteDeadline(time.Time) error { return nil }

// hijackRecorder is a response writer whose connection is sock.
type hijackRecorder struct {
	*httptest.ResponseRecorder
	sock net.Conn
}

func (h hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return h.sock, bufio.NewReadWriter(bufio.NewReader(h.sock), bufio.NewWriter(h.sock)), nil
}

// upgradeOn makes a server-side websocket on sock with s's upgrader.
func upgradeOn(tb testing.TB, s *Server, sock net.Conn) *websocket.Conn {
	tb.Helper()
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	c, err := s.upgrade(hijackRecorder{httptest.NewRecorder(), sock}, r)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}
