// Package busapi defines the JSON payloads of the NATS requests between
// services and the envelope of their replies. The subjects are built by
// package subjects; the websocket protocol lives in package protocol.
package busapi

import (
	"errors"
	"time"

	"github.com/communications/communications/libs/protocol"
)

// Error is the error half of a reply. Code is one of the protocol codes, so a
// gateway can pass it to the client unchanged.
type Error struct {
	Code    protocol.Code `json:"code"`
	Message string        `json:"message"`
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Errorf returns a coded error.
func Errorf(code protocol.Code, msg string) *Error { return &Error{Code: code, Message: msg} }

// CodeOf returns the code of err if it is (or wraps) an *Error, else
// protocol.CodeInternal.
func CodeOf(err error) protocol.Code {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Code
	}
	return protocol.CodeInternal
}

// Reply is the envelope of every reply: exactly one of Error and Data is set.
type Reply[T any] struct {
	Error *Error `json:"error,omitempty"`
	Data  T      `json:"data,omitzero"`
}

// RegisterRequest asks the auth service to create an account.
type RegisterRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// User is an account as other services see it.
type User struct {
	ID       int64  `json:"id"`
	Username string `json:"username"`
}

// LoginRequest asks the auth service to open a session.
type LoginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// Session is an open session. Token is secret: it is only ever sent to the
// user who logged in, never logged. ID identifies the session without
// revealing the token (the hex SHA-256 of the token); gateways use it to
// close a revoked session's websockets.
type Session struct {
	Token     string    `json:"token,omitempty"`
	ID        string    `json:"id"`
	User      User      `json:"user"`
	ExpiresAt time.Time `json:"expires_at"`
}

// SessionRevoked is published on subjects.AuthSessionRevoked at logout.
type SessionRevoked struct {
	SessionID string `json:"session_id"`
	UserID    int64  `json:"user_id"`
}

// UsersLookupRequest asks the auth service for the users with these
// usernames (matched regardless of letter case).
type UsersLookupRequest struct {
	Usernames []string `json:"usernames"`
}

// UsersLookup answers a lookup: one user per requested name, in request
// order. An unknown name fails the whole lookup with code unknown_user
// naming it.
type UsersLookup struct {
	Users []User `json:"users"`
}

// SessionRequest asks the auth service whom a session token belongs to, or
// to revoke it (logout).
type SessionRequest struct {
	Token string `json:"token"`
}

// Chat is a chat as clients see it (the protocol's type).
type Chat = protocol.Chat

// CreateChatRequest creates a chat. The creator is always a member;
// Members are usernames.
type CreateChatRequest struct {
	CreatorID   int64    `json:"creator_id"`
	CreatorName string   `json:"creator_name"`
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Members     []string `json:"members"`
}

// UpdateChatRequest edits a chat; nil fields are left alone. Only the
// creator may edit.
type UpdateChatRequest struct {
	ActorID       int64    `json:"actor_id"`
	ActorName     string   `json:"actor_name"`
	ChatID        int64    `json:"chat_id"`
	Name          *string  `json:"name,omitempty"`
	Description   *string  `json:"description,omitempty"`
	AddMembers    []string `json:"add_members,omitempty"`
	RemoveMembers []string `json:"remove_members,omitempty"`
}

// ChatRequest names a chat and the user asking (get, access).
type ChatRequest struct {
	UserID int64 `json:"user_id"`
	ChatID int64 `json:"chat_id"`
}

// ChatList is a user's chats, "general" first, then by name (a direct
// chat by the other member's name). UnreadUnavailable is set when counts
// were asked for but the history service did not answer: the chats then
// carry ReadSeq only.
type ChatList struct {
	Chats             []Chat `json:"chats"`
	UnreadUnavailable bool   `json:"unread_unavailable,omitempty"`
}

// ChatEvent is published on subjects.ChatEvents after a change. Kind is
// "created", "updated" or "members". Added and Removed are user ids whose
// membership changed; Chat is the chat after the change.
type ChatEvent struct {
	Kind    string  `json:"kind"`
	Chat    Chat    `json:"chat"`
	Added   []int64 `json:"added,omitempty"`
	Removed []int64 `json:"removed,omitempty"`
}

// UserChatsRequest asks the chat service for a user's chats. Counts (for
// chat.list) asks for each chat's LastSeq, ReadSeq and Unread as well, which
// costs a request to the history service: the HTTP chat list sets it, the
// gateways' reconciliation does not.
type UserChatsRequest struct {
	UserID int64 `json:"user_id"`
	Counts bool  `json:"counts,omitempty"`
}

// UserChats lists the ids of a user's chats.
type UserChats struct {
	ChatIDs []int64 `json:"chat_ids"`
}

// SendRequest asks the chat service to accept a message.
type SendRequest struct {
	ChatID      int64  `json:"chat_id"`
	SenderID    int64  `json:"sender_id"`
	Sender      string `json:"sender"`
	ClientMsgID string `json:"client_msg_id"`
	Text        string `json:"text"`
}

// SendResult says a message (or a change) is durable in the message
// stream. Duplicate: an entry with this client message id had been accepted
// before; Seq is then its sequence number when it is already stored (0:
// not stored yet).
type SendResult struct {
	Duplicate bool  `json:"duplicate"`
	Seq       int64 `json:"seq,omitempty"`
}

