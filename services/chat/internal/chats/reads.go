package chats

import (
	"context"
	"fmt"
	"log/slog"
)

// ReadStore keeps read positions.
type ReadStore interface {
	// ReadPositions returns the user's read position in each chat that
	// has one.
	ReadPositions(ctx context.Context, userID int64) (map[int64]int64, error)
	// MoveReadPosition moves the user's position in the chat forward to
	// seq; a position at or beyond seq stays (moved false). It returns the
	// position stored. A chat that does not exist is ErrChatNotFound.
	MoveReadPosition(ctx context.Context, userID, chatID, seq int64) (stored int64, moved bool, err error)
}

// ReadMark is a read position: every entry of the chat up to Seq is read.
type ReadMark struct {
	ChatID int64
	Seq    int64
}

// UnreadCount is a chat's newest sequence and the unread messages of others
// after a read position.
type UnreadCount struct {
	ChatID  int64
	LastSeq int64
	Unread  int
}

// Counter counts unread messages; the history service owns the messages.
type Counter interface {
	// Unread returns one count per mark, in order.
	Unread(ctx context.Context, userID int64, marks []ReadMark) ([]UnreadCount, error)
}

// ReadEvent announces that a user's read position in a chat moved.
type ReadEvent struct {
	UserID int64
	ChatID int64
	Seq    int64
	Unread int
}

// ReadEvents announces moved read positions to the gateways.
type ReadEvents interface {
	ReadMoved(ctx context.Context, ev ReadEvent) error
}

// ReadPosition is a user's read position in a chat after a read.
type ReadPosition struct {
	ChatID int64
	Seq    int64
	Unread int
	// Moved is true when the read moved the position (and announced it).
	Moved bool
}

// Reads keeps each member's read position per chat and fills unread
// counts into a user's chat list.
type Reads struct {
	chats   *Service
	store   ReadStore
	counter Counter
	events  ReadEvents
	log     *slog.Logger
}

// NewReads returns Reads checking membership with chats.
func NewReads(chats *Service, store ReadStore, counter Counter, events ReadEvents, log *slog.Logger) *Reads {
	return &Reads{chats: chats, store: store, counter: counter, events: events, log: log}
}

// List returns the user's chats as Service.List does, each with the user's
// read position (ReadSeq), the chat's newest sequence (LastSeq) and the
// unread messages of others (Unread, capped by the history service). When
// the history service does not answer, the list comes back without LastSeq
// and Unread and countsMissing is set (and it is logged): a chat list must
// not fail for a count.
func (r *Reads) List(ctx context.Context, userID int64) (cs []Chat, countsMissing bool, err error) {
	cs, err = r.chats.List(ctx, userID)
	if err != nil {
		return nil, false, err
	}
	positions, err := r.store.ReadPositions(ctx, userID)
	if err != nil {
		return nil, false, fmt.Errorf("list chats: %w", err)
	}
	marks := make([]ReadMark, len(cs))
	for i := range cs {
		cs[i].ReadSeq = positions[cs[i].ID]
		marks[i] = ReadMark{ChatID: cs[i].ID, Seq: cs[i].ReadSeq}
	}
	if len(cs) == 0 {
		return cs, false, nil
	}
	counts, err := r.counter.Unread(ctx, userID, marks)
	if err == nil && len(counts) != len(cs) {
		err = fmt.Errorf("%d counts for %d chats", len(counts), len(cs))
	}
	if err != nil {
		r.log.WarnContext(ctx, "unread counts left out of a chat list", "user_id", userID, "err", err)
		return cs, true, nil
	}
	for i, n := range counts {
		if n.ChatID != cs[i].ID {
			r.log.WarnContext(ctx, "unread counts left out of a chat list", "user_id", userID,
				"err", fmt.Sprintf("count %d is of chat %d, not %d", i, n.ChatID, cs[i].ID))
			for j := range cs {
				cs[j].LastSeq, cs[j].Unread = 0, 0
			}
			return cs, true, nil
		}
		cs[i].LastSeq, cs[i].Unread = n.LastSeq, n.Unread
	}
	return cs, false, nil
}

// MarkRead moves the user's read position in a chat forward to seq, which
// must be a sequence the chat has (1 to its newest), and returns the
// position after it with its unread count. A lower position than the
// stored one changes nothing (Moved false, the stored position returned).
// A moved position is announced to the gateways, which tell every
// connection of the user. The newest sequence is asked of the history
// service; when it does not answer, nothing is stored and the error wraps
// the cause (the read may be retried).
// Errors: ErrInvalidInput, ErrChatNotFound, ErrNotAMember.
func (r *Reads) MarkRead(ctx context.Context, userID, chatID, seq int64) (ReadPosition, error) {
	switch {
	case chatID <= 0:
		return ReadPosition{}, fmt.Errorf("mark read: %w", ErrChatNotFound)
	case seq <= 0:
		return ReadPosition{}, refuse(ErrInvalidInput, "seq must be a positive sequence number")
	}
	if err := r.chats.checkMember(ctx, chatID, userID); err != nil {
		return ReadPosition{}, fmt.Errorf("mark read: %w", err)
	}
	n, err := r.count(ctx, userID, chatID, seq)
	if err != nil {
		return ReadPosition{}, err
	}
	if seq > n.LastSeq {
		return ReadPosition{}, refuse(ErrInvalidInput, "seq %d is beyond the newest message of the chat (%d)", seq, n.LastSeq)
	}
	stored, moved, err := r.store.MoveReadPosition(ctx, userID, chatID, seq)
	if err != nil {
		return ReadPosition{}, fmt.Errorf("mark read: %w", err)
	}
	if !moved {
		if n, err = r.count(ctx, userID, chatID, stored); err != nil {
			return ReadPosition{}, err
		}
		return ReadPosition{ChatID: chatID, Seq: stored, Unread: n.Unread}, nil
	}
	ev := ReadEvent{UserID: userID, ChatID: chatID, Seq: stored, Unread: n.Unread}
	if err := r.events.ReadMoved(ctx, ev); err != nil {
		// Stored by now: the user's other devices see it at their next
		// chat list.
		r.log.ErrorContext(ctx, "announce read position", "user_id", userID, "chat_id", chatID, "err", err)
	}
	return ReadPosition{ChatID: chatID, Seq: stored, Unread: n.Unread, Moved: true}, nil
}

// count asks the counter about one chat.
func (r *Reads) count(ctx context.Context, userID, chatID, seq int64) (UnreadCount, error) {
	counts, err := r.counter.Unread(ctx, userID, []ReadMark{{ChatID: chatID, Seq: seq}})
	if err == nil && (len(counts) != 1 || counts[0].ChatID != chatID) {
		err = fmt.Errorf("%d counts for chat %d", len(counts), chatID)
	}
	if err != nil {
		return UnreadCount{}, fmt.Errorf("mark read: count unread: %w", err)
	}
	return counts[0], nil
}
