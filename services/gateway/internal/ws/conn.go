// Package ws holds the gateway's websocket connections: one reader and one
// writer goroutine each, a bounded send queue, a deadline on every write,
// and a close code that tells the client whether to reconnect and resume.
package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
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
	// mu guards chats, gone and pending.
	mu    sync.Mutex
	chats []int64 // the chats whose events the connection receives
	gone  bool    // the connection has ended; join nothing more
	// started is set once hello is queued; events delivered before it wait
	// in pending (bounded by the send queue), so hello comes first.
	started atomic.Bool
	pending [][]byte

	// posMu guards positions: per chat, what was delivered and whether a
	// resume is replaying it.
	posMu     sync.Mutex
	positions map[int64]*chatPosition
	heldTotal int // messages held over all chats, bounded by the send queue

	// view is the chat the connection shows (nil: none); guarded by
	// srv.viewMu.
	view *view
	// The reader goroutine alone uses these: the bucket of costly
	// requests, its recent refusals, and when the user last typed in each
	// chat.
	limiter      *rate.Limiter
	refusals     int
	refusedSince time.Time
	typedAt      map[int64]time.Time

	send      chan []byte
	closed    chan struct{}
	closeOnce sync.Once
	closeCode int
	closeText string
}

// Deliver queues an event without blocking; a full queue disconnects the
// client with CloseSlowConsumer (it then resumes).
func (c *Conn) Deliver(event []byte) {
	if !c.started.Load() {
		c.mu.Lock()
		if !c.started.Load() {
			// Room is kept for hello, which start puts in front.
			if len(c.pending) >= cap(c.send)-1 {
				c.mu.Unlock()
				c.slow()
				return
			}
			c.pending = append(c.pending, event)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
	select {
	case c.send <- event:
	case <-c.closed:
	default:
		c.slow()
	}
}

func (c *Conn) slow() {
	c.srv.metrics.slowConsumers.Inc()
	c.Close(protocol.CloseSlowConsumer, "send queue full; reconnect and resume")
}

// start queues hello, then the events that arrived before it, and from
// then on lets events through directly.
func (c *Conn) start(hello []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range append([][]byte{hello}, c.pending...) {
		select {
		case c.send <- ev:
		default:
			c.pending = nil
			c.started.Store(true)
			c.slow()
			return
		}
	}
	c.pending = nil
	c.started.Store(true)
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

// writeLoop sends queued events, several per frame when more than one
// waits, and pings the client. It owns all writes to the socket.
func (c *Conn) writeLoop() {
	cfg := c.srv.cfg
	ping := time.NewTicker(cfg.PingInterval)
	defer ping.Stop()
	defer c.ws.Close()
	buf := make([]byte, 0, 1024)
	for {
		select {
		case ev := <-c.send:
			buf = append(buf[:0], ev...)
			n := 1
		coalesce:
			for n < maxEventsPerFrame {
				select {
				case more := <-c.send:
					buf = append(buf, '\n')
					buf = append(buf, more...)
					n++
				default:
					break coalesce
				}
			}
			_ = c.ws.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout))
			if err := c.ws.WriteMessage(websocket.TextMessage, buf); err != nil {
				c.Close(protocol.CloseServerError, "write failed")
				return
			}
			c.srv.metrics.framesOut.Inc()
			c.srv.metrics.eventsOut.Add(float64(n))
			if cap(buf) > 64<<10 {
				buf = make([]byte, 0, 1024)
			}
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(cfg.WriteTimeout)); err != nil {
				c.Close(protocol.CloseServerError, "ping failed")
				return
			}
		case <-c.closed:
			if c.closeCode != protocol.CloseSlowConsumer {
				c.flush(buf[:0])
			}
			msg := websocket.FormatCloseMessage(c.closeCode, c.closeText)
			_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			return
		}
	}
}

// flush writes what is still queued (such as the error that explains a
// close) in one frame, without waiting for more.
func (c *Conn) flush(buf []byte) {
	for {
		select {
		case ev := <-c.send:
			if len(buf) > 0 {
				buf = append(buf, '\n')
			}
			buf = append(buf, ev...)
		default:
			if len(buf) > 0 {
				_ = c.ws.SetWriteDeadline(time.Now().Add(time.Second))
				_ = c.ws.WriteMessage(websocket.TextMessage, buf)
			}
			return
		}
	}
}

// readLoop reads frames until the connection fails or closes. Sends are
// handled one after another, so one connection's messages are accepted in
// the order they were sent.
func (c *Conn) readLoop(ctx context.Context) {
	cfg := c.srv.cfg
	// Frames up to MaxFrameBytes are read; larger ones up to the hard limit
	// get an error event and the connection stays open; beyond it gorilla
	// closes the connection with 1009 (message too big).
	c.ws.SetReadLimit(protocol.HardFrameLimit)
	_ = c.ws.SetReadDeadline(time.Now().Add(cfg.PongWait))
	c.ws.SetPongHandler(func(string) error {
		return c.ws.SetReadDeadline(time.Now().Add(cfg.PongWait))
	})
	for {
		typ, frame, err := c.ws.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				c.Close(websocket.CloseMessageTooBig, "frame too large")
			} else {
				c.Close(websocket.CloseNormalClosure, "")
			}
			return
		}
		_ = c.ws.SetReadDeadline(time.Now().Add(cfg.PongWait))
		c.srv.metrics.framesIn.Inc()
		if len(frame) > protocol.MaxFrameBytes {
			c.deliverJSON(protocol.Error{Type: protocol.TypeError, Code: protocol.CodeFrameTooLarge,
				Message: "frame larger than 16 KiB; nothing in it was processed"})
			continue
		}
		if typ != websocket.TextMessage {
			c.deliverJSON(protocol.Error{Type: protocol.TypeError, Code: protocol.CodeBadRequest, Message: "frames must be text"})
			continue
		}
		events, err := protocol.SplitFrame(frame)
		if err != nil {
			c.deliverJSON(protocol.Error{Type: protocol.TypeError, Code: protocol.CodeBadRequest, Message: err.Error()})
			continue
		}
		for _, raw := range events {
			if c.isClosed() {
				// Closing (rate limited, logged out): the rest is not
				// served.
				break
			}
			c.handle(ctx, raw)
		}
	}
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
