package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/communications/communications/libs/protocol"
)

// answerTimeout is how long a client waits for the answer to a send before
// it takes the connection for dead, reconnects and retries.
const answerTimeout = 15 * time.Second

// user is a registered, logged-in user.
type user struct {
	name  string
	id    int64
	token string
}

func postJSON(u string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: HTTP %d: %s", u, resp.StatusCode, data)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// signUpAll signs up n users named prefix-0 ... in parallel.
func signUpAll(t *testing.T, base, prefix string, n int) []user {
	t.Helper()
	users := make([]user, n)
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Go(func() { users[i] = signUpNoFatal(base, fmt.Sprintf("%s%d", prefix, i), errs) })
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	return users
}

// signUpNoFatal signs one user up off the test goroutine, reporting a
// failure on errs.
func signUpNoFatal(base, name string, errs chan<- string) user {
	const password = "correct horse battery staple"
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := postJSON(base+"/api/v1/auth/register", map[string]string{"username": name, "password": password}, nil)
		if err == nil || strings.Contains(err.Error(), string(protocol.CodeUsernameTaken)) {
			break
		}
		if time.Now().After(deadline) {
			errs <- fmt.Sprintf("register %s: %v", name, err)
			return user{}
		}
		<-time.After(100 * time.Millisecond) // the client's pause before a retry
	}
	var login struct {
		Token string `json:"token"`
		User  struct {
			ID int64 `json:"id"`
		} `json:"user"`
	}
	if err := postJSON(base+"/api/v1/auth/login", map[string]any{"username": name, "password": password, "token": true}, &login); err != nil {
		errs <- fmt.Sprintf("login %s: %v", name, err)
	}
	return user{name: name, id: login.User.ID, token: login.Token}
}

// chatClient is one user's client in one chat: it sends messages one after
// another (each with a unique client message id, retried with the same id
// until answered), reconnects with jittered backoff to any gateway when its
// connection drops, resumes from the last sequence it has, and records
// every message it receives.
type chatClient struct {
	u        user
	chatID   int64
	gateways []string
	prefer   int // index of the gateway tried first
	rec      *Recorder
	// interval paces the sends (0: as fast as answers come).
	interval time.Duration
	// pad lengthens every text by this many characters.
	pad int

	started bool
	stop    chan struct{}
	done    chan struct{}

	mu         sync.Mutex
	view       []Row
	lastSeq    int64
	connects   int
	closeCodes []int
	conn       *websocket.Conn
	gateway    int    // the gateway of the current connection
	sent       int    // messages started
	inFlight   string // the client message id awaiting an answer
	noMore     bool   // set to stop sending new messages
	logf       func(string, ...any)
}

func newChatClient(t *testing.T, u user, chatID int64, gateways []string, prefer int, rec *Recorder, interval time.Duration) *chatClient {
	c := &chatClient{u: u, chatID: chatID, gateways: gateways, prefer: prefer, rec: rec, interval: interval,
		stop: make(chan struct{}), done: make(chan struct{}), logf: t.Logf, gateway: -1}
	return c
}

// start runs the client in the background; stopSending then close end it.
func (c *chatClient) start() {
	c.started = true
	go c.run()
}

// stopSending makes the client send no new message; the one in flight is
// still retried until answered or the client closes.
func (c *chatClient) stopSending() {
	c.mu.Lock()
	c.noMore = true
	c.mu.Unlock()
}

// close stops the client and waits for it.
func (c *chatClient) close() {
	if !c.started {
		return
	}
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.mu.Lock()
	if c.conn != nil {
		_ = c.conn.Close()
	}
	c.mu.Unlock()
	<-c.done
}

// idle reports whether the client has nothing in flight (it stopped sending
// and its last message was answered).
func (c *chatClient) idle() bool {
	select {
	case <-c.done:
		return true
	default:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.noMore && c.inFlight == ""
}

// seq returns the last sequence the client has.
func (c *chatClient) seq() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastSeq
}

// snapshot returns the client's view.
func (c *chatClient) snapshot() View {
	c.mu.Lock()
	defer c.mu.Unlock()
	return View{Member: c.u.name, UserID: c.u.id, ChatID: c.chatID, Rows: append([]Row(nil), c.view...)}
}

// session is one websocket connection's reader state.
type session struct {
	conn    *websocket.Conn
	answers chan answer   // ack and error events
	ended   chan struct{} // closed when the reader stops
}

// answer is an ack or error event: the fields of both the sender needs.
type answer struct {
	Type      string `json:"type"`
	ID        string `json:"id"`
	Seq       int64  `json:"seq"`       // ack: the original's sequence, when known
	Code      string `json:"code"`      // error
	Retryable bool   `json:"retryable"` // error
}

func (c *chatClient) run() {
	defer close(c.done)
	var cur *pendingSend // the message in flight, kept across reconnects
	tick := time.NewTicker(max(c.interval, time.Millisecond))
	defer tick.Stop()
	for attempt := 0; ; attempt++ {
		if c.stopped() {
			return
		}
		s, err := c.connect(attempt)
		if err != nil {
			if !c.backoff(attempt) {
				return
			}
			continue
		}
		attempt = 0
		cur = c.sendLoop(s, cur, tick)
		_ = s.conn.Close()
		<-s.ended
		if c.stopped() {
			return
		}
	}
}

