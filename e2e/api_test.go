package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

type chatBody struct {
	Chat protocol.Chat `json:"chat"`
}

func (c *client) createChat(t *testing.T, name string, members ...string) protocol.Chat {
	t.Helper()
	var out chatBody
	if err := do(context.Background(), http.MethodPost, c.base+"/api/v1/chats", c.token,
		map[string]any{"name": name, "description": "about " + name, "members": members}, &out); err != nil {
		t.Fatalf("create chat %s: %v", name, err)
	}
	return out.Chat
}

func wantAPIError(t *testing.T, err error, status int, code protocol.Code) {
	t.Helper()
	var ae *apiError
	if !errors.As(err, &ae) {
		t.Fatalf("error = %v, want %d %s", err, status, code)
	}
	if ae.Status != status || ae.Code != string(code) {
		t.Errorf("got %d %s (%s), want %d %s", ae.Status, ae.Code, ae.Msg, status, code)
	}
}

func isChatEvent(chatID int64, name string) func(map[string]any) bool {
	return func(e map[string]any) bool {
		chat, ok := e["chat"].(map[string]any)
		return e["type"] == protocol.TypeChat && ok && chat["id"] == float64(chatID) && chat["name"] == name
	}
}

// TestChatsAPI: creating, reading and editing chats, with every refusal
// decided by the chat service, and the changes pushed live to members.
func TestChatsAPI(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[1], "bob")
	carol := signUp(t, s.gateways[1], "carol")
	bobWS := bob.dial()
	carolWS := carol.dial()

	team := alice.createChat(t, "team", "bob")
	if team.CreatorID != alice.userID || len(team.Members) != 2 {
		t.Fatalf("created chat %+v, want creator alice and members alice and bob", team)
	}
	bobWS.waitEvent(isChatEvent(team.ID, "team"), "bob told about the new chat")

	ctx := context.Background()
	url := func(c *client, path string) string { return c.base + path }
	create := func(c *client, body map[string]any) error {
		return do(ctx, http.MethodPost, url(c, "/api/v1/chats"), c.token, body, nil)
	}
	patch := func(c *client, id int64, body map[string]any) error {
		return do(ctx, http.MethodPatch, url(c, fmt.Sprintf("/api/v1/chats/%d", id)), c.token, body, nil)
	}
	get := func(c *client, path string) error { return do(ctx, http.MethodGet, url(c, path), c.token, nil, nil) }

	tests := []struct {
		name   string
		call   func() error
		status int
		code   protocol.Code
	}{
		{"name taken, other case", func() error { return create(alice, map[string]any{"name": "TEAM"}) }, 409, protocol.CodeNameTaken},
		{"empty name", func() error { return create(alice, map[string]any{"name": "   "}) }, 400, protocol.CodeInvalidInput},
		{"name too long", func() error { return create(alice, map[string]any{"name": strings.Repeat("n", 65)}) }, 400, protocol.CodeInvalidInput},
		{"unknown user", func() error {
			return create(alice, map[string]any{"name": "x1", "members": []string{"nobody"}})
		}, 400, protocol.CodeUnknownUser},
		{"duplicate member", func() error {
			return create(alice, map[string]any{"name": "x2", "members": []string{"bob", "BOB"}})
		}, 400, protocol.CodeDuplicateMember},
		{"no session", func() error { return do(ctx, http.MethodGet, url(alice, "/api/v1/chats"), "", nil, nil) }, 401, protocol.CodeUnauthorized},
		{"unknown chat", func() error { return get(alice, "/api/v1/chats/9999") }, 404, protocol.CodeChatNotFound},
		{"not a member reads the chat", func() error { return get(carol, fmt.Sprintf("/api/v1/chats/%d", team.ID)) }, 403, protocol.CodeNotAMember},
		{"not a member reads history", func() error {
			return get(carol, fmt.Sprintf("/api/v1/chats/%d/messages", team.ID))
		}, 403, protocol.CodeNotAMember},
		{"history of unknown chat", func() error { return get(alice, "/api/v1/chats/9999/messages") }, 404, protocol.CodeChatNotFound},
		{"member edits, not creator", func() error { return patch(bob, team.ID, map[string]any{"name": "bobs"}) }, 403, protocol.CodeNotCreator},
		{"non-member edits", func() error { return patch(carol, team.ID, map[string]any{"name": "carols"}) }, 403, protocol.CodeNotAMember},
		{"nobody edits general", func() error { return patch(alice, generalChat, map[string]any{"name": "mine"}) }, 403, protocol.CodeNotCreator},
		{"edit unknown chat", func() error { return patch(alice, 9999, map[string]any{"name": "x"}) }, 404, protocol.CodeChatNotFound},
		{"rename to a taken name", func() error { return patch(alice, team.ID, map[string]any{"name": "General"}) }, 409, protocol.CodeNameTaken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantAPIError(t, tc.call(), tc.status, tc.code)
		})
	}

	// A non-member's send is refused by the chat service; nothing stored.
	carolWS.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "c1", ChatID: team.ID, ClientMsgID: "c-1", Text: "let me in"})
	if got := carolWS.waitEvent(isAnswerTo("c1"), "answer"); got["code"] != string(protocol.CodeNotAMember) {
		t.Errorf("non-member send answered %v, want not_a_member", got)
	}

	// The creator renames: members see the new name live.
	if err := patch(alice, team.ID, map[string]any{"name": "dream team"}); err != nil {
		t.Fatal(err)
	}
	bobWS.waitEvent(isChatEvent(team.ID, "dream team"), "bob sees the new name")

	// Bob reads the history: the history service remembers his access
	// (the stack keeps it a minute, see startStack).
	history := fmt.Sprintf("/api/v1/chats/%d/messages", team.ID)
	if err := get(bob, history); err != nil {
		t.Fatalf("member reads history: %v", err)
	}

	// Bob sends while a member: the chat service remembers his membership.
	bobWS.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "b0", ChatID: team.ID, ClientMsgID: "b-0", Text: "hi team"})
	if got := bobWS.waitEvent(isAnswerTo("b0"), "answer"); got["type"] != protocol.TypeAck {
		t.Fatalf("member's send answered %v, want ack", got)
	}

	// Adding carol: she is told, and receives the chat's messages at once.
	if err := patch(alice, team.ID, map[string]any{"add_members": []string{"carol"}, "remove_members": []string{"bob"}}); err != nil {
		t.Fatal(err)
	}
	// Carol reads at once (a refusal is never remembered); bob loses read
	// access with the chat service's membership event, well before his
	// remembered access would lapse.
	if err := get(carol, history); err != nil {
		t.Errorf("added member reads history: %v", err)
	}
	var lastErr error
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		lastErr = get(bob, history)
		ae, ok := errors.AsType[*apiError](lastErr)
		return ok && ae.Status == http.StatusForbidden && ae.Code == string(protocol.CodeNotAMember)
	}, func() string { return fmt.Sprintf("removed member refused history (last: %v)", lastErr) })
	carolWS.waitEvent(isChatEvent(team.ID, "dream team"), "carol told she was added")
	bobWS.waitEvent(func(e map[string]any) bool {
		return e["type"] == protocol.TypeChatRemoved && e["chat_id"] == float64(team.ID)
	}, "bob told he was removed")
	aliceWS := alice.dial()
	aliceWS.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "a1", ChatID: team.ID, ClientMsgID: "a-1", Text: "welcome carol"})
	carolWS.waitEvent(isMessage("a-1"), "carol receives the team's message")
	carolWS.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "c2", ChatID: team.ID, ClientMsgID: "c-2", Text: "thanks"})
	if got := carolWS.waitEvent(isAnswerTo("c2"), "answer"); got["type"] != protocol.TypeAck {
		t.Errorf("new member's send answered %v, want ack", got)
	}
	aliceWS.waitEvent(isMessage("c-2"), "alice receives carol's message")
	// His remembered membership went with the removal.
	bobWS.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "b1", ChatID: team.ID, ClientMsgID: "b-1", Text: "still here?"})
	if got := bobWS.waitEvent(isAnswerTo("b1"), "answer"); got["code"] != string(protocol.CodeNotAMember) {
		t.Errorf("removed member's send answered %v, want not_a_member", got)
	}
	if n := bobWS.count(isMessage("c-2")); n != 0 {
		t.Errorf("removed member received %d messages of the chat", n)
	}

	var list struct {
		Chats []protocol.Chat `json:"chats"`
	}
	if err := do(ctx, http.MethodGet, url(carol, "/api/v1/chats"), carol.token, nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Chats) != 2 || list.Chats[0].ID != generalChat || list.Chats[1].Name != "dream team" {
		t.Errorf("carol's chats = %+v, want general then dream team", list.Chats)
	}
}

