// Package ws holds the gateway's websocket connections: a reader goroutine
// each, a writer goroutine only while something is queued, a bounded send
// queue, a deadline on every write, and a close code that tells the client
// whether to reconnect and resume.
package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// maxEventsPerFrame bounds how many queued events one frame coalesces.
const maxEventsPerFrame = 64

// keptQueue is the largest queue backing array an idle connection keeps
// for its next events; a larger one (after a burst) is let go.
const keptQueue = 8

// Conn is one client connection.
type Conn struct {
	srv     *Server
	ws      *websocket.Conn
	user    busapi.User
	session string // the session's id (not its token)
	token   string // the session's token, to check it again; never logged

	// syncMu serialises changes of the connection's chats (hub joins and
	// leaves), which may wait on Redis; mu is held only briefly.
	syncMu sync.Mutex
	// mu guards chats and gone.
	mu    sync.Mutex
	chats []int64 // the chats whose events the connection receives
	gone  bool    // the connection has ended; join nothing more

	// qmu guards the send queue and the writer's state. The queue holds at
	// most Config.SendQueue events; a writer goroutine runs only while it
	// is not empty (or the connection closes), so an idle connection has
	// none.
	qmu     sync.Mutex
	queue   [][]byte
	writing bool // a writer goroutine runs; it alone writes frames
	closing bool // Close was called: the writer ends the socket
	// pingDue: the server's clock asked for a ping, which the writer
	// sends before anything else.
	pingDue bool
	// pongDue: the client sent a ping; the writer answers it with
	// pongData.
	pongDue  bool
	pongData []byte
	// started is set once hello is queued; events queued before it wait
	// behind it (the writer starts with hello).
	started atomic.Bool

	// Direct writes (direct.go). raw is the socket's raw connection (nil:
	// every event goes through a writer), guard the socket as gorilla
	// sees it. rest is what is left of a frame written in part (restBuf
	// its pooled buffer), which the writer sends first; broken: a frame
	// was left unfinished, so nothing more may be sent. Only the holder
	// of the writer's role touches rest, restBuf and broken.
	raw     syscall.RawConn
	guard   *guardedConn
	rest    []byte
	restBuf *[]byte
	broken  bool

	// nextPing is when the server's clock queues the next ping (unix
	// nanoseconds); expiresAt when the session expires and the connection
	// is closed (0: never). Set before the connection is added to the
	// server.
	nextPing  atomic.Int64
	expiresAt int64

	// posMu guards positions: per chat, what was delivered and whether a
	// resume is replaying it. Made on the first message or resume, so an
	// idle connection has none.
	posMu     sync.Mutex
	positions map[int64]*chatPosition
	heldTotal int // messages held over all chats, bounded by the send queue

	// view is the chat the connection shows (nil: none); guarded by
	// srv.viewMu.
	view *view
	// The reader goroutine alone uses these: the bucket of costly
	// requests (made on the first such request when limited), its recent
	// refusals, and when the user last typed in each chat.
	limited      bool
	limiter      *rate.Limiter
	refusals     int
	refusedSince time.Time
	typedAt      map[int64]time.Time

	// Set before the reader starts, for its cleanup: the replay of a
	// resume (stopResume ends it, resumed is closed when it has).
	stopResume context.CancelFunc
	resumed    chan struct{}

	closed    chan struct{}
	closeOnce sync.Once
	closeCode int
	closeText string
	// ended is closed once the socket is closed (nil for connections
	// without a socket).
	ended   chan struct{}
	endOnce sync.Once // ended is closed once: by finish, or after a writer panicked
}

// newConn returns a connection of user on socket ws.
func newConn(s *Server, ws *websocket.Conn, session busapi.Session, token string) *Conn {
	c := &Conn{
		srv: s, ws: ws, user: session.User, session: session.ID, token: token,
		closed:  make(chan struct{}),
		ended:   make(chan struct{}),
		limited: true,
	}
	if !session.ExpiresAt.IsZero() {
		c.expiresAt = session.ExpiresAt.UnixNano()
	}
	c.nextPing.Store(time.Now().Add(s.cfg.PingInterval).UnixNano())
	if ws != nil {
		if g, ok := ws.NetConn().(*guardedConn); ok {
			c.guard, c.raw = g, rawConn(g.Conn)
			g.allow.Store(false) // from now on only while a writer runs
		}
	}
	return c
}

