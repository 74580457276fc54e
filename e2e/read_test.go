package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/testenv"
)

// startDirect asks for c's direct chat with username and returns the HTTP
// status and the chat.
func (c *client) startDirect(t *testing.T, username string) (int, protocol.Chat) {
	t.Helper()
	b, err := json.Marshal(map[string]string{"username": username})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, c.base+"/api/v1/direct", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out chatBody
	if resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(data, &out); err != nil {
			t.Fatalf("direct chat answer %q: %v", data, err)
		}
	}
	return resp.StatusCode, out.Chat
}

// listChats returns c's chats by id, with their unread counts.
func (c *client) listChats(t *testing.T) map[int64]protocol.Chat {
	t.Helper()
	var list struct {
		Chats             []protocol.Chat `json:"chats"`
		UnreadUnavailable bool            `json:"unread_unavailable"`
	}
	if err := do(context.Background(), http.MethodGet, c.base+"/api/v1/chats", c.token, nil, &list); err != nil {
		t.Fatalf("list chats: %v", err)
	}
	if list.UnreadUnavailable {
		t.Fatal("the chat list came without unread counts")
	}
	out := map[int64]protocol.Chat{}
	for _, ch := range list.Chats {
		out[ch.ID] = ch
	}
	return out
}

func isReadPosition(chatID, seq int64, unread int) func(map[string]any) bool {
	return func(e map[string]any) bool {
		return e["type"] == protocol.TypeReadPosition && e["chat_id"] == float64(chatID) &&
			e["seq"] == float64(seq) && e["unread"] == float64(unread)
	}
}

func isReadPositionEvent(e map[string]any) bool { return e["type"] == protocol.TypeReadPosition }

