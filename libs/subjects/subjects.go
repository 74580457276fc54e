// Package subjects builds every NATS subject, stream, consumer and queue
// group name used by communications. No other package concatenates subject
// strings. All names start with a configurable prefix so that environments and
// tests sharing a NATS server do not collide.
package subjects

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultPrefix is the subject prefix used when none is configured.
const DefaultPrefix = "comms"

// Queue groups: every replica of a service joins its service's group, so a
// request is answered by exactly one replica.
const (
	QueueAuth    = "auth"
	QueueChat    = "chat"
	QueueHistory = "history"
)

// Subjects builds names under one prefix. The zero value is not usable; use
// New.
type Subjects struct {
	prefix string
}

// New validates prefix (one or more dot-separated tokens of lowercase
// letters, digits and '-') and returns a builder for it. The narrow alphabet
// keeps the stream name derived from the prefix unique per prefix.
func New(prefix string) (Subjects, error) {
	if prefix == "" {
		return Subjects{}, fmt.Errorf("subject prefix is empty")
	}
	for tok := range strings.SplitSeq(prefix, ".") {
		if tok == "" {
			return Subjects{}, fmt.Errorf("subject prefix %q has an empty token", prefix)
		}
		for _, r := range tok {
			if !(r == '-' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9')) {
				return Subjects{}, fmt.Errorf("subject prefix %q: %q is not a lowercase letter, digit or '-'", prefix, r)
			}
		}
	}
	return Subjects{prefix: prefix}, nil
}

// ValidToken reports whether tok can be one token of a subject: not empty and
// only letters, digits, '-' and '_' (no '.', '*', '>' or whitespace).
func ValidToken(tok string) error {
	if tok == "" {
		return fmt.Errorf("empty subject token")
	}
	for _, r := range tok {
		ok := r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return fmt.Errorf("subject token %q has invalid character %q", tok, r)
		}
	}
	return nil
}

// Prefix returns the prefix.
func (s Subjects) Prefix() string { return s.prefix }

// Request subjects served by the auth service (queue group QueueAuth).

// AuthRegister creates an account.
func (s Subjects) AuthRegister() string { return s.prefix + ".auth.register" }

// AuthLogin checks a password and opens a session.
func (s Subjects) AuthLogin() string { return s.prefix + ".auth.login" }

// AuthLogout revokes a session.
func (s Subjects) AuthLogout() string { return s.prefix + ".auth.logout" }

// AuthSession resolves a session token to its user.
func (s Subjects) AuthSession() string { return s.prefix + ".auth.session" }

// AuthUsersLookup resolves usernames to users (for the chat service).
func (s Subjects) AuthUsersLookup() string { return s.prefix + ".auth.users.lookup" }

// Events published by the auth service, received by every gateway (no
// queue group).

// AuthSessionRevoked announces a session ended by logout: every gateway
// closes that session's websockets.
func (s Subjects) AuthSessionRevoked() string { return s.prefix + ".auth.events.session_revoked" }

// Request subjects served by the chat service (queue group QueueChat).

// ChatSend accepts a message: membership check, validation, durable publish.
func (s Subjects) ChatSend() string { return s.prefix + ".chat.send" }

// ChatChange accepts an edit or a deletion of one of the sender's
// messages: membership, validation, the target checked with the history
// service, durable publish.
func (s Subjects) ChatChange() string { return s.prefix + ".chat.change" }

// ChatUserChats lists the chats a user is a member of.
func (s Subjects) ChatUserChats() string { return s.prefix + ".chat.userchats" }

// ChatCreate creates a chat.
func (s Subjects) ChatCreate() string { return s.prefix + ".chat.create" }

// ChatUpdate edits a chat (its creator only).
func (s Subjects) ChatUpdate() string { return s.prefix + ".chat.update" }

// ChatGet returns one chat to one of its members.
func (s Subjects) ChatGet() string { return s.prefix + ".chat.get" }

// ChatList returns the chats of a user with their names.
func (s Subjects) ChatList() string { return s.prefix + ".chat.list" }

// ChatAccess checks that a user may read a chat (before a history read).
func (s Subjects) ChatAccess() string { return s.prefix + ".chat.access" }

// ChatDirect gets or creates the direct chat of two users.
func (s Subjects) ChatDirect() string { return s.prefix + ".chat.direct" }

// ChatRead moves a user's read position in a chat.
func (s Subjects) ChatRead() string { return s.prefix + ".chat.read" }

// ChatEvents carries changes of chats (created, renamed, members added or
// removed), published by the chat service and received by every gateway
// (no queue group).
func (s Subjects) ChatEvents() string { return s.prefix + ".chat.events" }

// ChatEventsRead carries moved read positions, published by the chat
// service and received by every gateway (no queue group), which tells every
// connection of the user.
func (s Subjects) ChatEventsRead() string { return s.prefix + ".chat.events.read" }

// Request subjects served by the history service (queue group QueueHistory).

// HistoryPage returns a page of a chat's stored messages.
func (s Subjects) HistoryPage() string { return s.prefix + ".history.page" }

// HistoryLatest returns the newest stored sequence of each of some chats
// (the gateways' periodic position check).
func (s Subjects) HistoryLatest() string { return s.prefix + ".history.latest" }

// HistoryUnread counts, per chat, the unread messages after a user's read
// positions (for the chat service's chat list and read positions).
func (s Subjects) HistoryUnread() string { return s.prefix + ".history.unread" }

// HistoryMessage returns one stored entry of a chat, by sequence or by its
// sender and client message id (for the chat service).
func (s Subjects) HistoryMessage() string { return s.prefix + ".history.message" }

// The message stream, owned by the chat service and consumed by the history
// writer.

// MessagesStream is the JetStream stream holding accepted messages.
func (s Subjects) MessagesStream() string {
	return strings.ToUpper(strings.ReplaceAll(s.prefix, ".", "_")) + "_MESSAGES"
}

// MessagesAll matches every subject of the message stream.
func (s Subjects) MessagesAll() string { return s.prefix + ".msg.>" }

// Message is the stream subject of one chat's messages.
func (s Subjects) Message(chatID int64) string {
	return s.prefix + ".msg." + strconv.FormatInt(chatID, 10)
}

// HistoryWriterLock is the JetStream key-value bucket holding the history
// writers' lock (key HistoryWriterLockKey): the replica holding it is the
// one that stores.
func (s Subjects) HistoryWriterLock() string {
	return strings.ToUpper(strings.ReplaceAll(s.prefix, ".", "_")) + "_HISTORY_WRITER"
}

// HistoryWriterLockKey is the key of the history writers' lock; its value
// names the holder.
const HistoryWriterLockKey = "leader"
