package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/panjf2000/ants/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/services/gateway/internal/hub"
)

// Config tunes connections. Zero fields take the defaults given.
type Config struct {
	// SendQueue is the number of events queued per connection before the
	// client counts as slow and is disconnected. Default 256.
	SendQueue int
	// WriteTimeout bounds every write. Default 10s.
	WriteTimeout time.Duration
	// PongWait is how long a connection may stay silent (no frame, no pong)
	// before it is closed. Default 60s.
	PongWait time.Duration
	// PingInterval is how often the server pings. Default PongWait*9/10.
	PingInterval time.Duration
	// SendRate is how many sends, edits, deletes and views a connection
	// may make a second on average, SendBurst how many at once. Default
	// 20/s, burst 40.
	SendRate  float64
	SendBurst int
	// SendRefusals is how many requests over the rate within 10 s close
	// the connection with CloseRateLimited. Default 10.
	SendRefusals int
	// TypingInterval is the least time between two typing events of one
	// connection in one chat; more are dropped. Default 2s.
	TypingInterval time.Duration
	// SetupConcurrency is how many connections are set up at once (see
	// Admit); SetupQueue how many more wait for their turn, first come
	// first served, before Admit refuses with ErrBusy. Default 256 and
	// 20000.
	SetupConcurrency int
	SetupQueue       int
	// SetupTimeout bounds a connection's set-up once admitted (the
	// session check, its chats and subscriptions); the time it waited
	// for its turn does not count. Default 15s.
	SetupTimeout time.Duration
}

// Hub is the fanout the connections subscribe to.
type Hub interface {
	Join(ctx context.Context, s hub.Sink, chatIDs []int64) error
	Leave(s hub.Sink, chatIDs []int64)
	PublishEphemeral(ctx context.Context, chatID, senderID int64, event []byte) error
}

// Upstream is what connections need from the other services.
type Upstream interface {
	Session(ctx context.Context, token string) (busapi.Session, error)
	ListChats(ctx context.Context, userID int64) ([]busapi.Chat, error)
	UserChats(ctx context.Context, userID int64) ([]int64, error)
	History(ctx context.Context, req busapi.HistoryRequest) (busapi.HistoryPage, error)
	Latest(ctx context.Context, chatIDs []int64) (map[string]int64, error)
	Send(ctx context.Context, req busapi.SendRequest) (busapi.SendResult, error)
	Read(ctx context.Context, req busapi.ReadRequest) (busapi.ReadResult, error)
	Change(ctx context.Context, req busapi.ChangeRequest) (busapi.SendResult, error)
	GetChat(ctx context.Context, userID, chatID int64) (busapi.Chat, error)
}

type metrics struct {
	connections prometheus.Gauge
	usersOnline prometheus.Gauge
	framesIn    prometheus.Counter
	framesOut   prometheus.Counter
	// framesDirect counts frames written at once by the goroutine that
	// delivered the event; framesDeferred those of them the socket took
	// only in part, whose rest a writer sent once the socket had room.
	framesDirect   prometheus.Counter
	framesDeferred prometheus.Counter
	eventsIn       prometheus.Counter
	eventsOut      prometheus.Counter
	slowConsumers  prometheus.Counter
	gapsFilled     prometheus.Counter
	pagesShared    prometheus.Counter
	// rateLimited counts requests refused by the per-connection rate
	// limit, rateLimitCloses the connections closed for it.
	rateLimited     prometheus.Counter
	rateLimitCloses prometheus.Counter
	// setupsWaiting counts the set-ups waiting for their turn,
	// setupsRefused those refused because the queue was full.
	setupsWaiting prometheus.Gauge
	setupsRefused prometheus.Counter
}