// TestDirectChatsAndReadPositions: alice starts a direct chat with bob by
// name (again: the same chat); both see it live and in their lists. bob
// has two devices on different gateways: a read on one moves the position
// on both, and the unread counts of the chat list follow.
func TestDirectChatsAndReadPositions(t *testing.T) {
	s := startStack(t)
	alice := signUp(t, s.gateways[0], "alice")
	bob := signUp(t, s.gateways[0], "bob")
	aliceWS := alice.dial()
	bobPhone := bob.dial()
	bobLaptop := login(t, s.gateways[1], "bob").dial()

	status, dm := alice.startDirect(t, "BOB")
	if status != http.StatusCreated || !dm.Direct || dm.Name != "" || len(dm.Members) != 2 {
		t.Fatalf("start direct: %d %+v; want 201 and a direct chat of two", status, dm)
	}
	for _, tc := range []struct {
		who  *client
		name string
	}{{alice, "bob"}, {bob, "alice"}} {
		status, again := tc.who.startDirect(t, tc.name)
		if status != http.StatusOK || again.ID != dm.ID {
			t.Errorf("%s starts it again: %d chat %d; want 200 and chat %d", tc.who.username, status, again.ID, dm.ID)
		}
	}
	isDM := func(e map[string]any) bool {
		chat, ok := e["chat"].(map[string]any)
		return e["type"] == protocol.TypeChat && ok && chat["id"] == float64(dm.ID) && chat["direct"] == true
	}
	for name, ws := range map[string]*wsConn{"alice": aliceWS, "bob's phone": bobPhone, "bob's laptop": bobLaptop} {
		ws.waitEvent(isDM, name+" told of the direct chat")
	}
	for _, c := range []*client{alice, bob} {
		if got, ok := c.listChats(t)[dm.ID]; !ok || !got.Direct {
			t.Errorf("%s's list has the direct chat: %v (%+v)", c.username, ok, got)
		}
	}

	ctx := context.Background()
	dmURL := fmt.Sprintf("%s/api/v1/chats/%d", alice.base, dm.ID)
	refusals := []struct {
		name   string
		call   func() error
		status int
		code   protocol.Code
	}{
		{"direct chat with oneself", func() error {
			return do(ctx, http.MethodPost, alice.base+"/api/v1/direct", alice.token, map[string]string{"username": "Alice"}, nil)
		}, 400, protocol.CodeInvalidInput},
		{"direct chat with nobody", func() error {
			return do(ctx, http.MethodPost, alice.base+"/api/v1/direct", alice.token, map[string]string{"username": "nobody"}, nil)
		}, 400, protocol.CodeUnknownUser},
		{"edit a direct chat", func() error {
			return do(ctx, http.MethodPatch, dmURL, alice.token, map[string]string{"name": "ours"}, nil)
		}, 403, protocol.CodeNotCreator},
		{"read beyond the newest", func() error {
			return do(ctx, http.MethodPut, dmURL+"/read", bob.token, map[string]int64{"seq": 1}, nil)
		}, 400, protocol.CodeInvalidInput},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			wantAPIError(t, tc.call(), tc.status, tc.code)
		})
	}

	// alice writes three messages; bob's own message does not count.
	for i := 1; i <= 3; i++ {
		aliceWS.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: fmt.Sprint("a", i), ChatID: dm.ID, ClientMsgID: fmt.Sprint("a-", i), Text: fmt.Sprint("hi ", i)})
		aliceWS.waitEvent(isMessage(fmt.Sprint("a-", i)), "alice's message stored")
	}
	bobPhone.send(protocol.ClientEvent{Type: protocol.TypeSend, ID: "b1", ChatID: dm.ID, ClientMsgID: "b-1", Text: "hello"})
	bobLaptop.waitEvent(isMessage("b-1"), "bob's message on his laptop")
	got := bob.listChats(t)[dm.ID]
	if got.LastSeq != 4 || got.ReadSeq != 0 || got.Unread != 3 {
		t.Errorf("bob's counts before reading: last %d, read %d, unread %d; want 4, 0, 3", got.LastSeq, got.ReadSeq, got.Unread)
	}

	// bob reads up to 2 on his phone: both devices learn it, alice not.
	bobPhone.send(protocol.ClientEvent{Type: protocol.TypeRead, ID: "r1", ChatID: dm.ID, Seq: 2})
	bobPhone.waitEvent(isReadPosition(dm.ID, 2, 1), "the phone's read position")
	bobLaptop.waitEvent(isReadPosition(dm.ID, 2, 1), "the laptop's read position")
	got = bob.listChats(t)[dm.ID]
	if got.ReadSeq != 2 || got.Unread != 1 {
		t.Errorf("bob's counts after reading to 2: read %d, unread %d; want 2, 1", got.ReadSeq, got.Unread)
	}
	if got := alice.listChats(t)[dm.ID]; got.ReadSeq != 0 || got.Unread != 1 {
		t.Errorf("alice's counts: read %d, unread %d; want 0 and bob's message", got.ReadSeq, got.Unread)
	}

	// The laptop is behind: its read moves nothing and it is told where
	// bob is; no event goes out for it.
	bobLaptop.send(protocol.ClientEvent{Type: protocol.TypeRead, ID: "r2", ChatID: dm.ID, Seq: 1})
	testenv.Eventually(t, 20*time.Second, func() bool { return bobLaptop.count(isReadPosition(dm.ID, 2, 1)) == 2 },
		"the laptop told of the stored position")
	// Refusals are errors on the reading connection.
	bobLaptop.send(protocol.ClientEvent{Type: protocol.TypeRead, ID: "r3", ChatID: dm.ID, Seq: 99})
	if e := bobLaptop.waitEvent(isAnswerTo("r3"), "answer to a read beyond the end"); e["code"] != string(protocol.CodeInvalidInput) {
		t.Errorf("read beyond the end answered %v, want invalid_input", e)
	}
	bobLaptop.send(protocol.ClientEvent{Type: protocol.TypeRead, ID: "r4", ChatID: 9999, Seq: 1})
	if e := bobLaptop.waitEvent(isAnswerTo("r4"), "answer to a read of an unknown chat"); e["code"] != string(protocol.CodeChatNotFound) {
		t.Errorf("read of an unknown chat answered %v, want chat_not_found", e)
	}
	if n := bobPhone.count(isReadPositionEvent); n != 1 {
		t.Errorf("bob's phone got %d read positions, want 1 (nothing for reads that moved nothing)", n)
	}

	// Through HTTP, to the end: every device hears of it, unread drops to 0.
	var pos struct {
		ChatID int64 `json:"chat_id"`
		Seq    int64 `json:"seq"`
		Unread int   `json:"unread"`
	}
	if err := do(ctx, http.MethodPut, fmt.Sprintf("%s/api/v1/chats/%d/read", bob.base, dm.ID), bob.token, map[string]int64{"seq": 4}, &pos); err != nil {
		t.Fatal(err)
	}
	if pos.ChatID != dm.ID || pos.Seq != 4 || pos.Unread != 0 {
		t.Errorf("read over HTTP answered %+v, want seq 4 and nothing unread", pos)
	}
	bobPhone.waitEvent(isReadPosition(dm.ID, 4, 0), "the phone hears of the HTTP read")
	bobLaptop.waitEvent(isReadPosition(dm.ID, 4, 0), "the laptop hears of the HTTP read")
	got = bob.listChats(t)[dm.ID]
	if got.LastSeq != 4 || got.ReadSeq != 4 || got.Unread != 0 {
		t.Errorf("bob's counts at the end: last %d, read %d, unread %d; want 4, 4, 0", got.LastSeq, got.ReadSeq, got.Unread)
	}
	if n := aliceWS.count(isReadPositionEvent); n != 0 {
		t.Errorf("alice got %d of bob's read positions", n)
	}
}