type pendingSend struct {
	id    string
	index int
}

func (c *chatClient) stopped() bool {
	select {
	case <-c.stop:
		return true
	default:
		return false
	}
}

// backoff waits a jittered, growing delay; false when the client stops.
func (c *chatClient) backoff(attempt int) bool {
	d := time.Duration(50<<min(attempt, 5)) * time.Millisecond
	d = d/2 + rand.N(d)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.stop:
		return false
	case <-t.C:
		return true
	}
}

// connect dials a gateway (the preferred one first, then the others in
// turn) with the resume position and starts the reader.
func (c *chatClient) connect(attempt int) (*session, error) {
	gw := (c.prefer + attempt) % len(c.gateways)
	c.mu.Lock()
	last := c.lastSeq
	c.mu.Unlock()
	// Always a resume, from 0 on the first connection: the chat's whole
	// history, then its live messages, with no gap between them.
	u := "ws" + strings.TrimPrefix(c.gateways[gw], "http") + "/ws" + fmt.Sprintf("?resume=%d:%d", c.chatID, last)
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, _, err := d.Dial(u, http.Header{"Authorization": {"Bearer " + c.u.token}})
	if err != nil {
		return nil, err
	}
	s := &session{conn: conn, answers: make(chan answer, 16), ended: make(chan struct{})}
	c.mu.Lock()
	c.conn = conn
	c.gateway = gw
	c.connects++
	c.mu.Unlock()
	go c.readLoop(s)
	return s, nil
}

// readLoop records messages and passes answers to the sender.
func (c *chatClient) readLoop(s *session) {
	defer close(s.ended)
	for {
		_, frame, err := s.conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				c.mu.Lock()
				c.closeCodes = append(c.closeCodes, ce.Code)
				c.mu.Unlock()
			}
			return
		}
		events, err := protocol.SplitFrame(frame)
		if err != nil {
			continue
		}
		for _, raw := range events {
			var e answer
			if json.Unmarshal(raw, &e) != nil {
				continue
			}
			switch e.Type {
			case protocol.TypeMessage:
				var m protocol.Message
				if json.Unmarshal(raw, &m) != nil || m.ChatID != c.chatID {
					continue
				}
				c.mu.Lock()
				c.view = append(c.view, Row{ChatID: m.ChatID, Seq: m.Seq, SenderID: m.SenderID, ClientMsgID: m.ClientMsgID, Text: m.Text})
				c.lastSeq = max(c.lastSeq, m.Seq)
				c.mu.Unlock()
			case protocol.TypeAck, protocol.TypeError:
				select {
				case s.answers <- e:
				default:
				}
			}
		}
	}
}

// sendLoop sends messages on one connection until it ends or the client
// stops, and returns the message still unanswered.
func (c *chatClient) sendLoop(s *session, cur *pendingSend, tick *time.Ticker) *pendingSend {
	for {
		if cur == nil {
			select {
			case <-c.stop:
				return nil
			case <-s.ended:
				return nil
			case <-tick.C:
			}
			// Deciding to send and marking the message in flight happen
			// at once, so that idle never misses a message about to go.
			c.mu.Lock()
			if c.noMore {
				c.mu.Unlock()
				// Nothing more to send: stay connected and keep reading.
				select {
				case <-c.stop:
				case <-s.ended:
				}
				return nil
			}
			cur = &pendingSend{id: fmt.Sprintf("%s-%d", c.u.name, c.sent), index: c.sent}
			c.sent++
			c.inFlight = cur.id
			c.mu.Unlock()
		}
		text := "text of " + cur.id + strings.Repeat(".", c.pad)
		c.rec.Attempt(c.chatID, c.u.id, cur.id, cur.index, text)
		b, _ := json.Marshal(protocol.ClientEvent{Type: protocol.TypeSend, ID: cur.id, ChatID: c.chatID, ClientMsgID: cur.id, Text: text})
		_ = s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := s.conn.WriteMessage(websocket.TextMessage, b); err != nil {
			return cur
		}
		timeout := time.NewTimer(answerTimeout)
	wait:
		for {
			select {
			case <-c.stop:
				timeout.Stop()
				return cur
			case <-s.ended:
				timeout.Stop()
				return cur
			case <-timeout.C:
				c.logf("%s: no answer to %s in %s on gateway %d; reconnecting", c.u.name, cur.id, answerTimeout, c.gateway)
				return cur
			case e := <-s.answers:
				if e.ID != cur.id {
					continue
				}
				timeout.Stop()
				if e.Type == protocol.TypeAck {
					c.rec.Acked(c.chatID, c.u.id, cur.id, e.Seq)
					cur = nil
					c.setInFlight("")
					break wait
				}
				c.rec.Refused(c.chatID, c.u.id, cur.id, e.Code)
				if !e.Retryable || !c.pause() {
					cur = nil
					c.setInFlight("")
				}
				break wait
			}
		}
	}
}

func (c *chatClient) setInFlight(id string) {
	c.mu.Lock()
	c.inFlight = id
	c.mu.Unlock()
}

// pause waits a little before a retry; false when the client stops.
func (c *chatClient) pause() bool {
	t := time.NewTimer(100*time.Millisecond + rand.N(100*time.Millisecond))
	defer t.Stop()
	select {
	case <-c.stop:
		return false
	case <-t.C:
		return true
	}
}