// Server accepts websocket connections and keeps track of them.
type Server struct {
	cfg      Config
	up       Upstream
	hub      Hub
	log      *slog.Logger
	tracer   trace.Tracer
	upgrader websocket.Upgrader
	// frames holds the buffers in which writers join several events into
	// one frame.
	frames sync.Pool
	// writers runs the connections' writers on goroutines that are kept
	// for a moment (writerIdle) after their last frame: a writer that starts often
	// neither creates a goroutine nor grows a fresh one's stack each time.
	// Unbounded, so a writer blocked on a slow client never delays
	// another's; nil (before NewServer returns, or once closed) means a
	// goroutine per writer.
	writers *ants.PoolWithFuncGeneric[*Conn]
	// servers serves the frames the readers read, on goroutines kept the
	// same way, while the reader waits: the reader's own stack then never
	// grows past what waiting for a frame needs (the smallest, 2 KiB),
	// however deep the work on a frame goes. jobs holds the hand-overs.
	servers *ants.PoolWithFuncGeneric[*frameJob]
	jobs    sync.Pool
	metrics metrics
	// admission bounds the set-ups running at once (Admit).
	admission *admission

	mu        sync.Mutex
	conns     map[*Conn]struct{}
	byUser    map[int64]map[*Conn]struct{}
	bySession map[string]map[*Conn]struct{}
	userLocks map[int64]*userLock
	// pages shares history reads of replays between connections.
	pages singleflight.Group

	presence Presence
	// viewMu guards every connection's view and the indexes of views:
	// by chat viewed, by member (the users whose presence a view shows),
	// and the views of chats every user is in.
	viewMu        sync.Mutex
	viewers       map[int64]map[*view]struct{}
	watchers      map[int64]map[*view]struct{}
	everyoneViews map[*view]struct{}
	// refreshGen counts RefreshViews calls: a newer one ends the retries
	// of an older one.
	refreshGen int

	// posMu guards storedBefore: the newest stored sequence of each chat
	// at the previous position check.
	posMu        sync.Mutex
	storedBefore map[int64]int64
	draining     bool
	// due holds the connections the clock found due (its goroutine alone
	// uses it).
	due []*Conn
	// base is the context of every connection; cancelled when the server
	// is closed for good.
	base   context.Context
	cancel context.CancelFunc
}

// readBufferSize is the read buffer of each connection, writeBufferSize
// the size of the pooled write buffers (a frame larger than it is written
// in one system call all the same).
const (
	readBufferSize  = 512
	writeBufferSize = 4096
)

// writerIdle is about how long a goroutine of the writer and frame pools
// waits for its next connection before it ends (the pool looks every
// writerIdle): under load they are taken again within microseconds, and
// those started for a second's wave of pings end soon after.
const writerIdle = 250 * time.Millisecond

// ErrDraining is returned by Serve while the gateway shuts down.
var ErrDraining = errors.New("gateway is shutting down")

