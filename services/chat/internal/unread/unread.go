// Package unread counts unread messages by asking the history service,
// which owns the messages, over NATS. It implements chats.Counter.
package unread

import (
	"context"
	"fmt"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/chat/internal/chats"
)

// Counter asks on subjects.HistoryUnread.
type Counter struct {
	bus     natsbus.Requester
	subject string
}

// New returns a Counter asking over bus. Each request is bounded by its
// context's deadline (the handling of the request it serves).
func New(bus natsbus.Requester, subj subjects.Subjects) *Counter {
	return &Counter{bus: bus, subject: subj.HistoryUnread()}
}

// Unread returns the count of each mark, in order; no answer in time wraps
// natsbus.ErrUnavailable.
func (c *Counter) Unread(ctx context.Context, userID int64, marks []chats.ReadMark) ([]chats.UnreadCount, error) {
	req := busapi.UnreadRequest{UserID: userID, Chats: make([]busapi.ReadMark, len(marks))}
	for i, m := range marks {
		req.Chats[i] = busapi.ReadMark{ChatID: m.ChatID, Seq: m.Seq}
	}
	var resp busapi.Unread
	if err := c.bus.Request(ctx, c.subject, req, &resp); err != nil {
		return nil, fmt.Errorf("count unread: %w", err)
	}
	out := make([]chats.UnreadCount, len(resp.Chats))
	for i, n := range resp.Chats {
		out[i] = chats.UnreadCount{ChatID: n.ChatID, LastSeq: n.LastSeq, Unread: n.Unread}
	}
	return out, nil
}