// Deliver queues an event without blocking; a full queue disconnects the
// client with CloseSlowConsumer (it then resumes).
func (c *Conn) Deliver(event []byte) { c.queueEvent(event, false) }

// deliverDeferred is Deliver for the hub's dispatch: when no writer runs
// and the connection can write directly, the event waits for Flush.
func (c *Conn) deliverDeferred(event []byte) { c.queueEvent(event, true) }

func (c *Conn) queueEvent(event []byte, deferred bool) {
	c.qmu.Lock()
	if c.closing {
		c.qmu.Unlock()
		return
	}
	limit := c.srv.cfg.SendQueue
	if !c.started.Load() {
		limit-- // room for hello, which start puts in front
	}
	if len(c.queue) >= limit {
		c.qmu.Unlock()
		c.slow()
		return
	}
	c.queue = append(c.queue, event)
	if c.started.Load() {
		if !deferred || c.raw == nil {
			c.startWriter()
		}
		// Deferred: left for Flush (direct.go), unless a writer runs.
	}
	c.qmu.Unlock()
}

// offer queues an event that may be dropped (typing, presence changes)
// while the send queue is less than half full, leaving the rest to the
// events that may not (messages), so that a burst of these never closes
// the connection as a slow consumer. It reports whether it queued it.
func (c *Conn) offer(event []byte) bool {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.closing || !c.started.Load() || len(c.queue) >= c.srv.cfg.SendQueue/2 {
		return false
	}
	c.queue = append(c.queue, event)
	c.startWriter()
	return true
}

// queued returns the number of events waiting in the send queue.
func (c *Conn) queued() int {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return len(c.queue)
}

// startWriter starts a writer unless one runs, on a goroutine of the
// server's writer pool. Call with qmu held.
// Connections without a socket (tests) keep their queue to be read.
func (c *Conn) startWriter() {
	if !c.writing && c.ws != nil {
		c.writing = true
		if w := c.srv.writers; w == nil || w.Invoke(c) != nil {
			go c.write()
		}
	}
}

func (c *Conn) slow() {
	c.srv.metrics.slowConsumers.Inc()
	c.Close(protocol.CloseSlowConsumer, "send queue full; reconnect and resume")
}

// start queues hello in front of the events that arrived before it, and
// from then on lets events out.
func (c *Conn) start(hello []byte) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.closing {
		return
	}
	c.queue = slices.Insert(c.queue, 0, hello)
	c.started.Store(true)
	c.startWriter()
}

// currentChats returns a copy of the chats the connection receives.
func (c *Conn) currentChats() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.chats)
}

// syncChats makes the connection receive exactly the chats in want
// (the chat service's answer), joining and leaving fanout channels as
// needed, and returns the chats it received before. When the connection
// has ended meanwhile, nothing stays joined.
func (c *Conn) syncChats(ctx context.Context, want []int64) (before []int64, err error) {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	c.mu.Lock()
	if c.gone {
		c.mu.Unlock()
		return nil, nil
	}
	before = slices.Clone(c.chats)
	c.mu.Unlock()

	var join, leave []int64
	for _, id := range want {
		if !slices.Contains(before, id) {
			join = append(join, id)
		}
	}
	for _, id := range before {
		if !slices.Contains(want, id) {
			leave = append(leave, id)
		}
	}
	if len(join) > 0 {
		jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.srv.hub.Join(jctx, c, join)
		cancel()
		if err != nil {
			return before, fmt.Errorf("join %d chats: %w", len(join), err)
		}
	}
	if len(leave) > 0 {
		c.srv.hub.Leave(c, leave)
		c.srv.unviewChats(c, leave)
		for _, id := range leave {
			// A later rejoin starts afresh, not from before the absence.
			c.dropPosition(id)
		}
	}
	c.mu.Lock()
	gone := c.gone
	if !gone {
		c.chats = slices.Clone(want)
	}
	c.mu.Unlock()
	if gone {
		// The connection ended while joining: its cleanup left only what it
		// had recorded, so leave what was joined here.
		c.srv.hub.Leave(c, join)
	}
	return before, nil
}