// NewServer returns a server. The caller checks origins and sessions before
// calling Serve.
func NewServer(cfg Config, up Upstream, h Hub, log *slog.Logger, tp trace.TracerProvider, reg prometheus.Registerer) *Server {
	if cfg.SendQueue <= 0 {
		cfg.SendQueue = 256
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.PongWait <= 0 {
		cfg.PongWait = 60 * time.Second
	}
	if cfg.PingInterval <= 0 || cfg.PingInterval >= cfg.PongWait {
		cfg.PingInterval = cfg.PongWait * 9 / 10
	}
	if cfg.SendRate <= 0 {
		cfg.SendRate = 20
	}
	if cfg.SendBurst <= 0 {
		cfg.SendBurst = 40
	}
	if cfg.SendRefusals <= 0 {
		cfg.SendRefusals = 10
	}
	if cfg.TypingInterval <= 0 {
		cfg.TypingInterval = 2 * time.Second
	}
	if cfg.SetupConcurrency <= 0 {
		cfg.SetupConcurrency = 256
	}
	if cfg.SetupQueue <= 0 {
		cfg.SetupQueue = 20000
	}
	if cfg.SetupTimeout <= 0 {
		cfg.SetupTimeout = 15 * time.Second
	}
	base, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, up: up, hub: h, log: log,
		tracer: tp.Tracer("github.com/communications/communications/services/gateway/internal/ws"),
		upgrader: websocket.Upgrader{
			// Clients send small frames: a small read buffer per connection
			// (a larger frame is read through it), which upgrade hands
			// gorilla with the hijacked socket (direct.go), hence 0 here.
			// Write buffers are taken from a pool for each frame, so an
			// idle connection holds none.
			ReadBufferSize:  0,
			WriteBufferSize: writeBufferSize,
			WriteBufferPool: &sync.Pool{},
			// The HTTP layer checked the Origin before calling Serve.
			CheckOrigin: func(*http.Request) bool { return true },
		},
		conns:         map[*Conn]struct{}{},
		byUser:        map[int64]map[*Conn]struct{}{},
		bySession:     map[string]map[*Conn]struct{}{},
		userLocks:     map[int64]*userLock{},
		viewers:       map[int64]map[*view]struct{}{},
		watchers:      map[int64]map[*view]struct{}{},
		everyoneViews: map[*view]struct{}{},
		base:          base, cancel: cancel,
		admission: newAdmission(cfg.SetupConcurrency, cfg.SetupQueue),
		metrics: metrics{
			connections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gateway_connections", Help: "Open websocket connections."}),
			usersOnline: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gateway_users_online", Help: "Users with at least one open websocket on this gateway."}),
			framesIn:    prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_frames_in_total", Help: "Websocket frames received."}),
			framesOut:   prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_frames_out_total", Help: "Websocket frames sent."}),
			framesDirect: prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_frames_direct_total",
				Help: "Frames written at once by the goroutine that delivered the event, without a writer (part of gateway_frames_out_total)."}),
			framesDeferred: prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_frames_deferred_total",
				Help: "Frames the socket took only in part when written at once; a writer sent the rest when the socket had room."}),
			eventsIn:      prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_events_in_total", Help: "Protocol events received."}),
			eventsOut:     prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_events_out_total", Help: "Protocol events sent."}),
			slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_slow_consumer_disconnects_total", Help: "Connections closed because their send queue was full."}),
			gapsFilled:    prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_sequence_gaps_filled_total", Help: "Gaps in a chat's live messages filled from history."}),
			pagesShared:   prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_history_reads_shared_total", Help: "Replay history reads answered by another connection's read of the same page."}),
			rateLimited: prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_rate_limited_requests_total",
				Help: "Requests refused by the per-connection rate limit (rate_limited)."}),
			rateLimitCloses: prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_rate_limit_disconnects_total",
				Help: "Connections closed for going over the rate limit repeatedly (4003)."}),
			setupsWaiting: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gateway_setups_waiting",
				Help: "New connections waiting for their turn to be set up."}),
			setupsRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_setups_refused_total",
				Help: "New connections refused (503) because the set-up queue was full."}),
		},
	}
	s.frames.New = func() any { b := make([]byte, 0, writeBufferSize); return &b }
	if p, err := ants.NewPoolWithFuncGeneric(-1, (*Conn).write, ants.WithExpiryDuration(writerIdle)); err == nil {
		s.writers = p
	} else {
		log.Warn("writer pool unavailable; a goroutine per writer", "err", err)
	}
	if p, err := ants.NewPoolWithFuncGeneric(-1, (*frameJob).serve, ants.WithExpiryDuration(writerIdle)); err == nil {
		s.servers = p
	} else {
		log.Warn("frame pool unavailable; frames served by their readers", "err", err)
	}
	s.jobs.New = func() any { return &frameJob{done: make(chan struct{}, 1)} }
	reg.MustRegister(s.metrics.connections, s.metrics.usersOnline, s.metrics.framesIn, s.metrics.framesOut, s.metrics.framesDirect, s.metrics.framesDeferred, s.metrics.eventsIn, s.metrics.eventsOut, s.metrics.slowConsumers, s.metrics.gapsFilled,
		s.metrics.pagesShared, s.metrics.rateLimited, s.metrics.rateLimitCloses, s.metrics.setupsWaiting, s.metrics.setupsRefused)
	go s.runClock()
	return s
}

