package natsapi

import (
	"context"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/history/internal/history"
)

// registerUnread serves subjects.HistoryUnread: the chat service asks it
// for the counts of a user's chat list and of a moved read position. It
// checks no membership: the chat service asks only for chats it checked.
func registerUnread(ctx context.Context, srv *natsbus.Server, subj subjects.Subjects, svc *history.Service) (*nats.Subscription, error) {
	return natsbus.Handle(ctx, srv, subj.HistoryUnread(), subjects.QueueHistory,
		func(ctx context.Context, req busapi.UnreadRequest) (busapi.Unread, error) {
			marks := make([]history.ReadMark, len(req.Chats))
			for i, m := range req.Chats {
				marks[i] = history.ReadMark{ChatID: m.ChatID, Seq: m.Seq}
			}
			counts, err := svc.Unread(ctx, req.UserID, marks)
			if err != nil {
				return busapi.Unread{}, mapError(err)
			}
			out := busapi.Unread{Chats: make([]busapi.UnreadCount, len(counts))}
			for i, c := range counts {
				out.Chats[i] = busapi.UnreadCount{ChatID: c.ChatID, LastSeq: c.LastSeq, Unread: c.Unread}
			}
			return out, nil
		})
}
