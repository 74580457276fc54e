package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// onlineIn is who a client believes online in a chat: the last presence
// list it got for the chat with every later change applied, as a client
// would keep it.
func (w *wsConn) onlineIn(chatID int64) map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	online := map[string]bool{}
	for _, e := range w.events {
		if e["chat_id"] != float64(chatID) {
			continue
		}
		switch e["type"] {
		case protocol.TypePresence:
			clear(online)
			list, _ := e["online"].([]any)
			for _, m := range list {
				if m, ok := m.(map[string]any); ok {
					online[m["username"].(string)] = true
				}
			}
		case protocol.TypePresenceChanged:
			if e["online"] == true {
				online[e["username"].(string)] = true
			} else {
				delete(online, e["username"].(string))
			}
		}
	}
	return online
}

// waitOnline waits until the client believes exactly the users online in
// the chat.
func (w *wsConn) waitOnline(chatID int64, within time.Duration, users ...string) {
	w.t.Helper()
	want := map[string]bool{}
	for _, u := range users {
		want[u] = true
	}
	testenv.EventuallyDescribe(w.t, within, func() bool { return maps.Equal(want, w.onlineIn(chatID)) }, func() string {
		return fmt.Sprintf("online in chat %d: %v, want %v (connection error: %v)", chatID, slices.Sorted(maps.Keys(w.onlineIn(chatID))), users, w.closeErr())
	})
}

func isPresenceChanged(chatID int64, username string, online bool) func(map[string]any) bool {
	return func(e map[string]any) bool {
		return e["type"] == protocol.TypePresenceChanged && e["chat_id"] == float64(chatID) &&
			e["username"] == username && e["online"] == online
	}
}

func isTyping(chatID int64, username string) func(map[string]any) bool {
	return func(e map[string]any) bool {
		return e["type"] == protocol.TypeTyping && e["chat_id"] == float64(chatID) && e["username"] == username
	}
}

func anyTyping(e map[string]any) bool { return e["type"] == protocol.TypeTyping }