// Close stops the server's clock and pools for good (Drain does too); for
// a gateway that ends before draining. It is safe to call more than once.
func (s *Server) Close() {
	s.admission.stopDrain()
	s.cancel()
}

// Serve upgrades the request for an authenticated session, brings the
// connection up to date (session, chats, hello) and hands it to its reader
// goroutine, which runs it until it ends, at the latest when the session
// expires. Serve then returns, so that the HTTP server's and the router's
// memory of the request is freed while the connection lives. token is the
// session's token, kept to check the session again later. It answers 503
// while the server drains.
//
// current, when not nil, reports whether session is as good as asking the
// auth service again now: the auth service itself answered the request's
// lookup (not a cache) and no session was revoked on this replica since the
// lookup began. Serve calls it once the connection is registered (from then
// on a revocation event closes it); when it reports true, the connection's
// own session check is that answer instead of a second request. nil: the
// check asks the auth service.
func (s *Server) Serve(w http.ResponseWriter, r *http.Request, session busapi.Session, token string, current func() bool) {
	user := session.User
	resumeFrom, err := ParseResume(r.URL.Query().Get("resume"))
	if err != nil {
		writeError(w, http.StatusBadRequest, protocol.CodeBadRequest, err.Error())
		return
	}
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		writeError(w, http.StatusServiceUnavailable, protocol.CodeUnavailable, "gateway is shutting down; reconnect")
		return
	}
	if r.Context().Err() != nil {
		return // the client went away: nothing to set up, no one to answer
	}
	wsConn, err := s.upgrade(w, r)
	if err != nil {
		return // the upgrader answered the client
	}
	c := newConn(s, wsConn, session, token)
	// Registered first: a logout or a chat change from now on reaches the
	// connection, and the checks below see everything before.
	if !s.add(c) {
		c.allowGorilla(true) // no writer runs, nor ever will
		_ = wsConn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(protocol.CloseGoingAway, "gateway is shutting down"), time.Now().Add(time.Second))
		_ = wsConn.Close()
		return
	}
	// Until the reader takes the connection over, a failed setup (or a
	// panic in it, which the HTTP server recovers from) ends it here.
	handedOff := false
	defer func() {
		if !handedOff {
			c.stop()
		}
	}()

	// Live messages of the chats to resume wait from the moment they are
	// joined until their replay has been sent.
	c.holdForResume(resumeFrom)
	ctx, cancel := context.WithTimeout(s.base, s.cfg.SetupTimeout)
	err = s.check(ctx, c, current != nil && current())
	cancel()
	if err != nil {
		return
	}
	hello, err := json.Marshal(protocol.Hello{Type: protocol.TypeHello, UserID: user.ID, Username: user.Username, Chats: c.currentChats()})
	if err != nil {
		c.Close(protocol.CloseServerError, "internal error")
		return
	}
	// hello goes out after Redis confirmed the subscriptions, and before
	// any event: a client that loads history on hello misses nothing.
	if s.presence != nil {
		s.presence.Connect(user.ID, user.Username)
	}
	c.start(hello)
	var stopResume context.CancelFunc
	var resumed chan struct{}
	if len(resumeFrom) > 0 {
		// The replay runs beside the reader, so the client's sends and
		// pings are served meanwhile.
		var rctx context.Context
		rctx, stopResume = context.WithCancel(s.base)
		resumed = make(chan struct{})
		go func() {
			defer close(resumed)
			c.resume(rctx, resumeFrom)
		}()
	}
	// The reader is the connection's one lasting goroutine. It reads frames
	// until the connection fails or closes; sends are handled one after
	// another, so one connection's messages are accepted in the order they
	// were sent. While it waits for a frame, its stack holds only this loop
	// and gorilla's read, which fit the smallest goroutine stack (2 KiB):
	// the socket's read settings are made here before, the work on a frame
	// happens in serveFrame on a goroutine of the frame pool (see serve),
	// and the cleanup in stopReading.
	c.stopResume, c.resumed = stopResume, resumed
	c.prepareRead()
	handedOff = true
	go func() {
		for {
			typ, frame, err := c.readFrame()
			if !c.serve(typ, frame, err) {
				break
			}
		}
		c.stopReading()
	}()
}

