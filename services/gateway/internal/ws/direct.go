package ws

import (
	"bufio"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/communications/communications/services/gateway/internal/hub"

	"github.com/communications/communications/libs/protocol"
)

// Direct writes. Most messages reach a connection whose send queue is
// empty and whose socket has room. The hub's dispatcher hands a message to
// each local member with DeliverMessage, under the hub's lock, which only
// queues it (deliverDeferred); once the lock is released it calls Flush on
// each, and Flush writes what is queued to the socket itself, with one
// non-blocking write, instead of waking a writer on the pool. Only what
// the socket does not take at once (a full send buffer: nothing, or part
// of the frame) goes to a writer, which finishes it with the write
// deadline. Handing each event to a writer cost about a fifth of the
// gateway's CPU per delivery (waking the writer, its scheduling, a
// deadline timer per frame) beside the write itself (docs/benchmarks.md).
//
// Flush takes the writer's role (Conn.writing), so the socket has one
// writer at a time as before. gorilla/websocket does not see these
// writes, so it must not write either while one may be under way: the
// socket is handed to gorilla wrapped (guardedConn), and gorilla's writes
// pass only while a writer runs; every frame goes through a writer
// (pings, pongs, the close frame), and gorilla's own answers to a
// client's ping and close frames are replaced by handlers that queue them
// (prepareRead), and the read limit is the gateway's own (readFrame).
// gorilla still tries to write a close frame from the reader when it reads
// a frame that breaks the protocol: outside a writer that write fails,
// gorilla then refuses every later write, and the connection closes
// without its close frame (1006 for that client instead of 1002).

// directFrame appends to b the header of an unmasked, final text frame of
// n payload bytes, as a server sends it (RFC 6455, section 5.2).
func directFrame(b []byte, n int) []byte {
	const finText = 0x80 | 0x1
	switch {
	case n <= 125:
		return append(b, finText, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, finText, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, finText, 127), uint64(n))
	}
}

// Flush writes the messages DeliverMessage queued, when no writer took
// them meanwhile: directly, or through a writer for what the socket does
// not take at once.
func (c *Conn) Flush() {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	// Without a writer, what is queued after hello was left for a flush
	// (every other way of queuing starts a writer).
	if c.raw == nil || c.writing || c.closing || len(c.queue) == 0 || !c.started.Load() {
		return // nothing left for a flush, a writer runs, or Close started one
	}
	if c.pingDue || c.pongDue || c.guard.busy.Load() != 0 {
		// A ping or pong first, or a write of gorilla's from the reader
		// let in while the last writer ran is still under way: a writer
		// (gorilla's own lock orders the two writes).
		c.startWriter()
		return
	}
	// The events stay queued while they are written, so the queue's bound
	// counts them; only the holder of the writer's role takes events out,
	// and others only append, so c.queue[:n] stays these events.
	n := min(len(c.queue), maxEventsPerFrame)
	events := c.queue[:n:n]
	c.writing = true
	c.qmu.Unlock()
	written := c.writeDirect(events)
	c.qmu.Lock()
	c.writing = false
	if written {
		left := copy(c.queue, c.queue[n:])
		clear(c.queue[left:])
		c.queue = c.queue[:left]
	}
	if len(c.queue) > 0 || c.rest != nil || c.closing || c.pingDue || c.pongDue {
		c.startWriter()
	}
}

// writeDirect writes events as one frame, newline-delimited, with
// non-blocking writes, on the caller's goroutine; call it in the writer's
// role, with nothing queued before the events. It reports false when the
// socket took none of the frame (the events stay queued for a writer).
// Part of the frame written leaves the rest in c.rest for the writer,
// which sends it before anything else. A failed write closes the
// connection and counts as written (nothing more goes out).
func (c *Conn) writeDirect(events [][]byte) (written bool) {
	defer func() {
		// As in a writer: a panic ends the connection, not the gateway.
		if r := recover(); r != nil {
			c.srv.log.Error("panic in a direct write", "panic", r, "stack", string(debug.Stack()))
			c.broken = true
			c.Close(protocol.CloseServerError, "internal error")
			written = true
		}
	}()
	size := len(events) - 1
	for _, ev := range events {
		size += len(ev)
	}
	bp := c.srv.frames.Get().(*[]byte)
	frame := directFrame((*bp)[:0], size)
	for i, ev := range events {
		if i > 0 {
			frame = append(frame, '\n')
		}
		frame = append(frame, ev...)
	}
	n, err := c.writeNonBlocking(frame)
	switch {
	case err != nil:
		c.putFrame(bp, frame)
		c.broken = n > 0 // a frame begun cannot be ended
		c.Close(protocol.CloseServerError, "write failed")
		return true // nothing more goes out: the writer ends the socket
	case n == 0:
		c.putFrame(bp, frame)
		return false
	}
	c.srv.metrics.framesOut.Inc()
	c.srv.metrics.framesDirect.Inc()
	c.srv.metrics.eventsOut.Add(float64(len(events)))
	if n == len(frame) {
		c.putFrame(bp, frame)
		return true
	}
	c.srv.metrics.framesDeferred.Inc()
	c.rest, c.restBuf = frame[n:], bp
	*bp = frame
	return true
}

