package natsapi

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/natsbus"
	"github.com/communications/communications/libs/subjects"
	"github.com/communications/communications/services/chat/internal/chats"
)

// MsgPublisher publishes one core NATS message (*nats.Conn does).
type MsgPublisher interface {
	PublishMsg(msg *nats.Msg) error
}

// Events publishes the domain's chat events as busapi.ChatEvent on
// subjects.ChatEvents, and moved read positions as busapi.ReadEvent on
// subjects.ChatEventsRead, with core NATS (at most once, to every gateway
// subscribed), the trace context in the headers. It implements
// chats.Events and chats.ReadEvents.
type Events struct {
	nc          MsgPublisher
	subject     string
	readSubject string
}

// NewEvents returns an Events publishing with nc.
func NewEvents(nc MsgPublisher, subj subjects.Subjects) *Events {
	return &Events{nc: nc, subject: subj.ChatEvents(), readSubject: subj.ChatEventsRead()}
}

// ChatChanged publishes ev.
func (e *Events) ChatChanged(ctx context.Context, ev chats.Event) error {
	data, err := json.Marshal(busapi.ChatEvent{
		Kind: string(ev.Kind), Chat: toProtocol(ev.Chat), Added: ev.Added, Removed: ev.Removed,
	})
	if err != nil {
		return fmt.Errorf("encode chat event: %w", err)
	}
	if err := e.publish(ctx, e.subject, data); err != nil {
		return fmt.Errorf("publish chat event: %w", err)
	}
	return nil
}

// ReadMoved publishes ev.
func (e *Events) ReadMoved(ctx context.Context, ev chats.ReadEvent) error {
	data, err := json.Marshal(busapi.ReadEvent{UserID: ev.UserID, ChatID: ev.ChatID, Seq: ev.Seq, Unread: ev.Unread})
	if err != nil {
		return fmt.Errorf("encode read event: %w", err)
	}
	if err := e.publish(ctx, e.readSubject, data); err != nil {
		return fmt.Errorf("publish read event: %w", err)
	}
	return nil
}

func (e *Events) publish(ctx context.Context, subject string, data []byte) error {
	msg := nats.NewMsg(subject)
	msg.Data = data
	natsbus.Inject(ctx, msg)
	return e.nc.PublishMsg(msg)
}
