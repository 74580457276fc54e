package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/communications/communications/libs/protocol"
)

// api talks to the gateways' HTTP API, spreading requests round-robin.
type api struct {
	gateways []string
	http     *http.Client
}

func newAPI(gateways []string) *api {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return &api{gateways: gateways, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// apiError is an error answer of the API.
type apiError struct {
	Status int
	Code   string
	Msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Msg) }

// do sends a JSON request to gateway i (mod the number of gateways) and
// decodes a JSON answer into out.
func (a *api) do(ctx context.Context, i int, method, path, token string, in, out any) error {
	var body io.Reader = http.NoBody
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	base := a.gateways[i%len(a.gateways)]
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return fmt.Errorf("%s %s: %w", method, path, &apiError{Status: resp.StatusCode, Code: e.Error.Code, Msg: e.Error.Message})
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return nil
}

// user registers username (an existing one is fine: a bench state folder
// keeps its users between runs) and logs in for a bearer token.
func (a *api) user(ctx context.Context, i int, username, password string) (string, error) {
	creds := map[string]any{"username": username, "password": password}
	err := a.do(ctx, i, http.MethodPost, "/api/v1/auth/register", "", creds, nil)
	var ae *apiError
	if err != nil && !(errors.As(err, &ae) && ae.Code == string(protocol.CodeUsernameTaken)) {
		return "", err
	}
	creds["token"] = true
	var out struct {
		Token string `json:"token"`
	}
	if err := a.do(ctx, i, http.MethodPost, "/api/v1/auth/login", "", creds, &out); err != nil {
		return "", err
	}
	if out.Token == "" {
		return "", fmt.Errorf("login %s: no token in the answer", username)
	}
	return out.Token, nil
}

// createChat creates a chat as the user of token with the given other
// members and returns its id.
func (a *api) createChat(ctx context.Context, i int, token, name string, members []string) (int64, error) {
	var out struct {
		Chat protocol.Chat `json:"chat"`
	}
	in := map[string]any{"name": name, "members": members}
	if err := a.do(ctx, i, http.MethodPost, "/api/v1/chats", token, in, &out); err != nil {
		return 0, err
	}
	return out.Chat.ID, nil
}

// createChatFull creates a chat as the user of token with the given other
// members and returns it with its members' ids.
func (a *api) createChatFull(ctx context.Context, i int, token, name string, members []string) (protocol.Chat, error) {
	var out struct {
		Chat protocol.Chat `json:"chat"`
	}
	in := map[string]any{"name": name, "members": members}
	err := a.do(ctx, i, http.MethodPost, "/api/v1/chats", token, in, &out)
	return out.Chat, err
}

// chatNamed returns the chat called name among the chats of the user of
// token, creating it with the given other members if there is none.
func (a *api) chatNamed(ctx context.Context, token, name string, members []string) (protocol.Chat, error) {
	c, err := a.createChatFull(ctx, 0, token, name, members)
	var ae *apiError
	if err == nil || !errors.As(err, &ae) || ae.Code != string(protocol.CodeNameTaken) {
		return c, err
	}
	var list struct {
		Chats []protocol.Chat `json:"chats"`
	}
	if err := a.do(ctx, 0, http.MethodGet, "/api/v1/chats", token, nil, &list); err != nil {
		return c, err
	}
	for _, c := range list.Chats {
		if strings.EqualFold(c.Name, name) {
			if err := a.do(ctx, 0, http.MethodGet, fmt.Sprintf("/api/v1/chats/%d", c.ID), token, nil, &struct {
				Chat *protocol.Chat `json:"chat"`
			}{&c}); err != nil {
				return c, err
			}
			return c, nil
		}
	}
	return c, fmt.Errorf("chat %q exists but its creator is not in it", name)
}

// runChat is a chat a run created: its id, its creator's token and the
// usernames of its other members.
type runChat struct {
	id      int64
	token   string
	members []string
}

// retireChats removes every member but the creator from each of chats once
// a run is over. Every run against a bench state reuses the same users, so
// members left in earlier runs' chats would make each later connection
// subscribe to all of them and each chat list longer: the figures would
// drift with the state's age. Failures are reported on log, not returned:
// the run's figures stand either way.
func (a *api) retireChats(ctx context.Context, log io.Writer, setup int, chats []runChat) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	start := time.Now()
	var (
		mu       sync.Mutex
		made     int // chats created (a failed set-up leaves some out)
		retired  int
		firstErr error
	)
	for _, c := range chats {
		if c.id != 0 {
			made++
		}
	}
	if made == 0 {
		return
	}
	err := parallel(ctx, len(chats), setup, func(ctx context.Context, i int) error {
		if chats[i].id == 0 {
			return nil
		}
		err := a.removeMembers(ctx, i, chats[i])
		mu.Lock()
		if err == nil {
			retired++
		} else if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		return nil
	})
	if firstErr == nil {
		firstErr = err // the time limit: chats not tried
	}
	if retired < made {
		fmt.Fprintf(log, "%d of %d chats of the run not retired (members left in them): %v\n", made-retired, made, firstErr)
		return
	}
	fmt.Fprintf(log, "%d chats of the run retired (members removed) in %s\n", made, time.Since(start).Round(time.Millisecond))
}

