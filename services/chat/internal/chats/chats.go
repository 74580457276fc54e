// Package chats is the chat service's domain: which chats exist, who is in
// them, and whether a message may be accepted. It owns the permission check
// for every send.
package chats

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/communications/communications/libs/protocol"
)

// Sentinel errors of the domain.
var (
	ErrChatNotFound   = errors.New("chat not found")
	ErrNotAMember     = errors.New("not a member of the chat")
	ErrInvalidMessage = errors.New("invalid message")
)

// GeneralChatID is the id of the chat "general", which every user is in.
const GeneralChatID int64 = 1

// Chat is a chat's record.
type Chat struct {
	ID   int64
	Name string
	// Everyone is true for chats every user belongs to ("general").
	Everyone bool
}

// Message is a message to accept.
type Message struct {
	ChatID      int64
	SenderID    int64
	Sender      string
	ClientMsgID string
	Text        string
	AcceptedAt  time.Time
}

// Store reads chats and memberships.
type Store interface {
	// Chat returns the chat with id, or ErrChatNotFound.
	Chat(ctx context.Context, id int64) (Chat, error)
	// IsMember reports whether user is an explicit member of chat.
	IsMember(ctx context.Context, chatID, userID int64) (bool, error)
	// UserChats lists the ids of the chats user belongs to, "everyone"
	// chats included, in ascending order.
	UserChats(ctx context.Context, userID int64) ([]int64, error)
}

// Publisher makes an accepted message durable.
type Publisher interface {
	// Publish stores m durably and reports whether a message with the same
	// sender and client message id had already been published.
	Publish(ctx context.Context, m Message) (duplicate bool, err error)
}

// Service accepts messages.
type Service struct {
	store Store
	pub   Publisher
	now   func() time.Time
}

// NewService returns a Service.
func NewService(store Store, pub Publisher) *Service {
	return &Service{store: store, pub: pub, now: time.Now}
}

// Send validates m, checks that its sender is a member of its chat, and
// publishes it durably. When Send returns nil the message will be stored.
func (s *Service) Send(ctx context.Context, m Message) (duplicate bool, err error) {
	if err := validate(m); err != nil {
		return false, err
	}
	if err := s.checkMember(ctx, m.ChatID, m.SenderID); err != nil {
		return false, err
	}
	m.AcceptedAt = s.now().UTC()
	dup, err := s.pub.Publish(ctx, m)
	if err != nil {
		return false, fmt.Errorf("send: %w", err)
	}
	return dup, nil
}

// UserChats lists the chats of a user.
func (s *Service) UserChats(ctx context.Context, userID int64) ([]int64, error) {
	ids, err := s.store.UserChats(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("user chats: %w", err)
	}
	return ids, nil
}

func (s *Service) checkMember(ctx context.Context, chatID, userID int64) error {
	c, err := s.store.Chat(ctx, chatID)
	if err != nil {
		return fmt.Errorf("check member: %w", err)
	}
	if c.Everyone {
		return nil
	}
	ok, err := s.store.IsMember(ctx, chatID, userID)
	if err != nil {
		return fmt.Errorf("check member: %w", err)
	}
	if !ok {
		return ErrNotAMember
	}
	return nil
}

func validate(m Message) error {
	switch {
	case m.ChatID <= 0:
		return fmt.Errorf("%w: chat_id must be positive", ErrInvalidMessage)
	case m.SenderID <= 0 || m.Sender == "":
		return fmt.Errorf("%w: no sender", ErrInvalidMessage)
	case !protocol.ValidClientMsgID(m.ClientMsgID):
		return fmt.Errorf("%w: client_msg_id must be 1 to %d printable characters without spaces", ErrInvalidMessage, protocol.MaxClientMsgIDLen)
	case !utf8.ValidString(m.Text):
		return fmt.Errorf("%w: text is not valid UTF-8", ErrInvalidMessage)
	case strings.TrimSpace(m.Text) == "":
		return fmt.Errorf("%w: text is empty", ErrInvalidMessage)
	case utf8.RuneCountInString(m.Text) > protocol.MaxTextRunes:
		return fmt.Errorf("%w: text is longer than %d characters", ErrInvalidMessage, protocol.MaxTextRunes)
	}
	return nil
}
