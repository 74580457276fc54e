// Package e2e tests the whole system as a client sees it: every service runs
// in this process against real PostgreSQL, Redis and NATS, with two gateway
// replicas, and the tests talk to it only through HTTP and websockets.
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
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/libs/testenv"
)

const generalChat = 1

func isMessage(clientMsgID string) func(map[string]any) bool {
	return func(e map[string]any) bool {
		return e["type"] == protocol.TypeMessage && e["client_msg_id"] == clientMsgID
	}
}

func isAnswerTo(id string) func(map[string]any) bool {
	return func(e map[string]any) bool {
		return (e["type"] == protocol.TypeAck || e["type"] == protocol.TypeError) && e["id"] == id
	}
}

// TestOneMessageEndToEnd: A on gateway 1 and B on gateway 2, both in
// "general". A's message is acknowledged only once durable, reaches B through
// Redis fanout, is in PostgreSQL exactly once, and a retry with the same
// client message id stores nothing new.
func TestOneMessageEndToEnd(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[1], "bob")
	a := alice.dial()
	b := bob.dial()

	a.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "r1", ChatID: generalChat, ClientMsgID: "m-1", Text: "hello bob <3"})
	ack := a.waitEvent(isAnswerTo("r1"), "answer to r1")
	if ack["type"] != protocol.TypeAck {
		t.Fatalf("send r1 answered %v, want an ack", ack)
	}
	// Acknowledged means durable: the message is in the JetStream stream
	// (file storage) until the history writer has committed it to
	// PostgreSQL, and only then leaves the stream. Look at the stream
	// first, so that a message on its way from one to the other is seen.
	if !inStream(t, s) && storedCount(t, s, "m-1") != 1 {
		t.Fatal("acknowledged message is neither in the stream nor in PostgreSQL")
	}

	got := b.waitEvent(isMessage("m-1"), "message m-1 at bob")
	want := map[string]any{"chat_id": float64(generalChat), "seq": float64(1), "sender": "alice",
		"sender_id": float64(alice.userID), "text": "hello bob <3"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("bob got %s = %v, want %v (event %v)", k, got[k], v, got)
		}
	}
	a.waitEvent(isMessage("m-1"), "message m-1 back at alice")
	testenv.Eventually(t, 10*time.Second, func() bool { return storedCount(t, s, "m-1") == 1 }, "m-1 stored")

	// A retry of the same client message id is acknowledged as a duplicate
	// and stores nothing.
	a.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "r2", ChatID: generalChat, ClientMsgID: "m-1", Text: "hello bob <3"})
	dup := a.waitEvent(isAnswerTo("r2"), "answer to r2")
	if dup["type"] != protocol.TypeAck || dup["duplicate"] != true {
		t.Fatalf("retry answered %v, want a duplicate ack", dup)
	}
	// A later message proves the writer has moved past the retry: it gets
	// sequence 2, so the retry spent no number and stored no row.
	a.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "r3", ChatID: generalChat, ClientMsgID: "m-2", Text: "second"})
	second := b.waitEvent(isMessage("m-2"), "message m-2 at bob")
	if second["seq"] != float64(2) {
		t.Errorf("second message seq = %v, want 2", second["seq"])
	}
	if n := storedCount(t, s, "m-1"); n != 1 {
		t.Errorf("m-1 stored %d times, want 1", n)
	}
	if n := b.count(isMessage("m-1")); n != 1 {
		t.Errorf("bob saw m-1 %d times, want 1", n)
	}

	// Both are in the history, read through the other gateway.
	var page struct {
		Messages []protocol.Message `json:"messages"`
	}
	testenv.EventuallyDescribe(t, 10*time.Second, func() bool {
		err := do(context.Background(), http.MethodGet, s.gateways[1]+"/api/v1/chats/1/messages?limit=10", bob.token, nil, &page)
		return err == nil && len(page.Messages) == 2
	}, func() string { return fmt.Sprintf("history holds 2 messages, has %d", len(page.Messages)) })
	if page.Messages[0].ClientMsgID != "m-1" || page.Messages[1].ClientMsgID != "m-2" {
		t.Errorf("history order = %q, %q; want m-1, m-2", page.Messages[0].ClientMsgID, page.Messages[1].ClientMsgID)
	}
	// What a client that saw seq 1 missed.
	if err := do(context.Background(), http.MethodGet, s.gateways[0]+"/api/v1/chats/1/messages?after=1", alice.token, nil, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Messages) != 1 || page.Messages[0].Seq != 2 {
		t.Errorf("messages after 1 = %+v, want only seq 2", page.Messages)
	}
}