// ChangeRequest asks the chat service to accept an edit (Kind
// protocol.KindEdit, with the new Text) or a deletion (protocol.KindDelete,
// no Text) of the sender's message TargetSeq.
type ChangeRequest struct {
	ChatID      int64  `json:"chat_id"`
	SenderID    int64  `json:"sender_id"`
	Sender      string `json:"sender"`
	Kind        string `json:"kind"`
	TargetSeq   int64  `json:"target_seq"`
	ClientMsgID string `json:"client_msg_id"`
	Text        string `json:"text,omitempty"`
}

// StreamMessage is the payload of a message in the JetStream message stream,
// written by the chat service and read by the history writer. Kind is
// protocol.KindMessage (empty) for a message, or protocol.KindEdit or
// protocol.KindDelete for a change of the message TargetSeq.
type StreamMessage struct {
	ChatID      int64     `json:"chat_id"`
	SenderID    int64     `json:"sender_id"`
	Sender      string    `json:"sender"`
	ClientMsgID string    `json:"client_msg_id"`
	Text        string    `json:"text"`
	AcceptedAt  time.Time `json:"accepted_at"`
	Kind        string    `json:"kind,omitempty"`
	TargetSeq   int64     `json:"target_seq,omitempty"`
}

// MessageRequest asks the history service for one stored entry of a chat:
// the one at Seq, or (Seq 0) the one SenderID stored under ClientMsgID. The
// reply is the protocol.Message as it is now, or the error
// message_not_found.
type MessageRequest struct {
	ChatID      int64  `json:"chat_id"`
	Seq         int64  `json:"seq,omitempty"`
	SenderID    int64  `json:"sender_id,omitempty"`
	ClientMsgID string `json:"client_msg_id,omitempty"`
}

// HistoryRequest asks the history service, for user UserID, for the newest
// Limit messages of a chat with a sequence below BeforeSeq (0: the newest
// messages), or, with AfterSeq, the oldest Limit messages above it. The
// history service asks the chat service whether the user may read the chat.
type HistoryRequest struct {
	UserID    int64 `json:"user_id"`
	ChatID    int64 `json:"chat_id"`
	BeforeSeq int64 `json:"before_seq,omitempty"`
	AfterSeq  int64 `json:"after_seq,omitempty"`
	Limit     int   `json:"limit"`
}

// MaxLatestChats bounds the chats of one LatestRequest; a caller with more
// splits them over several requests.
const MaxLatestChats = 10000

// LatestRequest asks for the newest stored sequence of each chat (at most
// MaxLatestChats).
type LatestRequest struct {
	ChatIDs []int64 `json:"chat_ids"`
}

// Latest maps chat ids (decimal) to their newest stored sequence; chats
// with no message are left out.
type Latest struct {
	Seqs map[string]int64 `json:"seqs"`
}

// HistoryPage holds messages in ascending sequence order.
type HistoryPage struct {
	Messages []protocol.Message `json:"messages"`
}

// DirectRequest asks the chat service for the direct chat of user UserID
// (Username, from the session) with the user named Other (any letter case),
// creating it when it does not exist.
type DirectRequest struct {
	UserID   int64  `json:"user_id"`
	Username string `json:"username"`
	Other    string `json:"other"`
}

// DirectChat answers a DirectRequest: the chat, and whether this request
// created it.
type DirectChat struct {
	Chat    Chat `json:"chat"`
	Created bool `json:"created"`
}

// ReadRequest moves user UserID's read position in a chat forward to Seq.
type ReadRequest struct {
	UserID int64 `json:"user_id"`
	ChatID int64 `json:"chat_id"`
	Seq    int64 `json:"seq"`
}

// ReadResult is the read position after a ReadRequest: Seq is the stored
// position (higher than asked when it was already further), Unread the
// messages of others after it, and Moved whether this request moved it
// (then a ReadEvent was published).
type ReadResult struct {
	ChatID int64 `json:"chat_id"`
	Seq    int64 `json:"seq"`
	Unread int   `json:"unread"`
	Moved  bool  `json:"moved"`
}

// ReadEvent is published on subjects.ChatEventsRead when a user's read
// position in a chat moved; every gateway passes it to that user's
// connections as protocol.ReadPosition.
type ReadEvent struct {
	UserID int64 `json:"user_id"`
	ChatID int64 `json:"chat_id"`
	Seq    int64 `json:"seq"`
	Unread int   `json:"unread"`
}

// ReadMark is a user's read position in a chat (0: nothing read).
type ReadMark struct {
	ChatID int64 `json:"chat_id"`
	Seq    int64 `json:"seq"`
}

// UnreadRequest asks the history service, for user UserID, how many
// messages of others follow each read position.
type UnreadRequest struct {
	UserID int64      `json:"user_id"`
	Chats  []ReadMark `json:"chats"`
}

// UnreadCount is one chat's answer: its newest sequence (0: no message
// yet) and the unread messages of others after the position, at most
// protocol.MaxUnread.
type UnreadCount struct {
	ChatID  int64 `json:"chat_id"`
	LastSeq int64 `json:"last_seq"`
	Unread  int   `json:"unread"`
}

// Unread answers an UnreadRequest, one count per chat asked, in order.
type Unread struct {
	Chats []UnreadCount `json:"chats"`
}