// CheckHandshake returns the refusal (a *busapi.Error, bad_request) of a
// request that no answer of the other services could make a connection of:
// one that is not a websocket handshake, one with a body (a handshake has
// none), or one with a malformed resume parameter (which Serve refuses
// too). The HTTP layer checks it before the request
// waits for its turn (Admit), so that such a request neither waits nor
// costs a session lookup.
func (s *Server) CheckHandshake(r *http.Request) error {
	if !websocket.IsWebSocketUpgrade(r) {
		return busapi.Errorf(protocol.CodeBadRequest, "not a websocket handshake: GET /ws with Connection: Upgrade and Upgrade: websocket")
	}
	if r.ContentLength != 0 {
		return busapi.Errorf(protocol.CodeBadRequest, "a websocket handshake has no body")
	}
	if _, err := ParseResume(r.URL.Query().Get("resume")); err != nil {
		return busapi.Errorf(protocol.CodeBadRequest, err.Error())
	}
	return nil
}

// frameJob is a frame a reader hands to the frame pool, and the answer.
type frameJob struct {
	c     *Conn
	typ   int
	frame []byte
	err   error
	ok    bool
	done  chan struct{} // one value once served
}

func (j *frameJob) serve() {
	defer func() { j.done <- struct{}{} }()
	j.ok = j.c.serveFrame(j.typ, j.frame, j.err)
}

// serve has what one read returned served on a goroutine of the frame
// pool and waits until it is (frames are served one after another, in the
// order read); false ends the reader.
func (c *Conn) serve(typ int, frame []byte, err error) bool {
	s := c.srv
	if s.servers == nil {
		return c.serveFrame(typ, frame, err)
	}
	j := s.jobs.Get().(*frameJob)
	j.c, j.typ, j.frame, j.err = c, typ, frame, err
	if s.servers.Invoke(j) != nil {
		// The pool is closed (the server is): served here.
		j.c, j.frame, j.err = nil, nil, nil
		s.jobs.Put(j)
		return c.serveFrame(typ, frame, err)
	}
	<-j.done
	ok := j.ok
	j.c, j.frame, j.err = nil, nil, nil
	s.jobs.Put(j)
	return ok
}

// stopReading cleans up after the reader: the replay, the view, presence,
// then the connection itself.
func (c *Conn) stopReading() {
	s := c.srv
	if c.stopResume != nil {
		c.stopResume()
		<-c.resumed
	}
	s.setView(c, nil)
	if s.presence != nil {
		s.presence.Disconnect(c.user.ID)
	}
	c.stop()
}

// stop ends the connection: it closes it (unless closing already), leaves
// its chats, waits until the writer has closed the socket, and forgets it.
func (c *Conn) stop() {
	c.Close(websocket.CloseNormalClosure, "")
	c.end()
	<-c.ended
	c.srv.remove(c)
}

