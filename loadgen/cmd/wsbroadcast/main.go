// Command wsbroadcast is a plain gorilla/websocket broadcast server, the
// baseline the gateway's fanout is compared with: rooms, each with the
// textbook hub of gorilla's chat example (one goroutine owning the room's
// connections, a register, an unregister and a broadcast channel), and a
// reader and a writer goroutine per connection. It persists nothing,
// checks nothing and numbers nothing: a text frame a connection sends is
// queued, as it is, to every connection of its room, the sender included.
// The writer sends a queued message and whatever else is queued behind it
// in one frame, newline-separated (as the example does, and as our
// protocol allows). A connection whose queue is full is dropped.
//
//	wsbroadcast -addr 127.0.0.1:0
//
// It prints "wsbroadcast: listening on http://ADDR" once it listens; a
// client connects to ws://ADDR/ws?room=NAME and first receives
// {"type":"hello"}, sent once it is in the room. The load generator's
// broadcast scenario drives it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// The constants of gorilla's chat example.
const (
	writeWait      = 10 * time.Second    // time allowed to write a message
	pongWait       = 60 * time.Second    // time allowed to read the next pong
	pingPeriod     = (pongWait * 9) / 10 // pings are sent this often
	maxMessageSize = 4096                // largest message read
)

var (
	newline = []byte{'\n'}
	hello   = []byte(`{"type":"hello"}`)
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wsbroadcast:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbroadcast", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	queue := fs.Int("queue", 256, "messages queued per connection; a connection with a full queue is dropped")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: newServer(*queue), ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("wsbroadcast: listening on http://%s\n", l.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// server keeps the rooms, each with its hub, created when first joined.
type server struct {
	queue    int
	upgrader websocket.Upgrader
	mu       sync.Mutex
	rooms    map[string]*hub
}

// newServer returns the handler of /ws; queue is each connection's queue
// length.
func newServer(queue int) http.Handler {
	s := &server{
		queue:    queue,
		rooms:    map[string]*hub{},
		upgrader: websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024, CheckOrigin: func(*http.Request) bool { return true }},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serveWS)
	return mux
}

func (s *server) room(name string) *hub {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.rooms[name]
	if !ok {
		h = &hub{
			clients:    map[*client]bool{},
			broadcast:  make(chan []byte),
			register:   make(chan *client),
			unregister: make(chan *client),
		}
		s.rooms[name] = h
		go h.run()
	}
	return h
}

// serveWS upgrades the request, puts the connection in its room and
// starts its reader and writer.
func (s *server) serveWS(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("room")
	if name == "" {
		http.Error(w, "room missing", http.StatusBadRequest)
		return
	}
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &client{hub: s.room(name), conn: conn, send: make(chan []byte, s.queue)}
	c.send <- hello
	c.hub.register <- c
	go c.writePump()
	go c.readPump()
}

// hub owns one room's connections and broadcasts to them.
type hub struct {
	clients    map[*client]bool
	broadcast  chan []byte
	register   chan *client
	unregister chan *client
}

func (h *hub) run() {
	for {
		select {
		case c := <-h.register:
			h.clients[c] = true
		case c := <-h.unregister:
			if h.clients[c] {
				delete(h.clients, c)
				close(c.send)
			}
		case msg := <-h.broadcast:
			for c := range h.clients {
				select {
				case c.send <- msg:
				default: // too slow: drop it
					close(c.send)
					delete(h.clients, c)
				}
			}
		}
	}
}

// client is one websocket in a room.
type client struct {
	hub  *hub
	conn *websocket.Conn
	send chan []byte
}

// readPump hands every message the connection sends to its room's hub.
func (c *client) readPump() {
	defer func() {
		c.hub.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessageSize)
	_ = c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error { return c.conn.SetReadDeadline(time.Now().Add(pongWait)) })
	for {
		_, msg, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		c.hub.broadcast <- msg
	}
}

// writePump sends the queued messages, all those waiting in one frame,
// and a ping every pingPeriod.
func (c *client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case msg, ok := <-c.send:
			_ = c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				_ = c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			w, err := c.conn.NextWriter(websocket.TextMessage)
			if err != nil {
				return
			}
			_, _ = w.Write(msg)
			for range len(c.send) {
				_, _ = w.Write(newline)
				_, _ = w.Write(<-c.send)
			}
			if err := w.Close(); err != nil {
				return
			}
		case <-ticker.C:
			_ = c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}