// Conn is the hub's Flusher: DeliverMessage leaves messages for Flush.
var _ hub.Flusher = (*Conn)(nil)

// putFrame returns a frame's buffer to the pool (a large one is let go).
func (c *Conn) putFrame(bp *[]byte, frame []byte) {
	if cap(frame) <= maxPooledFrame {
		*bp = frame[:0]
		c.srv.frames.Put(bp)
	}
}

// writeNonBlocking writes as much of p as the socket takes without
// waiting and returns how much that was.
func (c *Conn) writeNonBlocking(p []byte) (int, error) {
	n := 0
	var werr error
	write := func(fd uintptr) bool {
		for n < len(p) {
			m, err := syscall.Write(int(fd), p[n:])
			if m > 0 {
				n += m
			}
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil && !errors.Is(err, syscall.EAGAIN) {
				werr = err
			}
			if err != nil || m <= 0 {
				break
			}
		}
		return true // never wait for the socket: a writer does that
	}
	err := c.raw.Write(write)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline of a writer's last write has passed since (the
		// runtime then refuses every write); no writer runs and gorilla
		// cannot write now (guardedConn), so no write of theirs needs it.
		if err = c.guard.Conn.SetWriteDeadline(time.Time{}); err == nil {
			err = c.raw.Write(write)
		}
	}
	if err == nil {
		err = werr
	}
	return n, err
}

// flushRest sends the rest of a frame written in part (c.rest) within the
// deadline; the writer calls it before it sends anything else.
func (c *Conn) flushRest(deadline time.Time) error {
	rest, bp := c.rest, c.restBuf
	c.rest, c.restBuf = nil, nil
	defer c.putFrame(bp, *bp)
	nc := c.guard.Conn
	if err := nc.SetWriteDeadline(deadline); err != nil {
		return err
	}
	_, err := nc.Write(rest)
	return err
}

// rawConn returns the socket's raw connection for direct writes, or nil
// when the socket has none (then every event goes through a writer).
func rawConn(nc net.Conn) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// guardedConn is the socket as gorilla/websocket sees it: its writes pass
// only while allow is set, which a writer sets while it runs (direct
// writes happen outside writers). Refused, gorilla marks the connection
// failed for writing, as after any failed write.
type guardedConn struct {
	net.Conn
	allow atomic.Bool
	// busy counts gorilla's writes under way: one let in just before a
	// writer ended may still run when Flush takes the role, which then
	// starts a writer instead of writing directly.
	busy atomic.Int32
}

// errWriteOutsideWriter is what gorilla gets for a write outside a writer.
var errWriteOutsideWriter = errors.New("websocket write outside the connection's writer")

func (g *guardedConn) Write(p []byte) (int, error) {
	g.busy.Add(1)
	defer g.busy.Add(-1)
	if !g.allow.Load() {
		return 0, errWriteOutsideWriter
	}
	return g.Conn.Write(p)
}

func (g *guardedConn) SetWriteDeadline(t time.Time) error {
	g.busy.Add(1)
	defer g.busy.Add(-1)
	if !g.allow.Load() {
		return errWriteOutsideWriter
	}
	return g.Conn.SetWriteDeadline(t)
}

func (g *guardedConn) SetDeadline(t time.Time) error {
	if err := g.SetWriteDeadline(t); err != nil {
		return err
	}
	return g.Conn.SetReadDeadline(t)
}

// allowGorilla lets gorilla write to the socket, or stops it.
func (c *Conn) allowGorilla(allow bool) {
	if c.guard != nil {
		c.guard.allow.Store(allow)
	}
}

// guardingHijacker hands the upgrader the hijacked socket wrapped in a
// guardedConn (its writes allowed until newConn takes it over).
type guardingHijacker struct {
	http.ResponseWriter
}

func (h guardingHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	g := &guardedConn{Conn: nc}
	g.allow.Store(true)
	if brw.Reader.Buffered() == 0 {
		// gorilla reads through this reader (the upgrader's
		// ReadBufferSize is 0), straight from the socket: a read through
		// the guard would add a frame to every idle reader's stack, which
		// must fit the smallest goroutine stack (2 KiB).
		brw = bufio.NewReadWriter(bufio.NewReaderSize(nc, readBufferSize), brw.Writer)
	}
	return g, brw, nil
}

// upgrade upgrades an HTTP request to a websocket whose socket newConn can
// write to directly.
func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) (*websocket.Conn, error) {
	return s.upgrader.Upgrade(guardingHijacker{w}, r, nil)
}