// TestPresenceAndTyping: alice on gateway 1 views a chat and sees bob come
// online through gateway 2 and go offline when his connection closes;
// typing reaches the members viewing the chat on either gateway, but not a
// member who views another chat, nor the typist; only members may view or
// type.
func TestPresenceAndTyping(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[1], "bob")
	carol := signUp(t, s.gateways[0], "carol")
	dave := signUp(t, s.gateways[0], "dave")
	team := alice.createChat(t, "team", "bob", "carol")

	a := alice.dial()
	a.send(protocol.ClientEvent{Type: protocol.TypeView, ID: "v1", ChatID: team.ID})
	a.waitEvent(func(e map[string]any) bool {
		return e["type"] == protocol.TypePresence && e["chat_id"] == float64(team.ID)
	}, "presence list of team")
	a.waitOnline(team.ID, 10*time.Second, "alice")

	b := bob.dial()
	a.waitOnline(team.ID, 10*time.Second, "alice", "bob")
	changed := a.waitEvent(isPresenceChanged(team.ID, "bob", true), "bob online")
	if changed["user_id"] != float64(bob.userID) {
		t.Errorf("presence_changed %v: want bob's user id %d", changed, bob.userID)
	}

	// dave is not in team: he may neither view it nor type in it.
	d := dave.dial()
	d.send(protocol.ClientEvent{Type: protocol.TypeView, ID: "v2", ChatID: team.ID})
	d.send(protocol.ClientEvent{Type: protocol.TypeTyping, ID: "t2", ChatID: team.ID})
	for _, id := range []string{"v2", "t2"} {
		e := d.waitEvent(func(e map[string]any) bool { return e["type"] == protocol.TypeError && e["id"] == id }, "error for "+id)
		if e["code"] != string(protocol.CodeNotAMember) {
			t.Errorf("%s answered %v, want not_a_member", id, e)
		}
	}

	// Typing: bob (gateway 2) views team, carol (gateway 1) views general.
	b.send(protocol.ClientEvent{Type: protocol.TypeView, ChatID: team.ID})
	b.waitOnline(team.ID, 10*time.Second, "alice", "bob")
	c := carol.dial()
	c.send(protocol.ClientEvent{Type: protocol.TypeView, ChatID: generalChat})
	c.waitOnline(generalChat, 10*time.Second, "alice", "bob", "carol", "dave")
	a.waitOnline(team.ID, 10*time.Second, "alice", "bob", "carol")
	// Two in a row: the second, within the typing interval, is dropped.
	a.send(protocol.ClientEvent{Type: protocol.TypeTyping, ChatID: team.ID})
	a.send(protocol.ClientEvent{Type: protocol.TypeTyping, ChatID: team.ID})
	typing := b.waitEvent(isTyping(team.ID, "alice"), "alice typing, at bob")
	if typing["user_id"] != float64(alice.userID) {
		t.Errorf("typing %v: want alice's user id %d", typing, alice.userID)
	}
	// A message sent after the typing travels the same fanout channel
	// behind it: once everyone has the message, the typing was delivered
	// wherever it was going to be.
	a.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "s1", ChatID: team.ID, ClientMsgID: "after-typing", Text: "hi"})
	for _, w := range []*wsConn{a, b, c} {
		w.waitEvent(isMessage("after-typing"), "message after typing")
	}
	if n := b.count(anyTyping); n != 1 {
		t.Errorf("bob got %d typing events, want 1 (the second within the interval is dropped)", n)
	}
	if n := c.count(anyTyping); n != 0 {
		t.Errorf("carol, viewing another chat, got %d typing events, want 0", n)
	}
	if n := a.count(anyTyping); n != 0 {
		t.Errorf("alice got %d typing events of her own, want 0", n)
	}
	// Typing is never stored: the chat's history holds the message only.
	var page struct {
		Messages []protocol.Message `json:"messages"`
	}
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		err := do(context.Background(), http.MethodGet, fmt.Sprintf("%s/api/v1/chats/%d/messages", s.gateways[1], team.ID), bob.token, nil, &page)
		return err == nil && len(page.Messages) > 0
	}, func() string { return "the message in team's history" })
	if len(page.Messages) != 1 || page.Messages[0].ClientMsgID != "after-typing" || page.Messages[0].Seq != 1 {
		t.Errorf("team's history = %+v, want only the message, seq 1", page.Messages)
	}

	// bob closes his connection: he goes offline for alice and carol.
	if err := b.conn.Close(); err != nil {
		t.Fatal(err)
	}
	a.waitOnline(team.ID, 10*time.Second, "alice", "carol")
	a.waitEvent(isPresenceChanged(team.ID, "bob", false), "bob offline")
	c.waitOnline(generalChat, 10*time.Second, "alice", "carol", "dave")

	// Viewing nothing stops presence changes: carol views nothing, alice
	// views general, dave leaves.
	c.send(protocol.ClientEvent{Type: protocol.TypeView, ChatID: 0})
	c.send(protocol.ClientEvent{Type: protocol.TypePing, ID: "p1"})
	c.waitEvent(func(e map[string]any) bool { return e["type"] == protocol.TypePong && e["id"] == "p1" }, "pong")
	a.send(protocol.ClientEvent{Type: protocol.TypeView, ChatID: generalChat})
	a.waitOnline(generalChat, 10*time.Second, "alice", "carol", "dave")
	if err := d.conn.Close(); err != nil {
		t.Fatal(err)
	}
	a.waitEvent(isPresenceChanged(generalChat, "dave", false), "dave offline, at alice")
	// Both connections are on gateway 1, which handed the change to every
	// viewer at once: anything for carol was queued before this pong.
	c.send(protocol.ClientEvent{Type: protocol.TypePing, ID: "p2"})
	c.waitEvent(func(e map[string]any) bool { return e["type"] == protocol.TypePong && e["id"] == "p2" }, "pong")
	if n := c.count(isPresenceChanged(generalChat, "dave", false)); n != 0 {
		t.Errorf("carol, viewing nothing, got dave's change %d times", n)
	}
}