// runClock is the connections' one clock: instead of two runtime timers
// per connection, it looks at every connection a few times per ping
// interval (at most a second apart), has the writer of each connection
// whose ping is due send one, and closes the connections whose session
// has expired. It runs until the server is closed for good.
func (s *Server) runClock() {
	// A ping leaves up to one tick after it is due, and the client's pong
	// must arrive within PongWait of the previous one: a tick is at most
	// half of that slack.
	every := min(time.Second, s.cfg.PingInterval/4, (s.cfg.PongWait-s.cfg.PingInterval)/2)
	tick := time.NewTicker(max(every, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-s.base.Done():
			if s.writers != nil {
				s.writers.Release()
			}
			if s.servers != nil {
				s.servers.Release()
			}
			return
		case now := <-tick.C:
			s.tick(now)
		}
	}
}

// tick pings the connections whose ping is due and closes those whose
// session has expired.
func (s *Server) tick(now time.Time) {
	t := now.UnixNano()
	s.mu.Lock()
	due := s.due[:0]
	for c := range s.conns {
		if c.nextPing.Load() <= t || (c.expiresAt != 0 && c.expiresAt <= t) {
			due = append(due, c)
		}
	}
	s.mu.Unlock()
	for _, c := range due {
		if c.expiresAt != 0 && c.expiresAt <= t {
			c.Close(protocol.CloseUnauthorized, "session expired; log in again")
			continue
		}
		c.nextPing.Store(t + int64(s.cfg.PingInterval))
		c.queuePing()
	}
	clear(due)
	if cap(due) > 1024 {
		due = nil
	}
	s.due = due
}

// check brings a new connection up to date with the owners of the data:
// the session must still be valid (auth) and the connection receives exactly
// the user's chats (chat). It closes the connection when either fails.
// sessionCurrent skips asking auth: the session was resolved by auth for
// this very connection and nothing was revoked since (see Serve).
func (s *Server) check(ctx context.Context, c *Conn, sessionCurrent bool) error {
	if !sessionCurrent {
		if _, err := s.up.Session(ctx, c.token); err != nil {
			if busapi.CodeOf(err) == protocol.CodeUnauthorized {
				c.Close(protocol.CloseUnauthorized, "session ended; log in again")
			} else {
				c.Close(protocol.CloseServerError, "the auth service did not answer; reconnect")
			}
			return err
		}
	}
	if err := s.syncUser(ctx, c.user.ID, []*Conn{c}, false); err != nil {
		c.Close(protocol.CloseServerError, "could not load your chats; reconnect")
		return err
	}
	return nil
}

func (s *Server) add(c *Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.conns[c] = struct{}{}
	addIndex(s.byUser, c.user.ID, c)
	addIndex(s.bySession, c.session, c)
	s.metrics.connections.Inc()
	s.metrics.usersOnline.Set(float64(len(s.byUser)))
	return true
}

func (s *Server) remove(c *Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; ok {
		delete(s.conns, c)
		removeIndex(s.byUser, c.user.ID, c)
		removeIndex(s.bySession, c.session, c)
		s.metrics.connections.Dec()
		s.metrics.usersOnline.Set(float64(len(s.byUser)))
	}
}

func addIndex[K comparable](m map[K]map[*Conn]struct{}, k K, c *Conn) {
	set := m[k]
	if set == nil {
		set = map[*Conn]struct{}{}
		m[k] = set
	}
	set[c] = struct{}{}
}

func removeIndex[K comparable](m map[K]map[*Conn]struct{}, k K, c *Conn) {
	if set := m[k]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

// connsOf returns the open connections of a user.
func (s *Server) connsOf(userID int64) []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Conn, 0, len(s.byUser[userID]))
	for c := range s.byUser[userID] {
		out = append(out, c)
	}
	return out
}

// RevokeSession closes every connection of a session (logged out on any
// replica) with CloseUnauthorized.
func (s *Server) RevokeSession(sessionID string) int {
	s.mu.Lock()
	conns := make([]*Conn, 0, len(s.bySession[sessionID]))
	for c := range s.bySession[sessionID] {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close(protocol.CloseUnauthorized, "logged out")
	}
	return len(conns)
}