// TestSendErrors: a send to an unknown chat, with an empty text or a bad
// client message id gets an error frame and nothing is stored or delivered.
func TestSendErrors(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	a := alice.dial()
	tests := []struct {
		name string
		ev   protocol.ClientEvent
		code protocol.Code
	}{
		{"unknown chat", protocol.ClientEvent{Type: protocol.TypeSend, ChatID: 9999, ClientMsgID: "e1", Text: "x"}, protocol.CodeChatNotFound},
		{"empty text", protocol.ClientEvent{Type: protocol.TypeSend, ChatID: generalChat, ClientMsgID: "e2", Text: "  "}, protocol.CodeInvalidMessage},
		{"bad client id", protocol.ClientEvent{Type: protocol.TypeSend, ChatID: generalChat, ClientMsgID: "has space", Text: "x"}, protocol.CodeInvalidMessage},
		{"unknown type", protocol.ClientEvent{Type: "shout"}, protocol.CodeBadRequest},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.ev.ID = "err-" + string(rune('a'+i))
			a.t = t
			a.send(tc.ev)
			got := a.waitEvent(isAnswerTo(tc.ev.ID), "answer")
			if got["type"] != protocol.TypeError || got["code"] != string(tc.code) {
				t.Errorf("answer = %v, want error %s", got, tc.code)
			}
		})
	}
	a.t = t
	// A valid send after the errors is stored with sequence 1: none of the
	// refused sends was stored or took a number.
	a.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "ok", ChatID: generalChat, ClientMsgID: "ok-1", Text: "fine"})
	m := a.waitEvent(isMessage("ok-1"), "valid message")
	if m["seq"] != float64(1) {
		t.Errorf("seq after refused sends = %v, want 1", m["seq"])
	}
	if n := storedTotal(t, s); n != 1 {
		t.Errorf("%d messages stored, want 1", n)
	}
	// A frame over the limit gets an error frame and is ignored; the
	// connection still works.
	big := []byte(`{"type":"send","chat_id":1,"client_msg_id":"big","text":"` + strings.Repeat("x", protocol.MaxFrameBytes) + `"}`)
	if err := a.conn.WriteMessage(websocket.TextMessage, big); err != nil {
		t.Fatal(err)
	}
	a.waitEvent(func(e map[string]any) bool { return e["code"] == string(protocol.CodeFrameTooLarge) }, "frame_too_large")
	a.send(protocol.ClientEvent{Type: protocol.TypePing, ID: "still-there"})
	a.waitEvent(func(e map[string]any) bool { return e["type"] == protocol.TypePong && e["id"] == "still-there" }, "pong")
	if n := storedTotal(t, s); n != 1 {
		t.Errorf("%d messages stored after the oversized frame, want 1", n)
	}

	// Past the hard limit the gateway closes the connection with 1009.
	huge := []byte(strings.Repeat("x", protocol.HardFrameLimit+1))
	if err := a.conn.WriteMessage(websocket.TextMessage, huge); err != nil {
		t.Fatal(err)
	}
	var ce *websocket.CloseError
	testenv.Eventually(t, 10*time.Second, func() bool {
		return errors.As(a.closeErr(), &ce)
	}, "connection closed")
	if ce.Code != websocket.CloseMessageTooBig {
		t.Errorf("close code = %d, want %d", ce.Code, websocket.CloseMessageTooBig)
	}
}

// TestUnauthenticatedWebsocket: no session is a 401 with a JSON error; a
// foreign Origin is a 403.
func TestUnauthenticatedWebsocket(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	tests := []struct {
		name   string
		header http.Header
		status int
	}{
		{"no session", http.Header{}, http.StatusUnauthorized},
		{"bad session", http.Header{"Authorization": {"Bearer nope"}}, http.StatusUnauthorized},
		{"foreign origin", http.Header{"Authorization": {"Bearer " + alice.token}, "Origin": {"https://evil.example"}}, http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url := "ws" + s.gateways[0][len("http"):] + "/ws"
			conn, resp, err := websocketDial(url, tc.header)
			if err == nil {
				conn.Close()
				t.Fatal("dial succeeded, want refusal")
			}
			if resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("dial response %v, want status %d", resp, tc.status)
			}
		})
	}
}

func inStream(t *testing.T, s *stack) bool {
	t.Helper()
	nc, err := nats.Connect(s.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	subj, err := subjects.New(s.prefix)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), subj.MessagesStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs > 0
}

func storedCount(t *testing.T, s *stack, clientMsgID string) int {
	t.Helper()
	return queryInt(t, s, "SELECT count(*) FROM messages WHERE client_msg_id = $1", clientMsgID)
}

func storedTotal(t *testing.T, s *stack) int {
	t.Helper()
	return queryInt(t, s, "SELECT count(*) FROM messages")
}

func queryInt(t *testing.T, s *stack, sql string, args ...any) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.postgresURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
