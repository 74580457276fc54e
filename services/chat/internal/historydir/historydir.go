// Package historydir reads stored entries of chats by asking the history
// service, which owns them, over NATS. It implements chats.Entries.
package historydir

import (
	"context"
	"errors"
	"fmt"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/chat/internal/chats"
)

// Directory asks subjects.HistoryMessage.
type Directory struct {
	bus     natsbus.Requester
	subject string
}

// New returns a Directory asking over bus. Each request is bounded by its
// context's deadline (the handling of the request it serves).
func New(bus natsbus.Requester, subj subjects.Subjects) *Directory {
	return &Directory{bus: bus, subject: subj.HistoryMessage()}
}

// Entry implements chats.Entries.
func (d *Directory) Entry(ctx context.Context, chatID, seq int64) (chats.Entry, error) {
	return d.get(ctx, busapi.MessageRequest{ChatID: chatID, Seq: seq})
}

// BySender implements chats.Entries.
func (d *Directory) BySender(ctx context.Context, chatID, senderID int64, clientMsgID string) (chats.Entry, error) {
	return d.get(ctx, busapi.MessageRequest{ChatID: chatID, SenderID: senderID, ClientMsgID: clientMsgID})
}

// get asks for one entry. History's message_not_found wraps
// chats.ErrMessageNotFound; no answer in time wraps natsbus.ErrUnavailable.
func (d *Directory) get(ctx context.Context, req busapi.MessageRequest) (chats.Entry, error) {
	var m protocol.Message
	err := d.bus.Request(ctx, d.subject, req, &m)
	if be, ok := errors.AsType[*busapi.Error](err); ok && be.Code == protocol.CodeMessageNotFound {
		return chats.Entry{}, fmt.Errorf("history entry: %w", chats.ErrMessageNotFound)
	}
	if err != nil {
		return chats.Entry{}, fmt.Errorf("history entry: %w", err)
	}
	return chats.Entry{Seq: m.Seq, Kind: m.Kind, SenderID: m.SenderID, Deleted: m.Deleted}, nil
}