// ApplyChatEvent brings the local connections up to date with a change of
// a chat. Members whose membership did not change get the chat's new state.
// For users added or removed, the event's deltas are not trusted (core NATS
// events are at-most-once and may arrive out of order): their connections
// are reconciled with the chat service's answer, which announces every chat
// joined ("chat") or left ("chat_removed"). Connections viewing the chat
// follow its new members (presence).
func (s *Server) ApplyChatEvent(ctx context.Context, ev busapi.ChatEvent) {
	s.chatViewsChanged(ctx, ev.Chat)
	changedUsers := map[int64]bool{}
	for _, id := range ev.Added {
		changedUsers[id] = true
	}
	for _, id := range ev.Removed {
		changedUsers[id] = true
	}
	if len(ev.Chat.Members) > 0 {
		changed, err := json.Marshal(protocol.ChatChanged{Type: protocol.TypeChat, Chat: ev.Chat})
		if err != nil {
			s.log.ErrorContext(ctx, "encode chat event", "err", err)
			return
		}
		for _, m := range ev.Chat.Members {
			if changedUsers[m.ID] {
				continue
			}
			for _, c := range s.connsOf(m.ID) {
				if slices.Contains(c.currentChats(), ev.Chat.ID) {
					c.Deliver(changed)
				}
			}
		}
	}
	for uid := range changedUsers {
		conns := s.connsOf(uid)
		if len(conns) == 0 {
			continue
		}
		if err := s.syncUser(ctx, uid, conns, true); err != nil {
			s.log.WarnContext(ctx, "reconcile a user's chats", "user_id", uid, "err", err)
			if slices.Contains(ev.Removed, uid) {
				// Without the owner's answer, a removed user must not keep
				// receiving the chat: its clients reconnect and start over.
				for _, c := range conns {
					c.Close(protocol.CloseServerError, "could not update your chats; reconnect")
				}
			}
		}
	}
}

// userLock returns the lock that serialises reconciliations of one user:
// each fetches the user's chats and applies them under it, so a later answer
// is never overwritten by an earlier one.
func (s *Server) userLock(userID int64) func() {
	s.mu.Lock()
	l := s.userLocks[userID]
	if l == nil {
		l = &userLock{}
		s.userLocks[userID] = l
	}
	l.users++
	s.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.mu.Lock()
		if l.users--; l.users == 0 {
			delete(s.userLocks, userID)
		}
		s.mu.Unlock()
	}
}

type userLock struct {
	mu    sync.Mutex
	users int // holders and waiters; the entry goes when none is left
}

