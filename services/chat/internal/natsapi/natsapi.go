// Package natsapi is the chat service's NATS transport: it subscribes the
// request subjects, calls the domain and maps its errors to protocol codes.
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
	"github.com/communications/communications/services/chat/internal/chats"
)

// Register subscribes the chat service's request handlers.
func Register(ctx context.Context, srv *natsbus.Server, subj subjects.Subjects, svc *chats.Service) ([]*nats.Subscription, error) {
	send, err := natsbus.Handle(ctx, srv, subj.ChatSend(), subjects.QueueChat,
		func(ctx context.Context, req busapi.SendRequest) (busapi.SendResult, error) {
			dup, err := svc.Send(ctx, chats.Message{
				ChatID: req.ChatID, SenderID: req.SenderID, Sender: req.Sender,
				ClientMsgID: req.ClientMsgID, Text: req.Text,
			})
			if err != nil {
				return busapi.SendResult{}, mapError(err)
			}
			return busapi.SendResult{Duplicate: dup}, nil
		})
	if err != nil {
		return nil, err
	}
	list, err := natsbus.Handle(ctx, srv, subj.ChatUserChats(), subjects.QueueChat,
		func(ctx context.Context, req busapi.UserChatsRequest) (busapi.UserChats, error) {
			ids, err := svc.UserChats(ctx, req.UserID)
			if err != nil {
				return busapi.UserChats{}, mapError(err)
			}
			return busapi.UserChats{ChatIDs: ids}, nil
		})
	if err != nil {
		return nil, err
	}
	return []*nats.Subscription{send, list}, nil
}

// mapError is the one place domain errors become protocol codes.
func mapError(err error) error {
	switch {
	case errors.Is(err, chats.ErrChatNotFound):
		return busapi.Errorf(protocol.CodeChatNotFound, "no such chat")
	case errors.Is(err, chats.ErrNotAMember):
		return busapi.Errorf(protocol.CodeNotAMember, "you are not a member of this chat")
	case errors.Is(err, chats.ErrInvalidMessage):
		return busapi.Errorf(protocol.CodeInvalidMessage, err.Error())
	}
	return fmt.Errorf("%w: %w", busapi.Errorf(protocol.CodeUnavailable, "the message could not be accepted now; retry with the same client_msg_id"), err)
}
