package history

import (
	"context"
	"fmt"

	"github.com/communications/communications/libs/protocol"
)

// Limits of unread counts.
const (
	// MaxUnreadChats bounds the chats of one Unread request.
	MaxUnreadChats = 10000
	// UnreadScanWindow bounds the entries looked at per chat: only the
	// newest UnreadScanWindow sequence numbers of a chat are counted from.
	// Counting stops at protocol.MaxUnread messages of others; the window
	// bounds the scan when most entries after the position are the user's
	// own messages, edits or deletions, which do not count.
	UnreadScanWindow = 10 * protocol.MaxUnread
)

// ReadMark is a user's read position in a chat: every entry up to Seq is
// read (0: nothing is).
type ReadMark struct {
	ChatID int64
	Seq    int64
}

// UnreadCount is what follows a read position: the chat's newest sequence
// (0 when it has no entry yet) and the unread messages.
type UnreadCount struct {
	ChatID  int64
	LastSeq int64
	Unread  int
}

// UnreadStore counts unread messages.
type UnreadStore interface {
	// Unread returns, for each mark in order, the chat's newest sequence
	// and the number of entries of kind message after the mark's sequence
	// and within the newest window sequence numbers, not deleted and not
	// sent by userID, counting at most limit.
	Unread(ctx context.Context, userID int64, marks []ReadMark, limit, window int) ([]UnreadCount, error)
}

// Unread counts, for user userID, the messages of others after each read
// position, at most protocol.MaxUnread per chat: edits and deletions are
// entries of the history but not messages to read, and deleted messages
// and the user's own do not count.
func (s *Service) Unread(ctx context.Context, userID int64, marks []ReadMark) ([]UnreadCount, error) {
	switch {
	case userID <= 0:
		return nil, fmt.Errorf("%w: user_id must be positive", ErrInvalidPage)
	case len(marks) > MaxUnreadChats:
		return nil, fmt.Errorf("%w: at most %d chats", ErrInvalidPage, MaxUnreadChats)
	case len(marks) == 0:
		return []UnreadCount{}, nil
	}
	for _, m := range marks {
		if m.ChatID <= 0 || m.Seq < 0 {
			return nil, fmt.Errorf("%w: chat %d at %d: chat ids must be positive and positions not negative", ErrInvalidPage, m.ChatID, m.Seq)
		}
	}
	counts, err := s.store.Unread(ctx, userID, marks, protocol.MaxUnread, UnreadScanWindow)
	if err != nil {
		return nil, fmt.Errorf("unread: %w", err)
	}
	return counts, nil
}