// syncUser makes the given connections of a user receive exactly the user's
// chats, as the chat service lists them now. With announce, each connection
// is told of every chat it joined ("chat", with the chat's state) and left
// ("chat_removed"), and of the current state of the chats it stays in;
// without, only the chats' ids are asked for (a new connection's hello
// lists nothing more), which costs the chat service and this gateway a
// fraction of the chats with their members.
func (s *Server) syncUser(ctx context.Context, userID int64, conns []*Conn, announce bool) error {
	unlock := s.userLock(userID)
	defer unlock()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var (
		chats []busapi.Chat
		ids   []int64
		err   error
	)
	if announce {
		chats, err = s.up.ListChats(ctx, userID)
		ids = make([]int64, len(chats))
		for i, ch := range chats {
			ids[i] = ch.ID
		}
	} else {
		ids, err = s.up.UserChats(ctx, userID)
	}
	if err != nil {
		return fmt.Errorf("list chats of user %d: %w", userID, err)
	}
	var errs []error
	for _, c := range conns {
		before, err := c.syncChats(ctx, ids)
		if err != nil {
			c.Close(protocol.CloseServerError, "fanout unavailable; reconnect")
			errs = append(errs, err)
			continue
		}
		if !announce {
			continue
		}
		for _, ch := range chats {
			if !slices.Contains(before, ch.ID) {
				if b, err := json.Marshal(protocol.ChatChanged{Type: protocol.TypeChat, Chat: ch}); err == nil {
					c.Deliver(b)
				}
			}
		}
		for _, id := range before {
			if !slices.Contains(ids, id) {
				if b, err := json.Marshal(protocol.ChatRemoved{Type: protocol.TypeChatRemoved, ChatID: id}); err == nil {
					c.Deliver(b)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// resyncWorkers bounds the checks Resync makes at once.
const resyncWorkers = 8

// Resync checks every local connection against the owners of the data: its
// session must still be valid, and it receives exactly its user's chats
// (announcing any change). It runs periodically and after the NATS
// connection comes back, which bounds how long a missed event (a logout, a
// removal) can go unnoticed. A service that does not answer leaves the
// connections as they are; ctx bounds the whole run.
func (s *Server) Resync(ctx context.Context) {
	s.mu.Lock()
	sessions := make(map[string]*Conn, len(s.bySession))
	for id, set := range s.bySession {
		for c := range set {
			sessions[id] = c
			break
		}
	}
	users := make(map[int64][]*Conn, len(s.byUser))
	for uid, set := range s.byUser {
		for c := range set {
			users[uid] = append(users[uid], c)
		}
	}
	s.mu.Unlock()

	work := make(chan func(), resyncWorkers)
	var wg sync.WaitGroup
	for range resyncWorkers {
		wg.Go(func() {
			for f := range work {
				if ctx.Err() == nil {
					f()
				}
			}
		})
	}
	for id, c := range sessions {
		work <- func() {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if _, err := s.up.Session(sctx, c.token); busapi.CodeOf(err) == protocol.CodeUnauthorized {
				s.RevokeSession(id)
			}
		}
	}
	for uid, conns := range users {
		work <- func() {
			if err := s.syncUser(ctx, uid, conns, true); err != nil && ctx.Err() == nil {
				s.log.WarnContext(ctx, "resync a user's chats; left as they were", "user_id", uid, "err", err)
			}
		}
	}
	close(work)
	wg.Wait()
}

// Count returns the number of open connections.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Drain refuses new connections and closes the open ones with
// CloseGoingAway, batch at a time every interval, so that their clients do
// not all reconnect to the other replicas at once. It returns when every
// connection has ended, or when ctx ends (then the rest are closed at once).
func (s *Server) Drain(ctx context.Context, batch int, interval time.Duration) {
	s.admission.stopDrain()
	s.mu.Lock()
	s.draining = true
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if batch <= 0 {
		batch = len(conns)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i, c := range conns {
		c.Close(protocol.CloseGoingAway, "gateway is shutting down; reconnect and resume")
		if (i+1)%batch == 0 && i+1 < len(conns) {
			select {
			case <-tick.C:
			case <-ctx.Done():
				for _, rest := range conns[i+1:] {
					rest.Close(protocol.CloseGoingAway, "gateway is shutting down; reconnect and resume")
				}
			}
		}
	}
	wait := time.NewTicker(10 * time.Millisecond)
	defer wait.Stop()
	for s.Count() > 0 {
		select {
		case <-ctx.Done():
			// Out of time: cut the sockets of the connections still
			// closing (a client not reading its close frame), so that
			// their goroutines end before NATS and Redis go away.
			s.mu.Lock()
			for c := range s.conns {
				_ = c.ws.NetConn().Close()
			}
			s.mu.Unlock()
			deadline := time.After(2 * time.Second)
			for s.Count() > 0 {
				select {
				case <-deadline:
					s.cancel()
					return
				case <-wait.C:
				}
			}
			s.cancel()
			return
		case <-wait.C:
		}
	}
	s.cancel()
}

// writeError answers a refused upgrade with the API's JSON error body.
func writeError(w http.ResponseWriter, status int, code protocol.Code, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": string(code), "message": msg}})
}