// end marks the connection ended and leaves every chat it had joined.
func (c *Conn) end() {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	c.mu.Lock()
	c.gone = true
	joined := c.chats
	c.chats = nil
	c.mu.Unlock()
	if len(joined) > 0 {
		c.srv.hub.Leave(c, joined)
	}
}

// UserID returns the connection's user.
func (c *Conn) UserID() int64 { return c.user.ID }

// Close starts closing the connection with code: the writer sends a close
// frame and closes the socket. It is safe to call more than once.
func (c *Conn) Close(code int, text string) {
	c.closeOnce.Do(func() {
		c.closeCode, c.closeText = code, text
		close(c.closed)
		c.qmu.Lock()
		c.closing = true
		c.startWriter()
		c.qmu.Unlock()
	})
}

// isClosed reports whether the connection is closing.
func (c *Conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

func (c *Conn) deliverJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		c.srv.log.Error("encode event", "err", err)
		return
	}
	c.Deliver(b)
}

// write is the connection's writer: it sends what is queued, several
// events per frame when more than one waits, and ends when the queue is
// empty. Once the connection closes it sends what is still queued (unless
// the client is too slow for it), the close frame, and closes the socket.
func (c *Conn) write() {
	// A writer runs on a pool, which would swallow a panic and leave the
	// connection without a writer for good: a panic ends the connection.
	defer func() {
		if r := recover(); r != nil {
			c.srv.log.Error("panic in a connection's writer", "panic", r, "stack", string(debug.Stack()))
			c.qmu.Lock()
			c.closing = true
			c.queue = nil
			c.qmu.Unlock()
			_ = c.ws.Close()
			c.endOnce.Do(func() { close(c.ended) })
		}
	}()
	// batch holds a frame's events; its array and the queue's take turns,
	// so that a writer that sends one event at a time allocates nothing.
	var batch [][]byte
	for {
		c.qmu.Lock()
		if c.closing {
			rest := c.queue
			if !c.started.Load() {
				rest = nil // hello comes first, or nothing
			}
			c.queue = nil
			c.qmu.Unlock()
			c.finish(rest)
			return
		}
		if c.rest != nil {
			// The rest of a frame written directly goes first (finish
			// sends it when closing).
			c.qmu.Unlock()
			if err := c.flushRest(time.Now().Add(c.srv.cfg.WriteTimeout)); err != nil {
				c.broken = true
				c.Close(protocol.CloseServerError, "write failed")
			}
			continue
		}
		// gorilla may write while this writer runs, once the rest of a
		// direct frame is out, and only then (direct.go).
		c.allowGorilla(true)
		if c.pingDue {
			c.pingDue = false
			c.qmu.Unlock()
			err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.srv.cfg.WriteTimeout))
			if err != nil {
				c.Close(protocol.CloseServerError, "ping failed")
			}
			continue
		}
		if c.pongDue {
			data := c.pongData
			c.pongDue, c.pongData = false, nil
			c.qmu.Unlock()
			err := c.ws.WriteControl(websocket.PongMessage, data, time.Now().Add(c.srv.cfg.WriteTimeout))
			if err != nil {
				c.Close(protocol.CloseServerError, "pong failed")
			}
			continue
		}
		if len(c.queue) == 0 || !c.started.Load() {
			// Nothing to send, or only a ping before hello: the events
			// queued before hello wait for start.
			c.allowGorilla(false)
			c.writing = false
			if len(c.queue) == 0 {
				switch {
				case cap(c.queue) > keptQueue:
					c.queue = nil
				case c.queue == nil && cap(batch) <= keptQueue:
					c.queue = batch[:0]
				}
			}
			c.qmu.Unlock()
			return
		}
		if len(c.queue) <= maxEventsPerFrame {
			batch, c.queue = c.queue, batch[:0]
		} else {
			batch = append(batch[:0], c.queue[:maxEventsPerFrame]...)
			left := copy(c.queue, c.queue[maxEventsPerFrame:])
			clear(c.queue[left:])
			c.queue = c.queue[:left]
		}
		c.qmu.Unlock()

		err := c.writeFrame(batch)
		n := len(batch)
		clear(batch)
		batch = batch[:0]
		if err != nil {
			c.Close(protocol.CloseServerError, "write failed")
			// The next round ends the socket (closing is set).
			continue
		}
		c.srv.metrics.framesOut.Inc()
		c.srv.metrics.eventsOut.Add(float64(n))
	}
}

