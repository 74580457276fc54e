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
	TypeSend   = "send"   // post a message to a chat
	TypePing   = "ping"   // application-level keepalive; answered with pong
	TypeEdit   = "edit"   // replace the text of one's own message
	TypeDelete = "delete" // delete one's own message (a tombstone stays)
	TypeRead   = "read"   // the user has read a chat up to a sequence
	TypeTyping = "typing" // the user is typing in a chat (ephemeral)
	TypeView   = "view"   // the chat the connection shows now (0: none)
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
	// TypePresence: the online members of the viewed chat (after view).
	TypePresence = "presence"
	// TypePresenceChanged: a member of the viewed chat came online or
	// went offline.
	TypePresenceChanged = "presence_changed"
	// TypeTyping is also a server event: a member of the viewed chat is
	// typing.
	// TypeReadPosition: the user's read position in a chat moved (from any
	// of the user's devices).
	TypeReadPosition = "read_position"
)

// Message kinds. A chat's sequence numbers count every entry of its
// history: messages, and the edits and deletions of messages.
const (
	KindMessage = ""       // a message (the field is left out)
	KindEdit    = "edit"   // an edit of message TargetSeq; Text is the new text
	KindDelete  = "delete" // a deletion of message TargetSeq
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
// matter: send uses ID, ChatID, ClientMsgID and Text; edit uses ID, ChatID,
// Seq (the message edited), ClientMsgID and Text; delete uses ID, ChatID,
// Seq and ClientMsgID; read uses ChatID and Seq; typing and view use ChatID;
// ping uses ID.
type ClientEvent struct {
	Type string `json:"type"`
	// ID is chosen by the client and echoed in the answer (ack, error, pong)
	// so that it can match answers to requests. Optional.
	ID          string `json:"id,omitempty"`
	ChatID      int64  `json:"chat_id,omitempty"`
	Seq         int64  `json:"seq,omitempty"`
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

// Ack tells the sender that its message (or edit, or deletion) is durable:
// it will be stored and delivered even if any one process crashes now. The
// sequence number arrives with the message event. Duplicate is true when the
// server had already accepted an entry with this client message id; Seq is
// then its sequence number if it is already stored (0: not stored yet, its
// message event follows).
type Ack struct {
	Type        string `json:"type"`
	ID          string `json:"id,omitempty"`
	ChatID      int64  `json:"chat_id"`
	ClientMsgID string `json:"client_msg_id"`
	Duplicate   bool   `json:"duplicate,omitempty"`
	Seq         int64  `json:"seq,omitempty"`
}

// Message is a stored entry of a chat's history as delivered to members:
// a message, or (Kind edit or delete) a change of the message TargetSeq.
// In history pages a message shows its current state: EditedAt is set once
// it was edited, and a deleted message has Deleted set and no text.
type Message struct {
	Type        string     `json:"type"`
	ChatID      int64      `json:"chat_id"`
	Seq         int64      `json:"seq"`
	Kind        string     `json:"kind,omitempty"`
	TargetSeq   int64      `json:"target_seq,omitempty"`
	SenderID    int64      `json:"sender_id"`
	Sender      string     `json:"sender"`
	ClientMsgID string     `json:"client_msg_id"`
	Text        string     `json:"text"`
	SentAt      time.Time  `json:"sent_at"`
	EditedAt    *time.Time `json:"edited_at,omitempty"`
	Deleted     bool       `json:"deleted,omitempty"`
}

// Member is a user in a chat's member list.
type Member struct {
	ID       int64  `json:"id"`
	Username string `json:"username"`
}

// Chat describes a chat. Members lists the members of a chat with explicit
// members; a chat every user is in ("general") has Everyone set and no
// member list. A direct chat (Direct) has exactly two members and no name;
// clients show it under the other member's name.
//
// LastSeq, ReadSeq and Unread are per user and filled only in the user's
// chat list: the newest sequence of the chat, the user's read position, and
// how many messages of others after it are unread (at most MaxUnread).
type Chat struct {
	ID          int64     `json:"id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	CreatorID   int64     `json:"creator_id,omitempty"`
	Everyone    bool      `json:"everyone,omitempty"`
	Direct      bool      `json:"direct,omitempty"`
	Members     []Member  `json:"members,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	LastSeq     int64     `json:"last_seq,omitempty"`
	ReadSeq     int64     `json:"read_seq,omitempty"`
	Unread      int       `json:"unread,omitempty"`
}

// MaxUnread caps unread counts; clients show "99+" style beyond it.
const MaxUnread = 100

// Presence is the event of type "presence": the online members of a chat,
// sent after a view event (for "general": every online user).
//
// Online holds at most MaxPresenceList members, the first by username;
// Total counts them all.
type Presence struct {
	Type   string   `json:"type"`
	ChatID int64    `json:"chat_id"`
	Online []Member `json:"online"`
	Total  int      `json:"total"`
}

// MaxPresenceList bounds the members listed in a presence event.
const MaxPresenceList = 500

// PresenceChanged is the event of type "presence_changed", sent to the
// connections viewing a chat when one of its members comes online (first
// connection on any gateway) or goes offline (last connection closed, or
// its gateway's lease expired).
type PresenceChanged struct {
	Type     string `json:"type"`
	ChatID   int64  `json:"chat_id"`
	UserID   int64  `json:"user_id"`
	Username string `json:"username"`
	Online   bool   `json:"online"`
}

// Typing is the event of type "typing" sent to the connections viewing a
// chat (other than the typist's own) when a member types.
type Typing struct {
	Type     string `json:"type"`
	ChatID   int64  `json:"chat_id"`
	UserID   int64  `json:"user_id"`
	Username string `json:"username"`
}

// ReadPosition is the event of type "read_position", sent to every
// connection of a user when the user's read position in a chat moves.
type ReadPosition struct {
	Type   string `json:"type"`
	ChatID int64  `json:"chat_id"`
	Seq    int64  `json:"seq"`
	Unread int    `json:"unread"`
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
	case TypeSend, TypePing, TypeEdit, TypeDelete, TypeRead, TypeTyping, TypeView:
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
