// Package natsapi is the chat service's NATS transport: it subscribes the
// request subjects, calls the domain and maps its errors to protocol codes,
// and publishes the domain's chat events to the gateways.
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

// Register subscribes the chat service's request handlers, all in queue
// group subjects.QueueChat.
func Register(ctx context.Context, srv *natsbus.Server, subj subjects.Subjects, svc *chats.Service, reads *chats.Reads) ([]*nats.Subscription, error) {
	var (
		subs []*nats.Subscription
		errs []error
	)
	add := func(sub *nats.Subscription, err error) {
		subs = append(subs, sub)
		errs = append(errs, err)
	}
	add(natsbus.Handle(ctx, srv, subj.ChatSend(), subjects.QueueChat,
		func(ctx context.Context, req busapi.SendRequest) (busapi.SendResult, error) {
			acc, err := svc.Send(ctx, chats.Message{
				ChatID: req.ChatID, SenderID: req.SenderID, Sender: req.Sender,
				ClientMsgID: req.ClientMsgID, Text: req.Text,
			})
			if err != nil {
				return busapi.SendResult{}, mapError(err)
			}
			return busapi.SendResult{Duplicate: acc.Duplicate, Seq: acc.Seq}, nil
		}))
	add(natsbus.Handle(ctx, srv, subj.ChatChange(), subjects.QueueChat,
		func(ctx context.Context, req busapi.ChangeRequest) (busapi.SendResult, error) {
			acc, err := svc.ChangeMessage(ctx, chats.Message{
				ChatID: req.ChatID, SenderID: req.SenderID, Sender: req.Sender, Kind: req.Kind,
				TargetSeq: req.TargetSeq, ClientMsgID: req.ClientMsgID, Text: req.Text,
			})
			if err != nil {
				return busapi.SendResult{}, mapError(err)
			}
			return busapi.SendResult{Duplicate: acc.Duplicate, Seq: acc.Seq}, nil
		}))
	add(natsbus.Handle(ctx, srv, subj.ChatUserChats(), subjects.QueueChat,
		func(ctx context.Context, req busapi.UserChatsRequest) (busapi.UserChats, error) {
			ids, err := svc.UserChats(ctx, req.UserID)
			if err != nil {
				return busapi.UserChats{}, mapError(err)
			}
			return busapi.UserChats{ChatIDs: ids}, nil
		}))
	add(natsbus.Handle(ctx, srv, subj.ChatCreate(), subjects.QueueChat,
		func(ctx context.Context, req busapi.CreateChatRequest) (busapi.Chat, error) {
			c, err := svc.CreateChat(ctx, chats.NewChat{
				CreatorID: req.CreatorID, CreatorName: req.CreatorName,
				Name: req.Name, Description: req.Description, Members: req.Members,
			})
			if err != nil {
				return busapi.Chat{}, mapError(err)
			}
			return toProtocol(c), nil
		}))
	add(natsbus.Handle(ctx, srv, subj.ChatUpdate(), subjects.QueueChat,
		func(ctx context.Context, req busapi.UpdateChatRequest) (busapi.Chat, error) {
			c, err := svc.UpdateChat(ctx, chats.ChatEdit{
				ActorID: req.ActorID, ChatID: req.ChatID, Name: req.Name, Description: req.Description,
				AddMembers: req.AddMembers, RemoveMembers: req.RemoveMembers,
			})
			if err != nil {
				return busapi.Chat{}, mapError(err)
			}
			return toProtocol(c), nil
		}))
	add(natsbus.Handle(ctx, srv, subj.ChatGet(), subjects.QueueChat,
		func(ctx context.Context, req busapi.ChatRequest) (busapi.Chat, error) {
			c, err := svc.Get(ctx, req.UserID, req.ChatID)
			if err != nil {
				return busapi.Chat{}, mapError(err)
			}
			return toProtocol(c), nil
		}))
	add(natsbus.Handle(ctx, srv, subj.ChatList(), subjects.QueueChat,
		func(ctx context.Context, req busapi.UserChatsRequest) (busapi.ChatList, error) {
			var (
				cs      []chats.Chat
				missing bool
				err     error
			)
			if req.Counts {
				cs, missing, err = reads.List(ctx, req.UserID)
			} else {
				cs, err = svc.List(ctx, req.UserID)
			}
			if err != nil {
				return busapi.ChatList{}, mapError(err)
			}
			out := busapi.ChatList{Chats: make([]busapi.Chat, len(cs)), UnreadUnavailable: missing}
			for i, c := range cs {
				out.Chats[i] = toProtocol(c)
			}
			return out, nil
		}))
	add(natsbus.Handle(ctx, srv, subj.ChatAccess(), subjects.QueueChat,
		func(ctx context.Context, req busapi.ChatRequest) (struct{}, error) {
			if err := svc.Access(ctx, req.UserID, req.ChatID); err != nil {
				return struct{}{}, mapError(err)
			}
			return struct{}{}, nil
		}))
	add(natsbus.Handle(ctx, srv, subj.ChatDirect(), subjects.QueueChat,
		func(ctx context.Context, req busapi.DirectRequest) (busapi.DirectChat, error) {
			c, created, err := svc.StartDirect(ctx, chats.DirectStart{UserID: req.UserID, Username: req.Username, Other: req.Other})
			if err != nil {
				return busapi.DirectChat{}, mapError(err)
			}
			return busapi.DirectChat{Chat: toProtocol(c), Created: created}, nil
		}))
	add(natsbus.Handle(ctx, srv, subj.ChatRead(), subjects.QueueChat,
		func(ctx context.Context, req busapi.ReadRequest) (busapi.ReadResult, error) {
			p, err := reads.MarkRead(ctx, req.UserID, req.ChatID, req.Seq)
			if err != nil {
				return busapi.ReadResult{}, mapError(err)
			}
			return busapi.ReadResult{ChatID: p.ChatID, Seq: p.Seq, Unread: p.Unread, Moved: p.Moved}, nil
		}))
	if err := errors.Join(errs...); err != nil {
		for _, sub := range subs {
			if sub != nil {
				_ = sub.Unsubscribe()
			}
		}
		return nil, err
	}
	return subs, nil
}