// writeFrame writes events as one text frame, newline-delimited, with the
// write deadline.
func (c *Conn) writeFrame(events [][]byte) error {
	if err := c.ws.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout)); err != nil {
		return err
	}
	return c.writeEvents(events)
}

// writeEvents writes events as one text frame, newline-delimited, within
// the deadline set.
func (c *Conn) writeEvents(events [][]byte) error {
	if len(events) == 1 {
		return c.ws.WriteMessage(websocket.TextMessage, events[0])
	}
	bp := c.srv.frames.Get().(*[]byte)
	buf := (*bp)[:0]
	for i, ev := range events {
		if i > 0 {
			buf = append(buf, '\n')
		}
		buf = append(buf, ev...)
	}
	err := c.ws.WriteMessage(websocket.TextMessage, buf)
	if cap(buf) <= maxPooledFrame {
		*bp = buf
		c.srv.frames.Put(bp)
	}
	return err
}

// maxPooledFrame is the largest frame buffer kept for reuse.
const maxPooledFrame = 64 << 10

// finish ends the socket: what is still queued in one frame (such as the
// error that explains the close; not for a slow consumer), the close
// frame, then the socket is closed.
func (c *Conn) finish(rest [][]byte) {
	defer c.endOnce.Do(func() { close(c.ended) })
	defer c.ws.Close()
	if c.rest != nil && c.flushRest(time.Now().Add(time.Second)) != nil {
		c.broken = true
	}
	if c.broken {
		return // a frame begun was not ended: anything more would corrupt it
	}
	c.allowGorilla(true)
	if len(rest) > 0 && c.closeCode != protocol.CloseSlowConsumer {
		if c.ws.SetWriteDeadline(time.Now().Add(time.Second)) == nil {
			_ = c.writeEvents(rest)
		}
	}
	msg := websocket.FormatCloseMessage(c.closeCode, c.closeText)
	_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
}

// queuePing has the writer send a ping (the server's clock calls it every
// Config.PingInterval; see Server.tick).
func (c *Conn) queuePing() {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.closing {
		return
	}
	c.pingDue = true
	c.startWriter()
}

// prepareRead sets the socket's read limit, read deadline and pong handler;
// call it before the reader starts.
func (c *Conn) prepareRead() {
	pongWait := c.srv.cfg.PongWait
	// Frames up to MaxFrameBytes are read; larger ones up to the hard limit
	// get an error event and the connection stays open; beyond it the
	// connection is closed with 1009 (message too big), by the writer
	// (readFrame): gorilla's own read limit would write the close frame
	// from the reader, which may not write (direct.go).
	_ = c.ws.SetReadDeadline(time.Now().Add(pongWait))
	c.ws.SetPongHandler(func(string) error {
		return c.ws.SetReadDeadline(time.Now().Add(pongWait))
	})
	// gorilla would answer a ping and a close frame itself, from the
	// reader, in the middle of a frame written directly: the writer
	// answers them instead.
	c.ws.SetPingHandler(func(data string) error {
		c.queuePong([]byte(data))
		return nil
	})
	c.ws.SetCloseHandler(func(code int, _ string) error {
		c.Close(code, "")
		return nil
	})
}

// queuePong has the writer answer a client's ping (only the last one
// unanswered, as RFC 6455 allows).
func (c *Conn) queuePong(data []byte) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.closing {
		return
	}
	c.pongDue, c.pongData = true, data
	c.startWriter()
}

// readFrame reads the next message, failing with websocket.ErrReadLimit
// once it passes protocol.HardFrameLimit (the rest is not read: the
// connection is closed).
func (c *Conn) readFrame() (int, []byte, error) {
	typ, r, err := c.ws.NextReader()
	if err != nil {
		return typ, nil, err
	}
	frame, err := io.ReadAll(io.LimitReader(r, protocol.HardFrameLimit+1))
	if err == nil && len(frame) > protocol.HardFrameLimit {
		err = websocket.ErrReadLimit
	}
	return typ, frame, err
}

