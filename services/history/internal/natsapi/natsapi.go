// Package natsapi is the history service's NATS transport: it serves history
// pages, newest sequences, single entries and unread counts, and maps
// domain errors to
// protocol codes.
package natsapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/history/internal/history"
	"github.com/communications/communications/services/history/internal/msgjson"
)

// Access decides whether a user may read a chat. The chat service owns
// membership; the history service asks it for a page unless it granted the
// same user and chat within the access cache's TTL (NewCachedAccess).
type Access interface {
	// CanRead returns nil, or a *busapi.Error with code chat_not_found or
	// not_a_member, or another error when the chat service did not answer.
	CanRead(ctx context.Context, userID, chatID int64) error
}

// Register subscribes the history service's request handlers.
func Register(ctx context.Context, srv *natsbus.Server, subj subjects.Subjects, svc *history.Service, access Access) ([]*nats.Subscription, error) {
	// Pages are the service's most frequent and largest replies: each is
	// encoded straight into the reply's buffer (msgjson), as
	// encoding/json would encode a busapi.HistoryPage.
	page, err := natsbus.HandleAppend(ctx, srv, subj.HistoryPage(), subjects.QueueHistory,
		func(ctx context.Context, req busapi.HistoryRequest, dst []byte) ([]byte, error) {
			if err := access.CanRead(ctx, req.UserID, req.ChatID); err != nil {
				switch busapi.CodeOf(err) {
				case protocol.CodeChatNotFound, protocol.CodeNotAMember:
					return dst, err
				}
				return dst, fmt.Errorf("%w: %w", busapi.Errorf(protocol.CodeUnavailable, "membership could not be checked now; retry"), err)
			}
			var msgs []history.Message
			var err error
			switch {
			case req.AfterSeq > 0 && req.BeforeSeq > 0:
				return dst, busapi.Errorf(protocol.CodeInvalidInput, "give before_seq or after_seq, not both")
			case req.AfterSeq > 0:
				msgs, err = svc.PageAfter(ctx, req.ChatID, req.AfterSeq, req.Limit)
			default:
				msgs, err = svc.Page(ctx, req.ChatID, req.BeforeSeq, req.Limit)
			}
			if err != nil {
				return dst, mapError(err)
			}
			if dst, err = msgjson.AppendPage(dst, msgs); err != nil {
				return dst, fmt.Errorf("encode page: %w", err)
			}
			return dst, nil
		})
	if err != nil {
		return nil, err
	}
	latest, err := natsbus.Handle(ctx, srv, subj.HistoryLatest(), subjects.QueueHistory,
		func(ctx context.Context, req busapi.LatestRequest) (busapi.Latest, error) {
			seqs, err := svc.Latest(ctx, req.ChatIDs)
			if err != nil {
				return busapi.Latest{}, mapError(err)
			}
			out := busapi.Latest{Seqs: make(map[string]int64, len(seqs))}
			for id, seq := range seqs {
				out.Seqs[strconv.FormatInt(id, 10)] = seq
			}
			return out, nil
		})
	if err != nil {
		return nil, err
	}
	// One entry, for the chat service: the target of an edit or deletion,
	// or the entry a retried client message id stored. The chat service
	// asks after its own membership check; no user reads through here.
	message, err := natsbus.Handle(ctx, srv, subj.HistoryMessage(), subjects.QueueHistory,
		func(ctx context.Context, req busapi.MessageRequest) (protocol.Message, error) {
			m, err := svc.Entry(ctx, req.ChatID, req.Seq, req.SenderID, req.ClientMsgID)
			if err != nil {
				return protocol.Message{}, mapError(err)
			}
			return m.Event(), nil
		})
	if err != nil {
		return nil, err
	}
	unread, err := registerUnread(ctx, srv, subj, svc)
	if err != nil {
		return nil, err
	}
	return []*nats.Subscription{page, latest, message, unread}, nil
}

// mapError is the one place domain errors become protocol codes.
func mapError(err error) error {
	if errors.Is(err, history.ErrInvalidPage) {
		return busapi.Errorf(protocol.CodeInvalidInput, err.Error())
	}
	if errors.Is(err, history.ErrNotFound) {
		return busapi.Errorf(protocol.CodeMessageNotFound, "no such entry in the chat")
	}
	return fmt.Errorf("%w: %w", busapi.Errorf(protocol.CodeUnavailable, "history is not available now; retry"), err)
}

// ChatAccess asks the chat service over NATS.
type ChatAccess struct {
	Bus  *natsbus.Client
	Subj subjects.Subjects
}

// CanRead implements Access.
func (a ChatAccess) CanRead(ctx context.Context, userID, chatID int64) error {
	return a.Bus.Request(ctx, a.Subj.ChatAccess(), busapi.ChatRequest{UserID: userID, ChatID: chatID}, nil)
}
