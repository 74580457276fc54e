// Package history is the history service's domain: a stored chat message,
// the result of writing a batch of them, and the rules of a history page.
package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
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

// ErrNotFound is returned for an entry that is not stored.
var ErrNotFound = errors.New("no such entry")

// Why a change (an edit or a deletion) is refused: its target is not a
// message of the chat, was sent by someone else, or is deleted.
var (
	ErrTargetNotFound = errors.New("the target is no message of the chat")
	ErrNotSender      = errors.New("the target was sent by another user")
	ErrTargetDeleted  = errors.New("the target is deleted")
)

// Kind says what an entry of a chat's history is. The values are the
// protocol's (protocol.KindMessage, KindEdit, KindDelete).
type Kind string

// Kinds of entries.
const (
	KindMessage Kind = protocol.KindMessage // a message
	KindEdit    Kind = protocol.KindEdit    // a new text for the message TargetSeq
	KindDelete  Kind = protocol.KindDelete  // the deletion of the message TargetSeq
)

// Message is an entry of a chat's history: a message, or an edit or deletion
// of the message TargetSeq. Seq is 0 until it is stored; then it is its place
// in its chat (1, 2, 3, ...). A stored message shows its current state:
// EditedAt is set once it was edited, and a deleted one has Deleted set and
// no text.
type Message struct {
	ChatID      int64
	Seq         int64
	Kind        Kind
	TargetSeq   int64
	SenderID    int64
	Sender      string
	ClientMsgID string
	Text        string
	SentAt      time.Time
	EditedAt    time.Time // zero: never edited
	Deleted     bool
}

// Event returns the entry as the protocol's message event.
func (m Message) Event() protocol.Message {
	out := protocol.Message{
		Type: protocol.TypeMessage, ChatID: m.ChatID, Seq: m.Seq, Kind: string(m.Kind), TargetSeq: m.TargetSeq,
		SenderID: m.SenderID, Sender: m.Sender, ClientMsgID: m.ClientMsgID, Text: m.Text, SentAt: m.SentAt,
		Deleted: m.Deleted,
	}
	if !m.EditedAt.IsZero() {
		at := m.EditedAt
		out.EditedAt = &at
	}
	return out
}

// Stored is one entry of a written batch as it is stored. Duplicate is
// true when an entry with the same chat, sender and client message id had
// been stored before (by an earlier batch or earlier in the same batch): the
// entry then is that original, with its original Seq. Rejected is set (and
// nothing stored, no number spent) for an edit or deletion whose target
// failed the check: ErrTargetNotFound, ErrNotSender or ErrTargetDeleted.
type Stored struct {
	Message
	Duplicate bool
	Rejected  error
}

// Advance moves the history writer's stream position with a batch: in the
// batch's transaction, Stream's position goes from From to To, provided it
// still is From under Epoch; otherwise the batch fails with
// ErrPositionMoved and nothing is stored.
type Advance struct {
	// Stream is the message stream's name ("": no position is kept).
	Stream string
	// Epoch is the stream's creation time in Unix nanoseconds.
	Epoch int64
	// From is the position the writer read (the last stream sequence
	// stored); To is the batch's last stream sequence.
	From, To uint64
}

// ErrPositionMoved means another writer stored a batch since this writer
// read its position: the batch was not stored, the writer reads the
// position again and goes on from there.
var ErrPositionMoved = errors.New("the writer's stream position moved: another writer stored meanwhile")

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
	// Entry returns the entry of chat at seq, or ErrNotFound.
	Entry(ctx context.Context, chatID, seq int64) (Message, error)
	// BySender returns the entry of chat that sender stored under
	// clientMsgID, or ErrNotFound.
	BySender(ctx context.Context, chatID, senderID int64, clientMsgID string) (Message, error)
}

// MaxLatestChats bounds the chats of one Latest request.
const MaxLatestChats = busapi.MaxLatestChats

// Service answers history page requests. Who may read a chat is decided by
// the chat service, which the transport asks (through a short cache of
// grants) before serving a page.
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

// Entry returns one stored entry of a chat: the one at seq, or (seq 0) the
// one sender stored under clientMsgID. Errors: ErrInvalidPage for a bad
// request, ErrNotFound.
func (s *Service) Entry(ctx context.Context, chatID, seq, senderID int64, clientMsgID string) (Message, error) {
	var (
		m   Message
		err error
	)
	switch {
	case chatID <= 0:
		return Message{}, fmt.Errorf("%w: chat_id must be positive", ErrInvalidPage)
	case seq > 0:
		m, err = s.store.Entry(ctx, chatID, seq)
	case seq == 0 && senderID > 0 && clientMsgID != "":
		m, err = s.store.BySender(ctx, chatID, senderID, clientMsgID)
	default:
		return Message{}, fmt.Errorf("%w: give seq, or sender_id and client_msg_id", ErrInvalidPage)
	}
	if err != nil {
		return Message{}, fmt.Errorf("entry: %w", err)
	}
	return m, nil
}