// TestSessions: logout ends a session on every replica and closes its
// websockets; an expiring session's websocket closes when it expires;
// cookie-authenticated changes from a foreign origin are refused; login is
// rate limited.
func TestSessions(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	alice := signUp(t, s.gateways[0], "alice")

	t.Run("logout closes websockets on every replica", func(t *testing.T) {
		// A second session of alice, on gateway 2, with a websocket on each.
		second := login(t, s.gateways[1], "alice")
		onFirst := second.dial()
		second.base = s.gateways[0]
		onOther := second.dial()
		keep := alice.dial() // another session of the same user stays open
		if err := do(ctx, http.MethodPost, s.gateways[1]+"/api/v1/auth/logout", second.token, nil, nil); err != nil {
			t.Fatal(err)
		}
		for _, w := range []*wsConn{onFirst, onOther} {
			var ce *websocket.CloseError
			testenv.Eventually(t, 10*time.Second, func() bool { return errors.As(w.closeErr(), &ce) }, "websocket closed")
			if ce.Code != protocol.CloseUnauthorized {
				t.Errorf("close code %d, want %d", ce.Code, protocol.CloseUnauthorized)
			}
		}
		wantAPIError(t, do(ctx, http.MethodGet, s.gateways[0]+"/api/v1/me", second.token, nil, nil), 401, protocol.CodeUnauthorized)
		keep.send(protocol.ClientEvent{Type: protocol.TypePing, ID: "alive"})
		keep.waitEvent(func(e map[string]any) bool { return e["type"] == protocol.TypePong }, "other session still open")
	})

	t.Run("logout ends a cached session on every replica", func(t *testing.T) {
		// Both gateways resolve the session, and cache it (for a minute
		// in this stack, see startStack).
		third := login(t, s.gateways[1], "alice")
		for _, gw := range s.gateways {
			if err := do(ctx, http.MethodGet, gw+"/api/v1/me", third.token, nil, nil); err != nil {
				t.Fatalf("me on %s: %v", gw, err)
			}
		}
		if err := do(ctx, http.MethodPost, s.gateways[1]+"/api/v1/auth/logout", third.token, nil, nil); err != nil {
			t.Fatal(err)
		}
		// The replica that logged out forgets at once; the other with the
		// revocation event, long before the cached entry would lapse.
		wantAPIError(t, do(ctx, http.MethodGet, s.gateways[1]+"/api/v1/me", third.token, nil, nil), 401, protocol.CodeUnauthorized)
		var lastErr error
		testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
			lastErr = do(ctx, http.MethodGet, s.gateways[0]+"/api/v1/me", third.token, nil, nil)
			ae, ok := errors.AsType[*apiError](lastErr)
			return ok && ae.Status == http.StatusUnauthorized
		}, func() string { return fmt.Sprintf("other replica refuses the session (last: %v)", lastErr) })
	})

	t.Run("expired session", func(t *testing.T) {
		short := login(t, s.gateways[0], "alice")
		execSQL(t, s, "UPDATE sessions SET expires_at = now() + interval '2 seconds' WHERE token_hash = (SELECT token_hash FROM sessions ORDER BY created_at DESC LIMIT 1)")
		w := short.dial()
		var ce *websocket.CloseError
		testenv.Eventually(t, 15*time.Second, func() bool { return errors.As(w.closeErr(), &ce) }, "websocket closed at expiry")
		if ce.Code != protocol.CloseUnauthorized {
			t.Errorf("close code %d, want %d", ce.Code, protocol.CloseUnauthorized)
		}
		wantAPIError(t, do(ctx, http.MethodGet, s.gateways[0]+"/api/v1/me", short.token, nil, nil), 401, protocol.CodeUnauthorized)
	})

	t.Run("cross-site request forgery", func(t *testing.T) {
		post := func(origin string, cookie bool) error {
			req, err := http.NewRequest(http.MethodPost, s.gateways[0]+"/api/v1/chats", strings.NewReader(`{"name":"`+testenv.UniqueName("c")+`"}`))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/json")
			if origin != "" {
				req.Header.Set("Origin", origin)
			}
			if cookie {
				req.AddCookie(&http.Cookie{Name: "session", Value: alice.token})
			} else {
				req.Header.Set("Authorization", "Bearer "+alice.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
		if err := post("https://evil.example", true); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("cookie POST from a foreign origin: %v, want 403", err)
		}
		if err := post("", true); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("cookie POST without origin: %v, want 403", err)
		}
		if err := post(s.gateways[0], true); err != nil {
			t.Errorf("cookie POST from the gateway's own origin: %v", err)
		}
		if err := post("https://evil.example", false); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("bearer POST from a foreign origin: %v, want 403", err)
		}
		if err := post("", false); err != nil {
			t.Errorf("bearer POST from an app (no origin): %v", err)
		}
	})

	t.Run("forged login from another site", func(t *testing.T) {
		// A cross-site form posting the attacker's credentials: refused by
		// its Origin, and by its content type.
		for _, tc := range []struct {
			origin, contentType string
			status              int
		}{
			{"https://evil.example", "application/json", 403},
			{"", "text/plain", 415},
		} {
			req, err := http.NewRequest(http.MethodPost, s.gateways[0]+"/api/v1/auth/login",
				strings.NewReader(`{"username":"alice","password":"`+testPassword+`"}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", tc.contentType)
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("login with origin %q and %s: status %d, want %d", tc.origin, tc.contentType, resp.StatusCode, tc.status)
			}
			if len(resp.Cookies()) > 0 {
				t.Errorf("refused login set a cookie")
			}
		}
	})

	t.Run("browsers never get the token", func(t *testing.T) {
		var out map[string]any
		if err := do(ctx, http.MethodPost, s.gateways[0]+"/api/v1/auth/login", "", map[string]string{"username": "alice", "password": testPassword}, &out); err != nil {
			t.Fatal(err)
		}
		if _, ok := out["token"]; ok {
			t.Errorf("login without \"token\": true returned the token")
		}
	})

	t.Run("login is rate limited per username", func(t *testing.T) {
		var last error
		for range 30 {
			last = do(ctx, http.MethodPost, s.gateways[1]+"/api/v1/auth/login", "", map[string]string{"username": "victim", "password": "guess guess"}, nil)
			var ae *apiError
			if errors.As(last, &ae) && ae.Code == string(protocol.CodeRateLimited) {
				break
			}
		}
		wantAPIError(t, last, 429, protocol.CodeRateLimited)
	})

	t.Run("changes over HTTP are rate limited per user, over both gateways", func(t *testing.T) {
		flood := signUp(t, s.gateways[0], "flood")
		other := signUp(t, s.gateways[1], "calm")
		var last error
		for i := range 200 {
			// Alternate gateways: the limit holds for the user, not a replica.
			last = do(ctx, http.MethodPut, s.gateways[i%2]+"/api/v1/chats/1/read", flood.token, map[string]int64{"seq": 1 << 40}, nil)
			var ae *apiError
			if errors.As(last, &ae) && ae.Code == string(protocol.CodeRateLimited) {
				break
			}
			// Until then each request reached the chat service, which refused
			// a position beyond the chat's end.
			wantAPIError(t, last, 400, protocol.CodeInvalidInput)
		}
		wantAPIError(t, last, 429, protocol.CodeRateLimited)
		// Another user is not affected.
		err := do(ctx, http.MethodPut, s.gateways[1]+"/api/v1/chats/1/read", other.token, map[string]int64{"seq": 1 << 40}, nil)
		wantAPIError(t, err, 400, protocol.CodeInvalidInput)
	})
}

// login opens another session for an existing user of signUp.
func login(t *testing.T, base, username string) *client {
	t.Helper()
	var out struct {
		Token string `json:"token"`
		User  struct {
			ID       int64  `json:"id"`
			Username string `json:"username"`
		} `json:"user"`
	}
	if err := do(context.Background(), http.MethodPost, base+"/api/v1/auth/login", "", map[string]any{"username": username, "password": testPassword, "token": true}, &out); err != nil {
		t.Fatalf("login %s: %v", username, err)
	}
	return &client{t: t, base: base, token: out.Token, userID: out.User.ID, username: out.User.Username}
}

func execSQL(t *testing.T, s *stack, sql string) {
	t.Helper()
	queryInt(t, s, "WITH done AS ("+sql+" RETURNING 1) SELECT count(*) FROM done")
}
