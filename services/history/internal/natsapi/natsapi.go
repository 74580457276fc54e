// Package natsapi is the history service's NATS transport: it serves history
// pages and maps domain errors to protocol codes.
package natsapi

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/history/internal/history"
)

// Register subscribes the history service's request handlers.
func Register(ctx context.Context, srv *natsbus.Server, subj subjects.Subjects, svc *history.Service) ([]*nats.Subscription, error) {
	page, err := natsbus.Handle(ctx, srv, subj.HistoryPage(), subjects.QueueHistory,
		func(ctx context.Context, req busapi.HistoryRequest) (busapi.HistoryPage, error) {
			msgs, err := svc.Page(ctx, req.ChatID, req.BeforeSeq, req.Limit)
			if err != nil {
				return busapi.HistoryPage{}, mapError(err)
			}
			out := busapi.HistoryPage{Messages: make([]protocol.Message, len(msgs))}
			for i, m := range msgs {
				out.Messages[i] = protocol.Message{
					Type: protocol.TypeMessage, ChatID: m.ChatID, Seq: m.Seq, SenderID: m.SenderID, Sender: m.Sender,
					ClientMsgID: m.ClientMsgID, Text: m.Text, SentAt: m.SentAt,
				}
			}
			return out, nil
		})
	if err != nil {
		return nil, err
	}
	return []*nats.Subscription{page}, nil
}

// mapError is the one place domain errors become protocol codes.
func mapError(err error) error {
	if errors.Is(err, history.ErrInvalidPage) {
		return busapi.Errorf(protocol.CodeInvalidInput, err.Error())
	}
	return fmt.Errorf("%w: %w", busapi.Errorf(protocol.CodeUnavailable, "history is not available now; retry"), err)
}
