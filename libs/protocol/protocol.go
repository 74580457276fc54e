// Package protocol defines the websocket wire protocol between clients and
// the gateway: the frames, the events they carry, and the stable error and
// close codes. docs/protocol.md describes it for client authors.
//
// A websocket text message is a frame. A frame carries one or more events,
// each a JSON object on its own line (newline-delimited), so that the gateway
// can coalesce several events into one frame under load. Clients must split
// every frame they receive on '\n'; a client may send one event per frame or
// several.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Event types sent by clients.
const (
	TypeSend = "send" // post a message to a chat
	TypePing = "ping" // application-level keepalive; answered with pong
)

// Event types sent by the server.
const (
	TypeHello   = "hello"   // first event on every connection: who you are
	TypeAck     = "ack"     // a send was accepted and is durable
	TypeMessage = "message" // a stored message of a chat the user is in
	TypeError   = "error"   // a request failed, or the connection is about to close
	TypePong    = "pong"    // answer to ping
	TypeResumed = "resumed" // after hello on a resuming connection: the replay is complete
	// TypeChat: a chat the user is in was created, renamed, re-described,
	// or its members changed (also sent when the user is added).
	TypeChat = "chat"
	// TypeChatRemoved: the user was removed from a chat.
	TypeChatRemoved = "chat_removed"
)

// Limits of the protocol. The gateway enforces them.
const (
	// MaxFrameBytes is the largest websocket message a client may send; a
	// larger one is answered with error frame_too_large and ignored.
	MaxFrameBytes = 16 << 10
	// HardFrameLimit is the size past which the gateway stops reading a
	// frame and closes the connection with 1009 (message too big).
	HardFrameLimit = 64 << 10
	// MaxTextRunes is the longest message text, in Unicode code points.
	MaxTextRunes = 4000
	// MaxClientMsgIDLen is the longest client message id, in bytes.
	MaxClientMsgIDLen = 64
)

// ClientEvent is every event a client may send. Type selects which fields
// matter: send uses ID, ChatID, ClientMsgID and Text; ping uses ID.
type ClientEvent struct {
	Type string `json:"type"`
	// ID is chosen by the client and echoed in the answer (ack, error, pong)
	// so that it can match answers to requests. Optional.
	ID          string `json:"id,omitempty"`
	ChatID      int64  `json:"chat_id,omitempty"`
	ClientMsgID string `json:"client_msg_id,omitempty"`
	Text        string `json:"text,omitempty"`
}

// Resumed follows hello on a connection opened with ?resume=CHAT:SEQ,...
// once every message after those positions has been sent: for each chat,
// the sequence the replay reached. Live messages follow in order.
type Resumed struct {
	Type      string           `json:"type"`
	Positions map[string]int64 `json:"positions"`
}

// Hello is the first event the server sends on a connection.
type Hello struct {
	Type     string  `json:"type"`
	UserID   int64   `json:"user_id"`
	Username string  `json:"username"`
	Chats    []int64 `json:"chats"`
}

// Ack tells the sender that its message is durable: it will be stored and
// delivered even if any one process crashes now. The sequence number arrives
// with the message event. Duplicate is true when the server had already
// accepted a message with this client message id.
type Ack struct {
	Type        string `json:"type"`
	ID          string `json:"id,omitempty"`
	ChatID      int64  `json:"chat_id"`
	ClientMsgID string `json:"client_msg_id"`
	Duplicate   bool   `json:"duplicate,omitempty"`
}

// Message is a stored chat message as delivered to members.
type Message struct {
	Type        string    `json:"type"`
	ChatID      int64     `json:"chat_id"`
	Seq         int64     `json:"seq"`
	SenderID    int64     `json:"sender_id"`
	Sender      string    `json:"sender"`
	ClientMsgID string    `json:"client_msg_id"`
	Text        string    `json:"text"`
	SentAt      time.Time `json:"sent_at"`
}

// Member is a user in a chat's member list.
type Member struct {
	ID       int64  `json:"id"`
	Username string `json:"username"`
}

// Chat describes a chat. Members lists the members of a chat with explicit
// members; a chat every user is in ("general") has Everyone set and no
// member list.
type Chat struct {
	ID          int64     `json:"id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	CreatorID   int64     `json:"creator_id,omitempty"`
	Everyone    bool      `json:"everyone,omitempty"`
	Members     []Member  `json:"members,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
}

// ChatChanged is the event of type "chat": the chat as it is now.
type ChatChanged struct {
	Type string `json:"type"`
	Chat Chat   `json:"chat"`
}

// ChatRemoved is the event of type "chat_removed".
type ChatRemoved struct {
	Type   string `json:"type"`
	ChatID int64  `json:"chat_id"`
}

// Error reports a failed request (ID set) or a connection-level problem.
type Error struct {
	Type      string `json:"type"`
	ID        string `json:"id,omitempty"`
	Code      Code   `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
}

// Pong answers a ping.
type Pong struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
}

// ErrEmptyFrame is returned by SplitFrame for a frame with no events.
var ErrEmptyFrame = errors.New("frame holds no events")

// SplitFrame returns the events of a frame, skipping empty lines.
func SplitFrame(frame []byte) ([][]byte, error) {
	var events [][]byte
	for line := range bytes.SplitSeq(frame, []byte{'\n'}) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		events = append(events, line)
	}
	if len(events) == 0 {
		return nil, ErrEmptyFrame
	}
	return events, nil
}

// DecodeClientEvent parses one client event and checks its shape. It does not
// check permissions or whether the chat exists.
func DecodeClientEvent(raw []byte) (ClientEvent, error) {
	var ev ClientEvent
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return ClientEvent{}, fmt.Errorf("decode event: %w", err)
	}
	switch ev.Type {
	case TypeSend, TypePing:
	case "":
		return ClientEvent{}, errors.New(`event has no "type"`)
	default:
		return ClientEvent{}, fmt.Errorf("unknown event type %q", ev.Type)
	}
	return ev, nil
}

// ValidClientMsgID reports whether id may be used as a client message id:
// 1 to MaxClientMsgIDLen printable ASCII characters other than space.
func ValidClientMsgID(id string) bool {
	if len(id) == 0 || len(id) > MaxClientMsgIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}