// serveFrame handles what one read returned; false ends the reader.
func (c *Conn) serveFrame(typ int, frame []byte, err error) (ok bool) {
	ctx := c.srv.base
	// The reader runs outside the HTTP server, which would have recovered
	// a panic: a panic while serving a frame ends this connection only.
	defer func() {
		if r := recover(); r != nil {
			c.srv.log.Error("panic serving a frame", "panic", r, "stack", string(debug.Stack()))
			c.Close(protocol.CloseServerError, "internal error")
			ok = false
		}
	}()
	if err != nil {
		if errors.Is(err, websocket.ErrReadLimit) {
			c.Close(websocket.CloseMessageTooBig, "frame too large")
		} else {
			c.Close(websocket.CloseNormalClosure, "")
		}
		return false
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(c.srv.cfg.PongWait))
	c.srv.metrics.framesIn.Inc()
	if len(frame) > protocol.MaxFrameBytes {
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, Code: protocol.CodeFrameTooLarge,
			Message: "frame larger than 16 KiB; nothing in it was processed"})
		return true
	}
	if typ != websocket.TextMessage {
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, Code: protocol.CodeBadRequest, Message: "frames must be text"})
		return true
	}
	events, err := protocol.SplitFrame(frame)
	if err != nil {
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, Code: protocol.CodeBadRequest, Message: err.Error()})
		return true
	}
	for _, raw := range events {
		if c.isClosed() {
			// Closing (rate limited, logged out): the rest is not served.
			break
		}
		c.handle(ctx, raw)
	}
	return true
}

func (c *Conn) handle(ctx context.Context, raw []byte) {
	c.srv.metrics.eventsIn.Inc()
	ev, err := protocol.DecodeClientEvent(raw)
	if err != nil {
		// Echo the request id when the event has a readable one.
		var idOnly struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(raw, &idOnly)
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: idOnly.ID, Code: protocol.CodeBadRequest, Message: err.Error()})
		return
	}
	switch ev.Type {
	case protocol.TypePing:
		c.deliverJSON(protocol.Pong{Type: protocol.TypePong, ID: ev.ID})
	case protocol.TypeSend:
		if c.allow(ev) {
			c.handleSend(ctx, ev)
		}
	case protocol.TypeEdit, protocol.TypeDelete:
		if c.allow(ev) {
			c.handleChange(ctx, ev)
		}
	case protocol.TypeRead:
		// A read costs a chat service request, a history query and a
		// write, like a send.
		if c.allow(ev) {
			c.handleRead(ctx, ev)
		}
	case protocol.TypeTyping:
		c.handleTyping(ctx, ev)
	case protocol.TypeView:
		if c.allow(ev) {
			c.handleView(ctx, ev)
		}
	}
}

func (c *Conn) handleSend(ctx context.Context, ev protocol.ClientEvent) {
	ctx, span := c.srv.tracer.Start(ctx, "ws send", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.Int64("chat.id", ev.ChatID), attribute.Int64("user.id", c.user.ID)))
	defer span.End()
	res, err := c.srv.up.Send(ctx, busapi.SendRequest{
		ChatID: ev.ChatID, SenderID: c.user.ID, Sender: c.user.Username,
		ClientMsgID: ev.ClientMsgID, Text: ev.Text,
	})
	c.answerAccepted(ctx, span, ev, res, err)
}

// answerAccepted answers a send, edit or delete: an ack (with the original's
// sequence number for a retry whose original is stored) or an error.
func (c *Conn) answerAccepted(ctx context.Context, span trace.Span, ev protocol.ClientEvent, res busapi.SendResult, err error) {
	if err != nil {
		code := busapi.CodeOf(err)
		msg := "internal error"
		if be, ok := errors.AsType[*busapi.Error](err); ok {
			msg = be.Message
		}
		if code == protocol.CodeInternal || code == protocol.CodeUnavailable {
			c.srv.log.WarnContext(ctx, ev.Type+" failed", "err", err)
			span.SetStatus(codes.Error, err.Error())
		}
		c.deliverJSON(protocol.Error{Type: protocol.TypeError, ID: ev.ID, Code: code, Message: msg, Retryable: code.Retryable()})
		return
	}
	c.deliverJSON(protocol.Ack{Type: protocol.TypeAck, ID: ev.ID, ChatID: ev.ChatID, ClientMsgID: ev.ClientMsgID, Duplicate: res.Duplicate, Seq: res.Seq})
}
