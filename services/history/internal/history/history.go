// Package history is the history service's domain: a stored chat message,
// the result of writing a batch of them, and the rules of a history page.
package history

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Page limits.
const (
	// DefaultPageLimit is the page size when a request gives none.
	DefaultPageLimit = 50
	// MaxPageLimit is the largest page a request may ask for.
	MaxPageLimit = 100
)

// ErrInvalidPage is returned for a page request with a bad chat id,
// sequence or limit.
var ErrInvalidPage = errors.New("invalid page request")

// Message is a chat message. Seq is 0 until the message is stored; then it
// is the message's place in its chat (1, 2, 3, ...).
type Message struct {
	ChatID      int64
	Seq         int64
	SenderID    int64
	Sender      string
	ClientMsgID string
	Text        string
	SentAt      time.Time
}

// Stored is one message of a written batch as it is stored. Duplicate is
// true when a message with the same chat, sender and client message id had
// been stored before (by an earlier batch or earlier in the same batch): the
// message then is that original, with its original Seq.
type Stored struct {
	Message
	Duplicate bool
}

// PageStore reads stored messages.
type PageStore interface {
	// Page returns at most limit messages of chat with a sequence below
	// beforeSeq (any sequence when beforeSeq is 0): the newest of them, in
	// ascending sequence order.
	Page(ctx context.Context, chatID, beforeSeq int64, limit int) ([]Message, error)
	// After returns at most limit messages of chat with a sequence above
	// afterSeq: the oldest of them, in ascending sequence order.
	After(ctx context.Context, chatID, afterSeq int64, limit int) ([]Message, error)
	// Latest returns the newest stored sequence of each chat that has one.
	Latest(ctx context.Context, chatIDs []int64) (map[int64]int64, error)
	UnreadStore
}

// MaxLatestChats bounds the chats of one Latest request.
const MaxLatestChats = 10000

// Service answers history page requests. Who may read a chat is decided by
// the chat service, which the transport asks before every page.
type Service struct{ store PageStore }

// NewService returns a Service reading from store.
func NewService(store PageStore) *Service { return &Service{store: store} }

// Page returns the newest limit messages of chat below beforeSeq (0: the
// newest messages), ascending. A limit of 0 means DefaultPageLimit.
func (s *Service) Page(ctx context.Context, chatID, beforeSeq int64, limit int) ([]Message, error) {
	switch {
	case chatID <= 0:
		return nil, fmt.Errorf("%w: chat_id must be positive", ErrInvalidPage)
	case beforeSeq < 0:
		return nil, fmt.Errorf("%w: before_seq must not be negative", ErrInvalidPage)
	case limit < 0 || limit > MaxPageLimit:
		return nil, fmt.Errorf("%w: limit must be 1 to %d", ErrInvalidPage, MaxPageLimit)
	case limit == 0:
		limit = DefaultPageLimit
	}
	if beforeSeq == 1 {
		return []Message{}, nil
	}
	msgs, err := s.store.Page(ctx, chatID, beforeSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("history page: %w", err)
	}
	return msgs, nil
}

// PageAfter returns the oldest limit messages of chat above afterSeq,
// ascending: what a client that has seen afterSeq missed. A limit of 0 means
// DefaultPageLimit.
func (s *Service) PageAfter(ctx context.Context, chatID, afterSeq int64, limit int) ([]Message, error) {
	switch {
	case chatID <= 0:
		return nil, fmt.Errorf("%w: chat_id must be positive", ErrInvalidPage)
	case afterSeq < 0:
		return nil, fmt.Errorf("%w: after_seq must not be negative", ErrInvalidPage)
	case limit < 0 || limit > MaxPageLimit:
		return nil, fmt.Errorf("%w: limit must be 1 to %d", ErrInvalidPage, MaxPageLimit)
	case limit == 0:
		limit = DefaultPageLimit
	}
	msgs, err := s.store.After(ctx, chatID, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("history page after: %w", err)
	}
	return msgs, nil
}

// Latest returns the newest stored sequence of each of the chats that has
// one: what gateways compare with what they delivered, to catch a lost last
// message.
func (s *Service) Latest(ctx context.Context, chatIDs []int64) (map[int64]int64, error) {
	if len(chatIDs) > MaxLatestChats {
		return nil, fmt.Errorf("%w: at most %d chats", ErrInvalidPage, MaxLatestChats)
	}
	if len(chatIDs) == 0 {
		return map[int64]int64{}, nil
	}
	latest, err := s.store.Latest(ctx, chatIDs)
	if err != nil {
		return nil, fmt.Errorf("latest: %w", err)
	}
	return latest, nil
}