// TestDeadGatewayUsersGoOffline: a gateway that dies without cleaning up
// (its presence lease is no longer renewed) has its users shown offline to
// viewers on the other gateway within the lease TTL plus one sweep.
func TestDeadGatewayUsersGoOffline(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[1], "bob")
	a := alice.dial()
	a.send(protocol.ClientEvent{Type: protocol.TypeView, ChatID: generalChat})
	b := bob.dial()
	a.waitOnline(generalChat, 10*time.Second, "alice", "bob")

	s.killPresence(1)
	// The documented bound, and some room for a loaded test machine.
	a.waitOnline(generalChat, presenceTTL+presenceSweep+3*time.Second, "alice")
	// Only presence died: bob's connection is still open.
	b.send(protocol.ClientEvent{Type: protocol.TypePing, ID: "p"})
	b.waitEvent(func(e map[string]any) bool { return e["type"] == protocol.TypePong }, "pong from the abandoned gateway")
}

// TestSendFlood: a client sending faster than its connection's rate limit
// gets rate_limited errors, then the close code 4003 (reconnect later and
// resume); another client on the same gateway is unaffected.
func TestSendFlood(t *testing.T) {
	s := startStack(t)
	mallory := signUp(t, s.gateways[0], "mallory")
	carol := signUp(t, s.gateways[0], "carol")
	m := mallory.dial()
	c := carol.dial()

	// 300 sends in three frames, far over 20/s with a burst of 40.
	for f := range 3 {
		var frame []string
		for i := range 100 {
			n := f*100 + i
			frame = append(frame, fmt.Sprintf(`{"type":"send","id":"f%d","chat_id":%d,"client_msg_id":"flood-%d","text":"x"}`, n, generalChat, n))
		}
		if err := m.conn.WriteMessage(websocket.TextMessage, []byte(strings.Join(frame, "\n"))); err != nil {
			break // closed already
		}
	}
	testenv.EventuallyDescribe(t, 30*time.Second, func() bool { return m.closeErr() != nil },
		func() string { return "the flooding connection is closed" })
	var ce *websocket.CloseError
	if err := m.closeErr(); !errors.As(err, &ce) || ce.Code != protocol.CloseRateLimited {
		t.Fatalf("flooding connection ended with %v, want close code %d", err, protocol.CloseRateLimited)
	}
	if !protocol.CloseShouldReconnect(ce.Code) {
		t.Errorf("close code %d is not in the reconnect range", ce.Code)
	}
	limited := m.count(func(e map[string]any) bool {
		return e["type"] == protocol.TypeError && e["code"] == string(protocol.CodeRateLimited) && e["retryable"] == true &&
			strings.HasPrefix(fmt.Sprint(e["id"]), "f")
	})
	acked := m.count(func(e map[string]any) bool { return e["type"] == protocol.TypeAck })
	if limited == 0 {
		t.Error("no rate_limited error before the close")
	}
	if acked == 0 || acked >= 300 {
		t.Errorf("%d sends acknowledged, want some (the burst) but not all", acked)
	}

	// carol, on the same gateway, sends as usual.
	c.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "c1", ChatID: generalChat, ClientMsgID: "carol-1", Text: "still here"})
	if ack := c.waitEvent(isAnswerTo("c1"), "answer to carol"); ack["type"] != protocol.TypeAck {
		t.Fatalf("carol's send answered %v, want an ack", ack)
	}
	c.waitEvent(isMessage("carol-1"), "carol's message")
	if err := c.closeErr(); err != nil {
		t.Errorf("carol's connection closed: %v", err)
	}
}