// removeMembers removes c's members (all but its creator), at most 100
// per request as the API takes them.
func (a *api) removeMembers(ctx context.Context, i int, c runChat) error {
	for m := c.members; len(m) > 0; {
		n := min(len(m), 100)
		in := map[string]any{"remove_members": m[:n]}
		if err := a.do(ctx, i, http.MethodPatch, fmt.Sprintf("/api/v1/chats/%d", c.id), c.token, in, nil); err != nil {
			return err
		}
		m = m[n:]
	}
	return nil
}

// dialers open websockets from several loopback source addresses, so that
// many connections to one gateway do not run out of ephemeral ports.
type dialers []*websocket.Dialer

func newDialers(sources int) dialers {
	if sources < 1 {
		sources = 1
	}
	pool := &sync.Pool{}
	d := make(dialers, sources)
	for i := range d {
		nd := &net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%254))}}
		d[i] = &websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: 30 * time.Second,
			ReadBufferSize:   2048,
			WriteBufferSize:  1024,
			WriteBufferPool:  pool,
		}
	}
	return d
}

// dial opens connection number i to gateway base with token and returns it
// with the hello event read.
func (d dialers) dial(ctx context.Context, i int, base, token string) (*websocket.Conn, error) {
	c, _, err := d.dialQuery(ctx, i, base, "", token)
	return c, err
}

// dialQuery opens connection number i to gateway base's /ws with the query
// string query (such as resume=4:7) and token, reads the first frame, and
// returns the connection with what followed hello in that frame.
func (d dialers) dialQuery(ctx context.Context, i int, base, query, token string) (*websocket.Conn, []byte, error) {
	u := "ws" + strings.TrimPrefix(base, "http") + "/ws"
	if query != "" {
		u += "?" + query
	}
	h := http.Header{}
	h.Set("Authorization", "Bearer "+token)
	c, resp, err := d[i%len(d)].DialContext(ctx, u, h)
	if err != nil {
		if resp != nil {
			return nil, nil, fmt.Errorf("dial %s: %w (HTTP %d)", u, err, resp.StatusCode)
		}
		return nil, nil, fmt.Errorf("dial %s: %w", u, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, b, err := c.ReadMessage()
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("read hello: %w", err)
	}
	first, rest, _ := bytes.Cut(b, []byte("\n"))
	var hello protocol.Hello
	if err := json.Unmarshal(first, &hello); err != nil || hello.Type != protocol.TypeHello {
		c.Close()
		return nil, nil, fmt.Errorf("first event is not hello: %.100s", first)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, rest, nil
}

// parallel runs f(i) for i in [0, n) on at most workers goroutines and
// returns the first error.
func parallel(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	for range max(1, min(workers, n)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return firstErr
}