// toProtocol is the one conversion of a chat to its wire form, for replies
// and events alike.
func toProtocol(c chats.Chat) protocol.Chat {
	out := protocol.Chat{
		ID: c.ID, Name: c.Name, Description: c.Description, CreatorID: c.CreatorID,
		Everyone: c.Everyone, Direct: c.Direct, CreatedAt: c.CreatedAt.UTC(),
		LastSeq: c.LastSeq, ReadSeq: c.ReadSeq, Unread: c.Unread,
	}
	if !c.Everyone && len(c.Members) > 0 {
		out.Members = make([]protocol.Member, len(c.Members))
		for i, m := range c.Members {
			out.Members[i] = protocol.Member{ID: m.ID, Username: m.Username}
		}
	}
	return out
}

// mapError is the one place domain errors become protocol codes. Refusals
// go to the client with the domain's message; anything else is logged by
// the server and answered unavailable (retryable).
func mapError(err error) error {
	msg := func(fallback string) string {
		if re, ok := errors.AsType[*chats.RequestError](err); ok {
			return re.Msg
		}
		return fallback
	}
	switch {
	case errors.Is(err, chats.ErrChatNotFound):
		return busapi.Errorf(protocol.CodeChatNotFound, "no such chat")
	case errors.Is(err, chats.ErrNotAMember):
		return busapi.Errorf(protocol.CodeNotAMember, "you are not a member of this chat")
	case errors.Is(err, chats.ErrInvalidMessage):
		return busapi.Errorf(protocol.CodeInvalidMessage, err.Error())
	case errors.Is(err, chats.ErrNotCreator):
		return busapi.Errorf(protocol.CodeNotCreator, msg("only the chat's creator can edit it"))
	case errors.Is(err, chats.ErrNameTaken):
		return busapi.Errorf(protocol.CodeNameTaken, msg("another chat has this name (names are compared regardless of letter case)"))
	case errors.Is(err, chats.ErrUnknownUser):
		return busapi.Errorf(protocol.CodeUnknownUser, msg("unknown user"))
	case errors.Is(err, chats.ErrDuplicateMember):
		return busapi.Errorf(protocol.CodeDuplicateMember, msg("a member is listed twice"))
	case errors.Is(err, chats.ErrMessageNotFound):
		return busapi.Errorf(protocol.CodeMessageNotFound, msg("no such message in this chat"))
	case errors.Is(err, chats.ErrNotSender):
		return busapi.Errorf(protocol.CodeNotSender, msg("only its sender can change a message"))
	case errors.Is(err, chats.ErrMessageDeleted):
		return busapi.Errorf(protocol.CodeMessageDeleted, msg("the message is deleted"))
	case errors.Is(err, chats.ErrInvalidInput):
		return busapi.Errorf(protocol.CodeInvalidInput, msg("invalid input"))
	}
	return fmt.Errorf("%w: %w", busapi.Errorf(protocol.CodeUnavailable,
		"the request could not be served now; retry it (a send with the same client_msg_id)"), err)
}
